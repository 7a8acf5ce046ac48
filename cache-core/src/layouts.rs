//! The layouts of one cache's entries in use across instances.
//!
//! A bincode cache keys its entries by layout (the value type's fingerprint, see
//! `cache_keyspace::CacheKeys`), so during a rolling deploy the old and the new shape of
//! a value type live side by side and each side keeps reading its own. A write, though,
//! changes the data behind every shape: the other shapes' entries of that key must go,
//! or the other side would serve the old data until its TTL. So every instance records
//! its layout in a sorted set in Redis (`!layouts!{prefix}`, scored by when it was last
//! seen), and a write or invalidation also deletes the key in every other layout seen
//! recently. A layout unseen for longer than its entries can live is dropped from the
//! set: its entries have expired by then.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Backend;

/// How often an instance records its layout and reads the others'.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Between refreshes, one call in this many looks at the clock (and takes the lock): the
/// check runs on every call of the cache, and a refresh due a few calls late is harmless.
const CHECK_EVERY: u32 = 64;
/// `recorded_epoch` before the first record.
const NONE: u64 = u64::MAX;

/// This cache's layout, and the other layouts seen recently.
pub(crate) struct Layouts {
    own: u32,
    /// How long a layout stays listed after it was last seen: as long as its entries
    /// can live, and a refresh interval more.
    keep: Duration,
    known: Mutex<Known>,
    refreshing: AtomicBool,
    /// The epoch the layout was last recorded in, readable without the lock.
    recorded_epoch: AtomicU64,
    /// Calls since the clock was last looked at.
    calls: AtomicU32,
}

#[derive(Default)]
struct Known {
    /// When, and in which backend (the manager's epoch), the layout was last recorded.
    refreshed: Option<(Instant, u64)>,
}

impl Layouts {
    pub(crate) fn new(own: u32, entries_live: Duration) -> Self {
        Layouts {
            own,
            keep: entries_live + REFRESH_EVERY,
            known: Mutex::default(),
            refreshing: AtomicBool::new(false),
            recorded_epoch: AtomicU64::new(NONE),
            calls: AtomicU32::new(0),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this layout was recorded in the backend of `epoch`.
    pub(crate) fn recorded(&self, epoch: u64) -> bool {
        self.known().refreshed.is_some_and(|(_, e)| e == epoch)
    }

    /// The layouts `listed` that are not this one.
    pub(crate) fn others(&self, listed: Vec<u32>) -> Vec<u32> {
        listed.into_iter().filter(|l| *l != self.own).collect()
    }

    /// Whether a refresh is due in the backend of `epoch` (never recorded there, or
    /// not for a while) and none runs: then this caller runs it.
    pub(crate) fn claim_refresh(&self, epoch: u64) -> bool {
        if self.recorded_epoch.load(Ordering::Acquire) == epoch
            && !self
                .calls
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(CHECK_EVERY)
        {
            return false;
        }
        let due = self
            .known()
            .refreshed
            .is_none_or(|(at, e)| e != epoch || at.elapsed() >= REFRESH_EVERY);
        due && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Records this layout as seen now (after [`claim_refresh`](Self::claim_refresh)
    /// said so). With the backend unavailable nothing changes, and the next call tries
    /// again.
    pub(crate) async fn refresh(&self, backend: &Backend, epoch: u64, registry: &str) {
        let seen = backend.layouts_seen(registry, self.own, self.keep).await;
        if seen.is_ok() {
            self.known().refreshed = Some((Instant::now(), epoch));
            self.recorded_epoch.store(epoch, Ordering::Release);
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;

    #[test]
    fn the_other_layouts_are_every_listed_one_but_this_one() {
        let layouts = Layouts::new(7, Duration::from_secs(600));
        assert_eq!(layouts.others(vec![3, 7, 0, 1]), vec![3, 0, 1]);
        assert_eq!(layouts.others(vec![7]), Vec::<u32>::new());
        assert_eq!(layouts.others(Vec::new()), Vec::<u32>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_is_claimed_once_per_interval_and_at_once_in_a_new_backend() {
        let layouts = Layouts::new(7, Duration::from_secs(600));
        let backend = Backend::Memory(MemoryStore::default());
        assert!(layouts.claim_refresh(0), "never recorded: due");
        assert!(!layouts.claim_refresh(0), "claimed already, running");
        layouts.refresh(&backend, 0, "!layouts!test").await;
        assert!(layouts.recorded(0));
        let claimed = (0..10 * CHECK_EVERY)
            .filter(|_| layouts.claim_refresh(0))
            .count();
        assert_eq!(claimed, 0, "recorded just now: not due");
        tokio::time::advance(REFRESH_EVERY).await;
        let claimed = (0..CHECK_EVERY)
            .filter(|_| layouts.claim_refresh(0))
            .count();
        assert_eq!(
            claimed, 1,
            "due again: claimed once within {CHECK_EVERY} calls"
        );
        layouts.refresh(&backend, 0, "!layouts!test").await;
        // Another backend (a new `connect`): due at the very next call.
        assert!(layouts.claim_refresh(1));
        assert!(!layouts.recorded(1));
    }
}
