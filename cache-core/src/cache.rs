//! The declaration of a cache: what `#[derive(Cache)]` implements.

use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

use crate::codec::Codec;
use crate::key::CacheKey;
use crate::loads::LoadMode;
use crate::local::LocalLevel;

/// The most keys a single `mget`, or entries a single `mset`, may carry.
pub const MAX_BATCH: usize = 100;

/// A cache declaration: namespace, TTL, key and value types, codec.
///
/// Implemented by `#[derive(Cache)]` only, which checks the declaration (a valid
/// namespace, a TTL of at least one second, consistent options) and computes what must
/// stay in step with the value type (its fingerprint); the trait is sealed so a
/// hand-written impl cannot skip those checks. A declaration by itself does nothing:
/// register it in `cache_registry!` to get a handle.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cache declaration",
    label = "not a cache",
    note = "derive it: `#[derive(Cache)] #[cache(namespace = \"...\", key = K, value = V)] struct {Self};`",
    note = "if `{Self}` is a value type with `#[derive(Cache)]` on it, register the generated `{Self}Cache` instead"
)]
pub trait Cache: crate::__private::Declared + 'static {
    /// The key type; its text forms the Redis key `"{namespace}:{key}"`.
    type Key: CacheKey + Eq + Hash + Clone + Send + Sync + 'static;
    /// The value type.
    type Value: Send + Sync + 'static;
    /// How values are stored.
    type Codec: Codec<Self::Value>;
    /// The in-process first level: `NoLocal`, or `Moka` with `#[cache(local = N)]`.
    #[doc(hidden)]
    type Local: LocalLevel<Self::Value>;
    /// How `get_or_load` runs loads: `Inline` in the caller (loaders may borrow), or
    /// `Background` when a load may outlive its caller (`load_timeout_ms`,
    /// `refresh_ahead`), which needs loaders that are `Send + 'static`.
    #[doc(hidden)]
    type Loads: LoadMode;

    /// The namespace, the prefix of every Redis key of this cache.
    const NAMESPACE: &'static str;
    /// The expiry every write sets.
    const TTL: Duration;
    /// The `version = N` of the declaration (0 when not set).
    const VERSION: u32;
    /// Fingerprint of the value type's definition and version, stored in framed entries.
    const FINGERPRINT: u32;
    /// Entries the in-process first level holds at most (0: no first level).
    const LOCAL_CAPACITY: u64 = 0;
    /// How long the first level keeps an entry from when it was read; at most
    /// [`TTL`](Self::TTL).
    const LOCAL_TTL: Duration = Self::TTL;
    /// `hash_tag = true`: the namespace is written in braces, `{user:profile}:42` rather
    /// than `user:profile:42`, so a Redis Cluster keeps every key of the cache in one hash
    /// slot (one node, one command per batch). Off by default: keys spread over the
    /// cluster.
    const HASH_TAG: bool = false;

    /// `fail_safe = S`: how long an entry is kept past its TTL as a fallback for a
    /// failing loader; zero when fail-safe is off. Past its TTL an entry is stale: reads
    /// miss, `get_or_load` returns it only when the loader fails (or, with
    /// [`LOAD_TIMEOUT`](Self::LOAD_TIMEOUT), is slow).
    const FAIL_SAFE: Duration = Duration::ZERO;
    /// `load_timeout_ms = N`: how long `get_or_load` waits for a loader while a stale
    /// entry exists before answering with it; the load goes on in the background.
    const LOAD_TIMEOUT: Option<Duration> = None;
    /// `refresh_ahead = P`: the percent of the TTL after which a `get_or_load` hit also
    /// refreshes the entry in the background; zero when off.
    const REFRESH_AHEAD: u8 = 0;
    /// `negative_ttl = S`: how long `get_or_load` remembers a loader's `Ok(None)`; zero
    /// when it remembers nothing.
    const NEGATIVE_TTL: Duration = Duration::ZERO;
    /// `ttl_jitter = S`: the most time added at random to the expiry of every write made
    /// with the cache's TTL, so entries written together do not expire together.
    const TTL_JITTER: Duration = Duration::ZERO;
    /// `single_flight = "global"`: whether `get_or_load` runs a key's loader once across
    /// every instance sharing the Redis, not only within this process.
    const SINGLE_FLIGHT: SingleFlight = SingleFlight::Local;
    /// `compress = true`: whether values above a threshold are stored compressed.
    const COMPRESS: bool = false;
    /// `max_bytes = N`: the largest encoded value written; larger ones are refused.
    const MAX_BYTES: Option<usize> = None;
}

/// How far `get_or_load`'s single flight reaches: `single_flight = "local" | "global"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SingleFlight {
    /// Concurrent loads of a key in this process run once (the default).
    Local,
    /// Concurrent loads of a key run once across every instance sharing the Redis: one
    /// takes a short lease, the others wait for its value.
    Global,
}
