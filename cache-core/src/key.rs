//! How typed keys become Redis keys.

use uuid::Uuid;

/// A type whose values can name cache entries.
///
/// The Redis key of an entry is `"{namespace}:{key}"`, where `{key}` is what
/// [`write_key`](CacheKey::write_key) appends. Implementations must be *injective*: two
/// keys that are not equal must never write the same text, or one entry would answer for
/// both. Equal keys must always write the same text.
///
/// Integers write their decimal form, `String` writes itself unchanged and `Uuid` writes
/// its lowercase hyphenated form, so keys are byte-compatible with a service that builds
/// them as `f"{namespace}:{key}"`.
///
/// ```
/// use cache_core::CacheKey;
///
/// /// A tenant-scoped key: `"{tenant}/{user}"` is injective because a tenant id is a
/// /// number and cannot contain `/`.
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct TenantUser { tenant: u32, user: String }
///
/// impl CacheKey for TenantUser {
///     fn write_key(&self, out: &mut String) {
///         self.tenant.write_key(out);
///         out.push('/');
///         out.push_str(&self.user);
///     }
/// }
///
/// let mut key = String::from("prefs:");
/// TenantUser { tenant: 7, user: "ada".into() }.write_key(&mut key);
/// assert_eq!(key, "prefs:7/ada");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a cache key",
    label = "not a cache key type",
    note = "integers, `String`, `bool`, `char` and `uuid::Uuid` are cache keys; implement `cache_manager::CacheKey` for your own key types"
)]
pub trait CacheKey {
    /// Appends this key's text to `out`, which already holds `"{namespace}:"`.
    fn write_key(&self, out: &mut String);
}

/// The Redis key of `key` among `keys`: `"{namespace}:{key}"`, with the namespace in
/// braces for a hash tag, the manager's prefix before it and the entries' layout after
/// it when they apply (see [`CacheKeys`](cache_keyspace::CacheKeys)). With
/// [`BatchKeys`], which spells a batch's keys the same way (a property test holds them
/// equal), the only place keys are built; `TypedCache::redis_key` and every single-key
/// call go through it.
pub(crate) fn redis_key<K: CacheKey + ?Sized>(
    keys: &cache_keyspace::CacheKeys<'_>,
    key: &K,
) -> String {
    // Room for a prefix, the namespace, its tag and layout, and a UUID or an integer.
    let mut out = String::with_capacity(keys.namespace.len() + 56);
    keys.write_prefix(&mut out);
    key.write_key(&mut out);
    out
}

/// The Redis keys of one batch: the same text as [`redis_key`], with the start every key
/// of the cache shares (prefix, namespace, tag, layout) written once for the batch rather
/// than once per key.
pub(crate) struct BatchKeys {
    start: String,
}

impl BatchKeys {
    pub(crate) fn new(keys: &cache_keyspace::CacheKeys<'_>) -> Self {
        BatchKeys {
            start: keys.prefix(),
        }
    }

    /// The Redis key of `key`.
    pub(crate) fn key<K: CacheKey + ?Sized>(&self, key: &K) -> String {
        // Room for a UUID or an integer after the start.
        let mut out = String::with_capacity(self.start.len() + 40);
        out.push_str(&self.start);
        key.write_key(&mut out);
        out
    }
}

macro_rules! integer_keys {
    ($($t:ty)*) => {$(
        impl CacheKey for $t {
            #[inline]
            fn write_key(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}

integer_keys!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize);

impl CacheKey for String {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for Box<str> {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for bool {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl CacheKey for char {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push(*self);
    }
}

impl CacheKey for Uuid {
    #[inline]
    fn write_key(&self, out: &mut String) {
        out.push_str(self.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<K: CacheKey>(k: &K) -> String {
        let mut s = String::new();
        k.write_key(&mut s);
        s
    }

    #[test]
    fn keys_write_the_text_a_python_service_would() {
        assert_eq!(text(&-42i64), "-42");
        assert_eq!(text(&u128::MAX), u128::MAX.to_string());
        assert_eq!(text(&String::from("a:b c")), "a:b c");
        let id = Uuid::parse_str("550E8400-E29B-41D4-A716-446655440001").unwrap();
        assert_eq!(text(&id), "550e8400-e29b-41d4-a716-446655440001");
        assert_eq!(text(&true), "true");
        assert_eq!(text(&'é'), "é");
    }

    mod properties {
        use std::fmt::Debug;
        use std::str::FromStr;

        use cache_keyspace::check_namespace;
        use proptest::prelude::*;

        use super::*;
        use crate::registry::namespaces_collide;

        /// Namespaces of the grammar `#[derive(Cache)]` accepts.
        fn namespace() -> impl Strategy<Value = String> {
            proptest::collection::vec("[a-z0-9_.-]{1,4}", 1..4)
                .prop_map(|segments| segments.join(":"))
        }

        /// Strings with the characters that break naive key schemes.
        fn nasty() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[:{}*\\n\\r\\t a-z\\x00é€😀]{0,12}").unwrap()
        }

        /// Keys that often look like a namespace segment followed by `:`, the shape that
        /// lets one cache's key spell another namespace's key.
        fn key_text() -> impl Strategy<Value = String> {
            prop_oneof![
                nasty(),
                (namespace(), nasty()).prop_map(|(segments, rest)| format!("{segments}:{rest}")),
            ]
        }

        /// The key's own text in a Redis key of namespace `t` parses back to the key: the
        /// layout loses nothing, so distinct keys have distinct Redis keys.
        fn parses_back<K>(key: K) -> Result<(), TestCaseError>
        where
            K: CacheKey + FromStr + PartialEq + Debug,
            K::Err: Debug,
        {
            let full = redis_key(&cache_keyspace::CacheKeys::plain("t", false), &key);
            let text = full.strip_prefix("t:").expect("the namespace comes first");
            prop_assert_eq!(text.parse::<K>().expect("the key text parses"), key);
            Ok(())
        }

        proptest! {
            #[test]
            fn every_builtin_key_type_writes_text_that_parses_back(
                a: i8, b: i16, c: i32, d: i64, e: i128, f: isize,
                g: u8, h: u16, i: u32, j: u64, k: u128, l: usize,
                m: bool, n: char, o in nasty(), p: u128,
            ) {
                parses_back(a)?; parses_back(b)?; parses_back(c)?; parses_back(d)?;
                parses_back(e)?; parses_back(f)?; parses_back(g)?; parses_back(h)?;
                parses_back(i)?; parses_back(j)?; parses_back(k)?; parses_back(l)?;
                parses_back(m)?; parses_back(n)?; parses_back(o.clone())?;
                parses_back(Uuid::from_u128(p))?;
                let boxed: Box<str> = o.clone().into();
                prop_assert_eq!(redis_key(&cache_keyspace::CacheKeys::plain("t", false), &boxed), redis_key(&cache_keyspace::CacheKeys::plain("t", false), &o));
            }

            /// Every other (namespace, key) pair that spells the same Redis key is a pair
            /// of namespaces the registry rejects: its `:`-prefix rule is what makes raw
            /// string keys safe. The pairs are built on purpose, by cutting a Redis key
            /// at each `:`.
            #[test]
            fn a_redis_key_belongs_to_one_namespace_of_a_registry(n in namespace(), k in key_text()) {
                let full = redis_key(&cache_keyspace::CacheKeys::plain(&n, false), &k);
                for (at, _) in full.match_indices(':') {
                    let (other_ns, other_key) = (&full[..at], &full[at + 1..]);
                    if other_ns == n || check_namespace(other_ns).is_err() {
                        continue;
                    }
                    prop_assert_eq!(redis_key(&cache_keyspace::CacheKeys::plain(other_ns, false), &other_key.to_owned()), full.clone());
                    prop_assert!(
                        namespaces_collide(&n, other_ns),
                        "`{}` and `{}` both own the Redis key {:?}, yet a registry accepts both",
                        n, other_ns, full
                    );
                }
            }

            /// Keys under prefixes and layouts stay injective: two (prefix, namespace,
            /// layout, key) tuples spell the same Redis key only when their prefixed
            /// namespaces are ones a registry would reject together (equal, or one a
            /// `:`-prefix of the other), layouts aside. The tuples are built on purpose
            /// by cutting a key at each `:` and `@`.
            #[test]
            fn prefixed_and_laid_out_keys_never_collide(
                p in proptest::option::of(namespace()),
                n in namespace(),
                layout in proptest::option::of(any::<u32>()),
                k in key_text(),
            ) {
                let keys = cache_keyspace::CacheKeys { prefix: p.as_deref(), namespace: &n, hash_tag: false, layout };
                let full = redis_key(&keys, &k);
                // A batch spells every key as a single call does.
                prop_assert_eq!(&BatchKeys::new(&keys).key(&k), &full);
                // The namespace a reader sees: the prefix joined to the namespace.
                let joined = match &p { Some(p) => format!("{p}:{n}"), None => n.clone() };
                for (at, sep) in full.match_indices([':', '@']) {
                    let head = &full[..at];
                    if head == joined || check_namespace(head).is_err() {
                        continue;
                    }
                    let rest = &full[at + 1..];
                    // Another cache whose (prefixed) namespace is `head` could write
                    // `rest` as its key text (with a layout when cut at `@`).
                    let other_layout = if sep == "@" {
                        match rest.split_once(':') {
                            Some((hex, _)) if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Some(()),
                            _ => None,
                        }
                    } else {
                        Some(())
                    };
                    if other_layout.is_some() {
                        prop_assert!(
                            namespaces_collide(&joined, head),
                            "`{}` and `{}` both spell {:?}", joined, head, full
                        );
                    }
                }
            }

            /// A single flight's lease key is never a value's key, names the value key it
            /// serves (so two value keys never share a lease), and keeps a hash tag's
            /// braces first, so on a cluster it lives in its value's slot.
            #[test]
            fn lease_keys_are_never_value_keys_and_name_their_value_key(
                p in proptest::option::of(namespace()),
                n in namespace(),
                hash_tag: bool,
                layout in proptest::option::of(any::<u32>()),
                k in key_text(),
            ) {
                let keys = cache_keyspace::CacheKeys { prefix: p.as_deref(), namespace: &n, hash_tag, layout };
                let value_key = redis_key(&keys, &k);
                let lease = cache_keyspace::aux_key("lease", &value_key);
                prop_assert!(!value_key.starts_with('!'), "a value key starting with `!`: {:?}", value_key);
                let named = lease.strip_prefix("!lease!");
                prop_assert_eq!(named, Some(value_key.as_str()));
                // Redis hashes the text between the first `{` and the next `}`.
                let tag = |key: &str| -> Option<String> {
                    let open = key.find('{')?;
                    let close = key[open + 1..].find('}')?;
                    Some(key[open + 1..open + 1 + close].to_owned())
                };
                if hash_tag {
                    prop_assert_eq!(tag(&lease), tag(&value_key));
                }
            }

            /// A hash-tagged key names its namespace between its braces, and no valid
            /// namespace's untagged key can spell it (namespaces never start with `{`).
            #[test]
            fn hash_tagged_keys_name_their_namespace(n in namespace(), k in key_text()) {
                let full = redis_key(&cache_keyspace::CacheKeys::plain(&n, true), &k);
                prop_assert_eq!(&BatchKeys::new(&cache_keyspace::CacheKeys::plain(&n, true)).key(&k), &full);
                let (tag, rest) = full
                    .strip_prefix('{')
                    .and_then(|r| r.split_once('}'))
                    .expect("a tagged key starts with its tag");
                prop_assert_eq!(tag, n.as_str());
                prop_assert_eq!(rest.strip_prefix(':'), Some(k.as_str()));
                for (at, _) in full.match_indices(':') {
                    prop_assert!(check_namespace(&full[..at]).is_err());
                }
            }
        }
    }
}
