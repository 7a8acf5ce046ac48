//! `memory://`: an in-process store with Redis semantics (TTL on every entry).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Timed, Write};

/// Entries are purged of expired ones once per this many writes, so a store that is only
/// written to does not grow without bound.
const PURGE_EVERY: u32 = 1024;

struct Entry {
    bytes: Vec<u8>,
    expires_at: Instant,
}

/// The embedded backend. Time is tokio's, so tests can pause and advance it.
#[derive(Default)]
pub(crate) struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    writes: u32,
}

impl State {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.expires_at > now)
    }

    fn insert(&mut self, key: &str, bytes: &[u8], expires_at: Instant) {
        self.writes = self.writes.wrapping_add(1);
        if self.writes.is_multiple_of(PURGE_EVERY) {
            let now = Instant::now();
            self.entries.retain(|_, e| e.expires_at > now);
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                bytes: bytes.to_vec(),
                expires_at,
            },
        );
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // mutation is a single HashMap call), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock()
            .live(key, Instant::now())
            .map(|e| e.bytes.clone())
    }

    pub(crate) fn mget(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let now = Instant::now();
        let state = self.lock();
        keys.iter()
            .map(|k| state.live(k, now).map(|e| e.bytes.clone()))
            .collect()
    }

    pub(crate) fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let expires_at = Instant::now() + ttl;
        self.lock().insert(key, value, expires_at);
    }

    pub(crate) fn mset(&self, entries: &[Write]) {
        let now = Instant::now();
        let mut state = self.lock();
        for entry in entries {
            state.insert(&entry.key, &entry.bytes, now + entry.ttl);
        }
    }

    pub(crate) fn get_timed(&self, key: &str) -> Option<Timed> {
        let now = Instant::now();
        self.lock().live(key, now).map(|e| Timed {
            bytes: e.bytes.clone(),
            remaining: Some(e.expires_at - now),
        })
    }

    pub(crate) fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        if state.live(key, now).is_some() {
            return false;
        }
        state.insert(key, value, now + ttl);
        true
    }

    pub(crate) fn expire_if_eq(&self, key: &str, expected: &[u8], ttl: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match state.entries.get_mut(key) {
            Some(entry) if entry.expires_at > now && entry.bytes == expected => {
                entry.expires_at = now + ttl;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn del(&self, key: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .entries
            .remove(key)
            .is_some_and(|e| e.expires_at > now)
    }

    pub(crate) fn del_if_eq(&self, key: &str, expected: &[u8]) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        if state.live(key, now).is_some_and(|e| e.bytes == expected) {
            state.entries.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes every entry matching `pattern`, a cache's `{prefix}*`; returns how many
    /// were live.
    pub(crate) fn clear(&self, pattern: &str) -> u64 {
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        let now = Instant::now();
        let mut removed = 0;
        self.lock().entries.retain(|key, entry| {
            let theirs = key.starts_with(prefix);
            if theirs && entry.expires_at > now {
                removed += 1;
            }
            !theirs
        });
        removed
    }

    /// The remaining time to live of a live entry.
    #[cfg(test)]
    pub(crate) fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.lock().live(key, now).map(|e| e.expires_at - now)
    }

    /// Stores raw bytes, bypassing codecs (to plant corrupt entries in tests).
    #[cfg(test)]
    pub(crate) fn put_raw(&self, key: &str, bytes: &[u8]) {
        self.set(key, bytes, Duration::from_secs(60));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .entries
            .values()
            .filter(|e| e.expires_at > now)
            .count()
    }
}
