//! Compile-time checks run by `cache_registry!`.

use crate::cache::CacheInfo;

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
