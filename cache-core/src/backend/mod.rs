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
pub(crate) mod sentinel;

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
    /// `redis://`, `rediss://`, and `redis+sentinel://`, `rediss+sentinel://` (one
    /// master at a time, the one the sentinels name).
    Redis(redis::RedisBackend),
    /// `redis+cluster://`, `rediss+cluster://`.
    Cluster(cluster::ClusterBackend),
}

/// One key of an `mget`: its value, or why it could not be read.
pub(crate) type Fetched = Result<Option<Vec<u8>>, Unavailable>;

/// A stored value with the time it has left in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timed {
    pub bytes: Vec<u8>,
    /// `None` for a key without an expiry (written by another client).
    pub remaining: Option<Duration>,
}

/// One key of an `mget_timed`: its value and remaining time, or why it could not be read.
pub(crate) type FetchedTimed = Result<Option<Timed>, Unavailable>;

/// One entry of an `mset`: each carries its own expiry (jitter, fail-safe).
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub key: String,
    pub bytes: Vec<u8>,
    pub ttl: Duration,
}

/// `PTTL`'s reply as a remaining time: `-1` (no expiry) is `None`; `-2` (the key went
/// away since it was read) is zero.
pub(crate) fn remaining_from_pttl(pttl: i64) -> Option<Duration> {
    match pttl {
        -1 => None,
        n => Some(Duration::from_millis(n.max(0) as u64)),
    }
}

impl Backend {
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => r.get(key).await,
            // Boxed: a cluster's futures are large, and every call's future would carry
            // (and move, several times per call) their size on every backend otherwise.
            Backend::Cluster(c) => Box::pin(c.get(key)).await,
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

    /// [`get`](Self::get) with the time the value has left in the store, read in the
    /// same round trip.
    pub(crate) async fn get_timed(&self, key: &str) -> Result<Option<Timed>, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.get_timed(key)),
            Backend::Redis(r) => r.get_timed(key).await,
            Backend::Cluster(c) => Box::pin(c.get_timed(key)).await,
        }
    }

    /// [`mget`](Self::mget) with the time each value has left, in the same round trip.
    pub(crate) async fn mget_timed(
        &self,
        keys: &[String],
    ) -> Result<Vec<FetchedTimed>, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(keys.iter().map(|k| Ok(m.get_timed(k))).collect()),
            Backend::Redis(r) => r
                .mget_timed(keys)
                .await
                .map(|v| v.into_iter().map(Ok).collect()),
            Backend::Cluster(c) => Ok(c.mget_timed(keys).await),
        }
    }

    /// Stores `value` under `key` for `ttl` unless the key exists: `true` when stored.
    /// Takes the lease of a global single flight.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.set_nx(key, value, ttl)),
            Backend::Redis(r) => r.set_nx(key, value, ttl).await,
            Backend::Cluster(c) => c.set_nx(key, value, ttl).await,
        }
    }

    /// Sets the expiry of `key` to `ttl` only while it still holds `expected`, so a
    /// value another writer stored meanwhile keeps its own.
    pub(crate) async fn expire_if_eq(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => Ok(m.expire_if_eq(key, expected, ttl)),
            Backend::Redis(r) => r.expire_if_eq(key, expected, ttl).await,
            Backend::Cluster(c) => c.expire_if_eq(key, expected, ttl).await,
        }
    }

    /// Records `layout` as seen now in the registry at `key` (a sorted set scored by
    /// milliseconds since the epoch), drops the layouts unseen for `keep`, and returns
    /// every layout still listed. Within one process (`memory://`) there is only one.
    pub(crate) async fn layouts_seen(
        &self,
        key: &str,
        layout: u32,
        keep: Duration,
    ) -> Result<Vec<u32>, Unavailable> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let keep_ms = keep.as_millis() as u64;
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZADD")
            .arg(key)
            .arg(now)
            .arg(layout)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(format!("({}", now.saturating_sub(keep_ms)))
            .ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(keep_ms)
            .ignore()
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1);
        let listed = match self {
            Backend::Disconnected => return Err(Unavailable::Down),
            Backend::Memory(_) => return Ok(vec![layout]),
            Backend::Redis(r) => r.pipeline::<(Vec<u32>,)>(&pipe).await,
            Backend::Cluster(c) => c.link(key)?.pipeline::<(Vec<u32>,)>(&pipe).await,
        };
        listed.map(|(layouts,)| layouts)
    }

    /// The layouts listed in the registry at `key` (see `layouts_seen`).
    pub(crate) async fn layouts_listed(&self, key: &str) -> Result<Vec<u32>, Unavailable> {
        let mut cmd = ::redis::cmd("ZRANGE");
        cmd.arg(key).arg(0).arg(-1);
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(_) => Ok(Vec::new()),
            Backend::Redis(r) => r.query::<Vec<u32>>(&cmd).await,
            Backend::Cluster(c) => c.link(key)?.query::<Vec<u32>>(&cmd).await,
        }
    }

    /// Tells every instance sharing the store that the load of `key` ended: `loaded`
    /// (its value is stored) or released (its leader gave up). Within one process
    /// (`memory://`) the waiters are woken directly by the caller.
    pub(crate) async fn announce_load(&self, message: &str) -> Result<(), Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.publish_load(message).await,
            Backend::Cluster(c) => c.publish_load(message).await,
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
            Backend::Cluster(c) => Box::pin(c.set(key, value, ttl, announce)).await,
        }
    }

    pub(crate) async fn mset(&self, entries: &[Write], announce: bool) -> Result<(), Unavailable> {
        match self {
            Backend::Disconnected => Err(Unavailable::Down),
            Backend::Memory(m) => {
                m.mset(entries);
                Ok(())
            }
            Backend::Redis(r) => r.mset(entries, announce).await,
            Backend::Cluster(c) => c.mset(entries, announce).await,
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
