//! The declaration of a cache: what `#[derive(Cache)]` implements.

use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

use crate::codec::Codec;
use crate::key::CacheKey;
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
}

/// One registered cache, as an operator sees it: field, namespace, TTL, codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheInfo {
    /// The registry field (and accessor) name.
    pub field: &'static str,
    /// The namespace of the cache's keys.
    pub namespace: &'static str,
    /// The default expiry of entries.
    #[serde(rename = "ttl_secs", serialize_with = "serialize_secs")]
    pub ttl: Duration,
    /// The codec name.
    pub codec: &'static str,
    /// The declared `version`.
    pub version: u32,
    /// The fingerprint stored in framed entries, as 8 hex digits.
    #[serde(serialize_with = "serialize_hex")]
    pub fingerprint: u32,
    /// Whether keys carry the namespace as a Redis Cluster hash tag: `{namespace}:key`.
    pub hash_tag: bool,
}

impl CacheInfo {
    #[doc(hidden)]
    pub const fn __new<C: Cache>(field: &'static str) -> Self {
        CacheInfo {
            field,
            namespace: C::NAMESPACE,
            ttl: C::TTL,
            codec: <C::Codec as Codec<C::Value>>::NAME,
            version: C::VERSION,
            fingerprint: C::FINGERPRINT,
            hash_tag: C::HASH_TAG,
        }
    }
}

fn serialize_secs<S: serde::Serializer>(ttl: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(ttl.as_secs())
}

fn serialize_hex<S: serde::Serializer>(fp: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{fp:08x}"))
}
