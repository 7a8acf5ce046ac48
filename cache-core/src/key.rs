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
}
