//! The key space of the typed Redis cache framework: what a namespace may be, and how
//! a cache's Redis keys are laid out.
//!
//! One home for these rules, used where they are checked at compile time
//! (`#[derive(Cache)]`), where keys are built at run time (`cache-core`) and where an
//! operator names a cache (`cachectl clear`): a copy in each drifted before.
//!
//! ```
//! use cache_keyspace::{check_namespace, key_prefix};
//!
//! assert!(check_namespace("user:profile").is_ok());
//! assert!(check_namespace("user profile").is_err());
//! assert_eq!(key_prefix("user:profile", false), "user:profile:");
//! assert_eq!(key_prefix("user:profile", true), "{user:profile}:");
//! ```
#![deny(missing_docs)]

use std::fmt;

/// Why a text is not a namespace; its `Display` says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamespaceError {
    /// The namespace is empty.
    Empty,
    /// It holds a character outside ASCII letters, digits and `: _ - .`.
    Character {
        /// The namespace.
        namespace: String,
        /// The first character not allowed.
        found: char,
    },
    /// It starts or ends with `:`.
    Edge {
        /// The namespace.
        namespace: String,
    },
    /// It holds `::`, an empty segment.
    EmptySegment {
        /// The namespace.
        namespace: String,
    },
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceError::Empty => f.write_str(
                "the namespace cannot be empty; use e.g. `namespace = \"user:profile\"`",
            ),
            NamespaceError::Character { namespace, found } => write!(
                f,
                "the namespace `{namespace}` contains {found:?}; only ASCII letters, digits and `:` `_` `-` `.` are allowed"
            ),
            NamespaceError::Edge { namespace } => write!(
                f,
                "the namespace `{namespace}` starts or ends with `:`; `:` only separates segments, as in `user:profile`"
            ),
            NamespaceError::EmptySegment { namespace } => write!(
                f,
                "the namespace `{namespace}` contains an empty segment `::`; `:` only separates segments, as in `user:profile`"
            ),
        }
    }
}

impl std::error::Error for NamespaceError {}

/// Checks the namespace grammar: ASCII letters, digits and `: _ - .`; no empty, leading,
/// trailing or doubled `:` segment.
///
/// What it rules out is what could make keys ambiguous or unsafe to match: no glob
/// characters (`*?[]`) so `SCAN MATCH "{namespace}:*"` matches one namespace only, no
/// braces so a hash-tagged key `{namespace}:key` ends its tag where the namespace ends,
/// no empty segments so `user:` and `user` do not both exist.
pub fn check_namespace(namespace: &str) -> Result<(), NamespaceError> {
    if namespace.is_empty() {
        return Err(NamespaceError::Empty);
    }
    if let Some(found) = namespace
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.')))
    {
        return Err(NamespaceError::Character {
            namespace: namespace.to_owned(),
            found,
        });
    }
    if namespace.starts_with(':') || namespace.ends_with(':') {
        return Err(NamespaceError::Edge {
            namespace: namespace.to_owned(),
        });
    }
    if namespace.contains("::") {
        return Err(NamespaceError::EmptySegment {
            namespace: namespace.to_owned(),
        });
    }
    Ok(())
}

/// Where the keys of one cache live, and how they are spelled:
///
/// `[{prefix}:]{namespace}[@{layout}]:{key}`, or with `hash_tag`
/// `[{prefix}:]{{namespace}}[@{layout}]:{key}`.
///
/// - `prefix`: a manager-wide prefix (an environment or a tenant sharing the Redis),
///   following the namespace grammar; with it, `staging:user:profile:42`.
/// - `hash_tag`: the namespace in braces, so a Redis Cluster hashes only the namespace
///   and keeps every key of the cache in one slot. Namespaces never contain braces, so a
///   tag ends exactly where the namespace ends.
/// - `layout`: for caches whose bytes are not self-describing (bincode), the fingerprint
///   of the value type, as 8 hex digits after `@`: entries of two shapes of one value
///   type (two versions of a service during a rolling deploy) live side by side under
///   different keys, each side reading its own. `@` is not in the namespace grammar, so
///   the namespace ends before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKeys<'a> {
    /// The manager-wide prefix, if any.
    pub prefix: Option<&'a str>,
    /// The cache's namespace.
    pub namespace: &'a str,
    /// Whether the namespace is a hash tag.
    pub hash_tag: bool,
    /// The layout of the cache's entries, for caches that key by layout.
    pub layout: Option<u32>,
}

impl<'a> CacheKeys<'a> {
    /// The keys of a cache without prefix or layout: `{namespace}:{key}`.
    pub fn plain(namespace: &'a str, hash_tag: bool) -> Self {
        CacheKeys {
            prefix: None,
            namespace,
            hash_tag,
            layout: None,
        }
    }

    /// Appends the text every key of the cache starts with, before the key's own text.
    pub fn write_prefix(&self, out: &mut String) {
        self.write_namespace(out);
        if let Some(layout) = self.layout {
            // `@{layout:08x}`, without the formatting machinery: every call's key goes
            // through here, and `write!` cost a third of building the key.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push('@');
            for shift in (0..8).rev() {
                out.push(char::from(HEX[(layout >> (shift * 4)) as usize & 0xf]));
            }
        }
        out.push(':');
    }

    /// `[{prefix}:]{namespace}`, its namespace in braces with `hash_tag`.
    fn write_namespace(&self, out: &mut String) {
        if let Some(prefix) = self.prefix {
            out.push_str(prefix);
            out.push(':');
        }
        if self.hash_tag {
            out.push('{');
            out.push_str(self.namespace);
            out.push('}');
        } else {
            out.push_str(self.namespace);
        }
    }

    /// The text every key of the cache starts with; see [`write_prefix`](Self::write_prefix).
    pub fn prefix(&self) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 16);
        self.write_prefix(&mut out);
        out
    }

    /// The `SCAN MATCH` pattern of the cache's keys in this layout: its prefix and `*`.
    ///
    /// Exact for namespaces and prefixes that pass [`check_namespace`]: they hold no
    /// glob character, and the braces of a hash tag are not special to `MATCH`.
    pub fn scan_pattern(&self) -> String {
        let mut pattern = self.prefix();
        pattern.push('*');
        pattern
    }

    /// The `SCAN MATCH` patterns of the namespace's keys in every layout: those without
    /// a layout (`{namespace}:*`) and those of any layout (`{namespace}@*`), with this
    /// prefix and hash tag. What clearing a cache must cover while several versions of
    /// its value type share the Redis.
    pub fn scan_patterns_of_every_layout(&self) -> [String; 2] {
        let mut plain = String::new();
        self.write_namespace(&mut plain);
        let mut layouts = plain.clone();
        plain.push_str(":*");
        layouts.push_str("@*");
        [plain, layouts]
    }
}

/// Appends the text every Redis key of a cache without prefix or layout starts with:
/// `"{namespace}:"`, or with `hash_tag` `"{{namespace}}:"`; see [`CacheKeys`].
pub fn write_key_prefix(out: &mut String, namespace: &str, hash_tag: bool) {
    CacheKeys::plain(namespace, hash_tag).write_prefix(out);
}

/// The text every Redis key of a cache without prefix or layout starts with.
pub fn key_prefix(namespace: &str, hash_tag: bool) -> String {
    CacheKeys::plain(namespace, hash_tag).prefix()
}

/// The `SCAN MATCH` pattern of every Redis key of a cache without prefix or layout.
pub fn scan_pattern(namespace: &str, hash_tag: bool) -> String {
    CacheKeys::plain(namespace, hash_tag).scan_pattern()
}

/// The key of an entry that serves a cache's key without being its value: a global
/// single flight's lease (`kind = "lease"`). Written `!{kind}!{redis_key}`.
///
/// Never equal to a value's Redis key, nor to another kind's: a value's key starts with
/// a namespace or `{`, never with `!`, and a kind holds no `!`, so the text up to the
/// second `!` names the kind and the rest the value's key. A hash-tagged value key keeps
/// its tag, so on a Redis Cluster the entry lives in the value's slot.
pub fn aux_key(kind: &str, redis_key: &str) -> String {
    debug_assert!(!kind.contains('!'), "a kind ends at the next `!`");
    let mut out = String::with_capacity(kind.len() + redis_key.len() + 2);
    out.push('!');
    out.push_str(kind);
    out.push('!');
    out.push_str(redis_key);
    out
}

/// The namespace a Redis key belongs to, as far as the key alone tells.
///
/// Exact for a hash-tagged key: `{user:profile}:42` is `user:profile`. For an untagged
/// key the layout does not mark where the namespace ends, so this is the text before
/// the key's last `:`: `user:profile:42` is `user:profile`, but a key whose own text
/// holds a `:` reads one segment deeper (`user:profile:a:b` as `user:profile:a`). `None`
/// for a key without a `:`, which no cache writes.
pub fn namespace_of(redis_key: &str) -> Option<&str> {
    if let Some((namespace, rest)) = redis_key
        .strip_prefix('{')
        .and_then(|tagged| tagged.split_once('}'))
        && (rest.starts_with(':') || rest.starts_with('@'))
        && check_namespace(namespace).is_ok()
    {
        return Some(namespace);
    }
    // A layout's keys: the namespace ends at the `@` (not in the grammar).
    if let Some((namespace, rest)) = redis_key.split_once('@')
        && rest.len() > 9
        && rest.as_bytes()[8] == b':'
        && rest[..8].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Some(namespace);
    }
    redis_key.rsplit_once(':').map(|(namespace, _)| namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_spelled_as_eight_lowercase_hex_digits() {
        for layout in [
            0,
            1,
            0xf,
            0x1a2b,
            0x0abc_def0,
            0x8000_0000,
            u32::MAX,
            0xdead_beef,
        ] {
            let keys = CacheKeys {
                layout: Some(layout),
                ..CacheKeys::plain("ns", false)
            };
            assert_eq!(keys.prefix(), format!("ns@{layout:08x}:"), "{layout:#x}");
        }
    }

    #[test]
    fn the_grammar_accepts_segments_of_letters_digits_and_punctuation() {
        for ok in ["user", "user:uuid_to_id", "a.b-c_d:9", "X"] {
            assert_eq!(check_namespace(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_grammar_rejects_what_could_make_keys_ambiguous() {
        let character = |ns: &str, found| {
            Err(NamespaceError::Character {
                namespace: ns.into(),
                found,
            })
        };
        assert_eq!(check_namespace(""), Err(NamespaceError::Empty));
        assert_eq!(
            check_namespace("user profile"),
            character("user profile", ' ')
        );
        assert_eq!(check_namespace("usér"), character("usér", 'é'));
        assert_eq!(check_namespace("a*b"), character("a*b", '*'));
        assert_eq!(check_namespace("a{b}"), character("a{b}", '{'));
        assert_eq!(check_namespace("a\nb"), character("a\nb", '\n'));
        for edge in [":user", "user:", ":"] {
            assert_eq!(
                check_namespace(edge),
                Err(NamespaceError::Edge {
                    namespace: edge.into()
                })
            );
        }
        assert_eq!(
            check_namespace("user::x"),
            Err(NamespaceError::EmptySegment {
                namespace: "user::x".into()
            })
        );
        let message = check_namespace("a*b").unwrap_err().to_string();
        assert!(message.contains("only ASCII letters"), "{message}");
    }

    #[test]
    fn layouts_and_prefixes_are_spelled_where_the_grammar_cannot_be_confused() {
        let keys = CacheKeys {
            prefix: Some("staging"),
            namespace: "user:profile",
            hash_tag: false,
            layout: Some(0x1a2b),
        };
        assert_eq!(keys.prefix(), "staging:user:profile@00001a2b:");
        assert_eq!(keys.scan_pattern(), "staging:user:profile@00001a2b:*");
        assert_eq!(
            keys.scan_patterns_of_every_layout(),
            [
                "staging:user:profile:*".to_owned(),
                "staging:user:profile@*".to_owned()
            ]
        );
        let tagged = CacheKeys {
            hash_tag: true,
            ..keys
        };
        assert_eq!(tagged.prefix(), "staging:{user:profile}@00001a2b:");
        assert_eq!(
            CacheKeys::plain("user:profile", true).prefix(),
            "{user:profile}:"
        );
        assert_eq!(
            namespace_of("user:profile@00001a2b:42"),
            Some("user:profile")
        );
        assert_eq!(
            namespace_of("{user:profile}@00001a2b:4:2"),
            Some("user:profile")
        );
    }

    #[test]
    fn a_key_names_its_namespace_exactly_when_tagged() {
        assert_eq!(namespace_of("{user:profile}:42"), Some("user:profile"));
        assert_eq!(namespace_of("{user:profile}:a:b"), Some("user:profile"));
        assert_eq!(namespace_of("user:profile:42"), Some("user:profile"));
        assert_eq!(namespace_of("user:profile:a:b"), Some("user:profile:a"));
        assert_eq!(namespace_of("{not a tag}:1"), Some("{not a tag}"));
        assert_eq!(namespace_of("plain"), None);
    }

    #[test]
    fn aux_keys_name_their_kind_and_value_key_and_are_never_value_keys() {
        assert_eq!(
            aux_key("lease", "user:profile:42"),
            "!lease!user:profile:42"
        );
        assert_eq!(
            aux_key("lease", "{user:profile}:42"),
            "!lease!{user:profile}:42"
        );
        for value_key in ["user:profile:42", "{user:profile}:!x", "a:!lease!b"] {
            let aux = aux_key("lease", value_key);
            assert!(aux.starts_with('!') && !value_key.starts_with('!'));
            let (kind, rest) = aux[1..].split_once('!').unwrap();
            assert_eq!((kind, rest), ("lease", value_key));
        }
    }

    #[test]
    fn keys_start_with_the_namespace_or_its_tag() {
        assert_eq!(key_prefix("user:profile", false), "user:profile:");
        assert_eq!(key_prefix("user:profile", true), "{user:profile}:");
        assert_eq!(scan_pattern("user:profile", false), "user:profile:*");
        assert_eq!(scan_pattern("user:profile", true), "{user:profile}:*");
    }
}
