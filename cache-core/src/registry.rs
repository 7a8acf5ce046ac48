//! What `cache_registry!` builds on: the table of registered caches ([`CacheInfo`]), how
//! each handle is built from its entry, and the compile-time checks run on the table.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cache::{Cache, SingleFlight};
use crate::codec::Codec;
use crate::handle::TypedCache;
use crate::local::LocalLevel;
use crate::shared::Shared;
use crate::stats::Counters;

/// One registered cache, as an operator sees it: field, namespace, TTL, codec.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Builds the cache's handle on a manager: the one place a registry needs `C: Cache`.
    #[serde(skip)]
    pub(crate) build: BuildHandle,
}

impl fmt::Debug for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheInfo")
            .field("field", &self.field)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("codec", &self.codec)
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .field("hash_tag", &self.hash_tag)
            .finish()
    }
}

/// Builds a cache's `TypedCache<C>` on a manager's shared state, boxed, with its
/// counters: a registry's `new()` unboxes it as the type its field declares, without
/// asking `C: Cache` a second time.
#[derive(Clone, Copy)]
pub(crate) struct BuildHandle(pub(crate) fn(&Arc<Shared>, &'static str) -> Built);

/// A handle built by [`BuildHandle`], boxed, and its counters.
pub(crate) type Built = (Box<dyn Any>, Arc<Counters>);

impl PartialEq for BuildHandle {
    /// The other fields tell caches apart; how a handle is built follows from them.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for BuildHandle {}

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
            build: BuildHandle(build_handle::<C>),
        }
    }
}

#[cfg(test)]
impl CacheInfo {
    /// An entry with only a field and a namespace, for tests of the registry's checks.
    pub(crate) fn __for_tests(field: &'static str, namespace: &'static str) -> Self {
        CacheInfo {
            field,
            namespace,
            ttl: Duration::from_secs(600),
            codec: "bincode",
            version: 0,
            fingerprint: 0,
            hash_tag: false,
            build: BuildHandle(|_, _| (Box::new(()), Arc::new(Counters::new("test")))),
        }
    }
}

fn build_handle<C: Cache>(shared: &Arc<Shared>, field: &'static str) -> Built {
    let (handle, counters) = handle_on::<C>(shared, field);
    (Box::new(handle), counters)
}

/// A handle for cache `C`, registered as `field`, on a manager's shared state, and its
/// counters: its first level (if declared) and its single flights are registered there.
pub(crate) fn handle_on<C: Cache>(
    shared: &Arc<Shared>,
    field: &'static str,
) -> (TypedCache<C>, Arc<Counters>) {
    let local = <C::Local as LocalLevel<C::Value>>::ENABLED.then(|| {
        let level = Arc::new(<C::Local as LocalLevel<C::Value>>::new(
            C::LOCAL_CAPACITY,
            C::LOCAL_TTL,
        ));
        shared
            .locals
            .register(C::NAMESPACE, TypedCache::<C>::key_start(), level.clone());
        level
    });
    if C::SINGLE_FLIGHT == SingleFlight::Global {
        shared.locals.register_global_flights();
    }
    let counters = Arc::new(Counters::new(C::NAMESPACE));
    let handle = TypedCache::new(Arc::clone(shared), field, Arc::clone(&counters), local);
    (handle, counters)
}

fn serialize_secs<S: serde::Serializer>(ttl: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(ttl.as_secs())
}

fn serialize_hex<S: serde::Serializer>(fp: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{fp:08x}"))
}

/// Whether keys of the two namespaces could collide: they are equal, or one is a
/// `:`-prefix of the other.
pub(crate) const fn namespaces_collide(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    bytes_eq(short.as_bytes(), long.as_bytes())
        || is_colon_prefix(short.as_bytes(), long.as_bytes())
}

/// The first pair of registered caches whose keys could collide, as a message for
/// `cache_registry!` to panic with inside a `const` (a compile error): equal namespaces,
/// or one a `:`-prefix of the other (`user` and `user:profile` could both own the Redis
/// key `user:profile:1`).
///
/// `caches` is the registry's `CACHES`. Empty namespaces belong to declarations that
/// already failed to compile and are skipped.
#[doc(hidden)]
pub const fn namespace_collision(caches: &[CacheInfo]) -> Option<Message> {
    let mut i = 0;
    while i < caches.len() {
        let mut j = i + 1;
        while j < caches.len() {
            let (a_field, a) = (caches[i].field, caches[i].namespace);
            let (b_field, b) = (caches[j].field, caches[j].namespace);
            if !a.is_empty() && !b.is_empty() && namespaces_collide(a, b) {
                if bytes_eq(a.as_bytes(), b.as_bytes()) {
                    return Some(Message::concat(&[
                        "cache_registry!: caches `",
                        a_field,
                        "` and `",
                        b_field,
                        "` both use namespace `",
                        a,
                        "`; their keys would overwrite each other. Give each cache its own namespace.",
                    ]));
                }
                let ((short_field, short), (long_field, long)) = if a.len() < b.len() {
                    ((a_field, a), (b_field, b))
                } else {
                    ((b_field, b), (a_field, a))
                };
                return Some(Message::concat(&[
                    "cache_registry!: namespace `",
                    short,
                    "` (cache `",
                    short_field,
                    "`) is a `:`-prefix of `",
                    long,
                    "` (cache `",
                    long_field,
                    "`), so their Redis keys could collide. Rename one so neither is a prefix of the other.",
                ]));
            }
            j += 1;
        }
        i += 1;
    }
    None
}

/// A message built at compile time (const fns cannot allocate a `String`).
#[doc(hidden)]
pub struct Message {
    bytes: [u8; 1024],
    len: usize,
}

impl Message {
    const fn concat(parts: &[&str]) -> Self {
        let mut bytes = [0u8; 1024];
        let mut len = 0;
        let mut p = 0;
        while p < parts.len() {
            let part = parts[p].as_bytes();
            let mut i = 0;
            while i < part.len() && len < bytes.len() {
                bytes[len] = part[i];
                len += 1;
                i += 1;
            }
            p += 1;
        }
        Message { bytes, len }
    }

    /// The message; a generic one if truncation split a character.
    pub const fn as_str(&self) -> &str {
        match core::str::from_utf8(self.bytes.split_at(self.len).0) {
            Ok(message) => message,
            Err(_) => "cache_registry!: two caches have colliding namespaces",
        }
    }
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `long` starts with `short` followed by `:`.
const fn is_colon_prefix(short: &[u8], long: &[u8]) -> bool {
    if long.len() <= short.len() || long[short.len()] != b':' {
        return false;
    }
    let mut i = 0;
    while i < short.len() {
        if short[i] != long[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_infos_compare_and_print_by_what_an_operator_sees() {
        let a = CacheInfo::__for_tests("profiles", "user:profile");
        let b = CacheInfo::__for_tests("profiles", "user:profile");
        assert_eq!(
            a, b,
            "how a handle is built does not tell two entries apart"
        );
        assert_ne!(a, CacheInfo::__for_tests("names", "user:profile"));
        let shown = format!("{a:?}");
        for part in [
            "CacheInfo",
            "field: \"profiles\"",
            "namespace: \"user:profile\"",
            "ttl: 600s",
        ] {
            assert!(shown.contains(part), "{part} missing from {shown}");
        }
        assert!(!shown.contains("build"), "{shown}");
    }

    fn collision(caches: &[(&'static str, &str)]) -> Option<String> {
        // Namespaces are `'static` in a registry: leak the few these tests make.
        let infos: Vec<CacheInfo> = caches
            .iter()
            .map(|&(field, namespace)| CacheInfo::__for_tests(field, namespace.to_owned().leak()))
            .collect();
        namespace_collision(&infos).map(|m| m.as_str().to_owned())
    }

    #[test]
    fn distinct_namespaces_pass() {
        let caches = [
            ("a", "user:uuid_to_id"),
            ("b", "user:id_to_uuid"),
            ("c", "user:profile"),
            ("d", "users"),
            ("e", ""),
        ];
        assert_eq!(collision(&caches), None);
    }

    #[test]
    fn equal_namespaces_collide() {
        let message = collision(&[("a", "user"), ("b", "x"), ("c", "user")]).unwrap();
        assert!(
            message.contains("caches `a` and `c` both use namespace `user`"),
            "{message}"
        );
    }

    #[test]
    fn colon_prefixes_collide() {
        let message = collision(&[("a", "user:profile"), ("b", "user")]).unwrap();
        assert!(
            message.contains(
                "namespace `user` (cache `b`) is a `:`-prefix of `user:profile` (cache `a`)"
            ),
            "{message}"
        );
    }

    #[test]
    fn the_shorter_namespace_is_named_as_the_prefix_whichever_comes_first() {
        for caches in [
            [("a", "user"), ("b", "user:profile")],
            [("b", "user:profile"), ("a", "user")],
        ] {
            let message = collision(&caches).unwrap();
            assert!(
                message.contains(
                    "namespace `user` (cache `a`) is a `:`-prefix of `user:profile` (cache `b`)"
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn a_colon_at_the_same_place_is_not_a_prefix() {
        // `uses:x` has a `:` where `user` ends, but does not start with `user`.
        assert_eq!(collision(&[("a", "user"), ("b", "uses:x")]), None);
        assert_eq!(collision(&[("a", "uses:x"), ("b", "user")]), None);
    }

    #[test]
    fn long_messages_are_truncated_not_broken() {
        let long = "n".repeat(2000);
        let message = collision(&[("a", &long), ("b", &long)]).unwrap();
        assert!(message.starts_with("cache_registry!: caches `a` and `b`"));
        assert_eq!(message.len(), 1024);
    }
}
