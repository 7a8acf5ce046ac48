//! The seam between typed handles and storage: Redis, in-process memory, or nothing.
//!
//! Backends deal in Redis keys and encoded bytes only. They never return connection
//! errors to callers: a failure is recorded (and logged, without flooding) by the backend
//! and surfaces as [`Unavailable`], which handles turn into a miss or `Ok(false)`.

pub(crate) mod cluster;
mod coalesce;
pub(crate) mod memory;
mod outage;
pub(crate) mod redis;

use std::time::Duration;

use crate::health::Health;

/// Why the backend could not serve a call; it has already been recorded and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No connection: not connected, or the breaker is open. Nothing was sent.
    Down,
    /// The call hit its deadline.
    Timeout,
    /// The connection failed or the server refused the command.
    Failed,
}

/// The storage a manager's caches currently use.
pub(crate) enum Backend {
    /// Before `connect` and after `disconnect`: every call degrades.
    Disconnected,
    /// `memory://`.
    Memory(memory::MemoryStore),
    /// `redis://`, `rediss://`.
    Redis(redis::RedisBackend),
    /// `redis+cluster://`, `rediss+cluster://`.
    Cluster(cluster::ClusterBackend),
}

/// One key of an `mget`: its value, or why it could not be read.
pub(crate) type Fetched = Result<Option<Vec<u8>>, Unavailable>;

impl Backend {
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => r.get(key).await,
            Backend::Cluster(c) => c.get(key).await,
        }
    }

    /// `Err` when no key could be read; otherwise each key's outcome, in order: in a
    /// cluster, the keys of an unreachable master fail while the others are read.
    pub(crate) async fn mget(&self, keys: &[String]) -> Result<Vec<Fetched>, Unavailable> {
        let all = |values: Vec<Option<Vec<u8>>>| values.into_iter().map(Ok).collect();
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(all(m.mget(keys))),
            Backend::Redis(r) => r.mget(keys).await.map(all),
            Backend::Cluster(c) => Ok(c.mget(keys).await),
        }
    }

    /// `announce`: also tell other instances to drop the key from their first level.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        announce: bool,
    ) -> Result<(), Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.set(key, value, ttl, announce).await,
            Backend::Cluster(c) => c.set(key, value, ttl, announce).await,
        }
    }

    pub(crate) async fn mset(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
        announce: bool,
    ) -> Result<(), Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => {
                m.mset(entries, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.mset(entries, ttl, announce).await,
            Backend::Cluster(c) => c.mset(entries, ttl, announce).await,
        }
    }

    pub(crate) async fn del(&self, key: &str, announce: bool) -> Result<bool, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.del(key)),
            Backend::Redis(r) => r.del(key, announce).await,
            Backend::Cluster(c) => c.del(key, announce).await,
        }
    }

    /// Deletes `keys`: how many entries were removed, and why some keys could not be
    /// deleted, if any (in a cluster, the reachable masters' keys are still deleted).
    pub(crate) async fn del_many(
        &self,
        keys: &[String],
        announce: bool,
    ) -> (u64, Option<Unavailable>) {
        match self {
            Backend::Disconnected => (0, Some(Unavailable::Down)),
            Backend::Memory(m) => (keys.iter().filter(|k| m.del(k)).count() as u64, None),
            Backend::Redis(r) => match r.del_many(keys, announce).await {
                Ok(removed) => (removed, None),
                Err(why) => (0, Some(why)),
            },
            Backend::Cluster(c) => c.del_many(keys, announce).await,
        }
    }

    /// Deletes `key` only while it still holds `expected`, so evicting a corrupt entry
    /// never removes a good value another writer stored in the meantime.
    pub(crate) async fn del_if_eq(&self, key: &str, expected: &[u8]) -> Result<bool, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.del_if_eq(key, expected)),
            Backend::Redis(r) => r.del_if_eq(key, expected).await,
            Backend::Cluster(c) => c.del_if_eq(key, expected).await,
        }
    }

    /// Removes every key matching `pattern`, a cache's `{prefix}*`; how many, and why it
    /// stopped early if it did. `announce`: also tell other instances to empty the
    /// namespace's first level.
    pub(crate) async fn clear(&self, pattern: &str, announce: bool) -> (u64, Option<Unavailable>) {
        match self {
            Backend::Disconnected => (0, Some(Unavailable::Down)),
            Backend::Memory(m) => (m.clear(pattern), None),
            Backend::Redis(r) => r.clear(pattern, announce).await,
            Backend::Cluster(c) => c.clear(pattern, announce).await,
        }
    }

    pub(crate) async fn health(&self) -> Health {
        match self {
            Backend::Disconnected => Health::disconnected(),
            Backend::Memory(_) => Health::memory(),
            Backend::Redis(r) => r.health().await,
            Backend::Cluster(c) => c.health().await,
        }
    }
}
