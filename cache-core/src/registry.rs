//! Compile-time checks run by `cache_registry!`.

/// Whether keys of the two namespaces could collide: they are equal, or one is a
/// `:`-prefix of the other.
pub(crate) const fn namespaces_collide(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    bytes_eq(short.as_bytes(), long.as_bytes())
        || is_colon_prefix(short.as_bytes(), long.as_bytes())
}

/// Panics (at compile time, inside a `const`) when two registered caches have the same
/// namespace, or one namespace is a `:`-prefix of another: `user` and `user:profile` could
/// both own the Redis key `user:profile:1`.
///
/// `caches` pairs each registry field with its namespace. Empty namespaces belong to
/// declarations that already failed to compile and are skipped.
#[doc(hidden)]
pub const fn check_namespaces(caches: &[(&str, &str)]) {
    let mut i = 0;
    while i < caches.len() {
        let mut j = i + 1;
        while j < caches.len() {
            let (a_field, a) = caches[i];
            let (b_field, b) = caches[j];
            if !a.is_empty() && !b.is_empty() && namespaces_collide(a, b) {
                if bytes_eq(a.as_bytes(), b.as_bytes()) {
                    collision(&[
                        "cache_registry!: caches `",
                        a_field,
                        "` and `",
                        b_field,
                        "` both use namespace `",
                        a,
                        "`; their keys would overwrite each other. Give each cache its own namespace.",
                    ]);
                }
                let ((short_field, short), (long_field, long)) = if a.len() < b.len() {
                    (caches[i], caches[j])
                } else {
                    (caches[j], caches[i])
                };
                collision(&[
                    "cache_registry!: namespace `",
                    short,
                    "` (cache `",
                    short_field,
                    "`) is a `:`-prefix of `",
                    long,
                    "` (cache `",
                    long_field,
                    "`), so their Redis keys could collide. Rename one so neither is a prefix of the other.",
                ]);
            }
            j += 1;
        }
        i += 1;
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

/// Panics with the concatenation of `parts`, at most 1 KiB of it.
const fn collision(parts: &[&str]) -> ! {
    let mut buf = [0u8; 1024];
    let mut len = 0;
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p].as_bytes();
        let mut i = 0;
        while i < bytes.len() && len < buf.len() {
            buf[len] = bytes[i];
            len += 1;
            i += 1;
        }
        p += 1;
    }
    let (message, _) = buf.split_at(len);
    match core::str::from_utf8(message) {
        Ok(message) => panic!("{}", message),
        Err(_) => panic!("cache_registry!: two caches have colliding namespaces"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_namespaces_pass() {
        check_namespaces(&[
            ("a", "user:uuid_to_id"),
            ("b", "user:id_to_uuid"),
            ("c", "user:profile"),
            ("d", "users"),
            ("e", ""),
        ]);
    }

    #[test]
    #[should_panic(expected = "both use namespace `user`")]
    fn equal_namespaces_collide() {
        check_namespaces(&[("a", "user"), ("b", "x"), ("c", "user")]);
    }

    #[test]
    #[should_panic(
        expected = "namespace `user` (cache `b`) is a `:`-prefix of `user:profile` (cache `a`)"
    )]
    fn colon_prefixes_collide() {
        check_namespaces(&[("a", "user:profile"), ("b", "user")]);
    }
}
