//! Parses `#[cache(...)]`, keeping each value's span for later checks.
//!
//! Every key is one row of [`ATTRIBUTES`]: its name, what its value may be, how it is
//! written, and the parser that stores it. The lookup, the "expected one of" list and
//! every message that shows a key read that row, so a new key is a row here, a field of
//! [`Attrs`] and its checks in `valid.rs`, and no message can forget it.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Lit, LitStr, Path, Type, UnOp};

use crate::ctxt::Ctxt;

/// One key `#[cache(...)]` accepts.
struct AttrKey {
    /// The key as written, e.g. `ttl`.
    name: &'static str,
    /// What its value may be, completing a message about a wrong one, e.g. `a type`.
    expects: &'static str,
    /// The key with a typical value, e.g. `ttl = 600`, shown whenever a message says how
    /// to write it.
    example: &'static str,
    /// Reads the value after `=` into the key's field of [`Attrs`]. A function in the row,
    /// rather than a `match` on the name elsewhere, so a key cannot be listed but unparsed.
    parse: fn(&Entry<'_>, &mut Attrs) -> syn::Result<()>,
}

/// Every key, in the order the "expected one of" message lists them.
const ATTRIBUTES: &[AttrKey] = &[
    AttrKey {
        name: "namespace",
        expects: "a string literal",
        example: "namespace = \"user:profile\"",
        parse: |entry, out| entry.string(&mut out.namespace),
    },
    AttrKey {
        name: "ttl",
        expects: "whole seconds from 1 to 4294967295",
        example: "ttl = 600",
        parse: |entry, out| entry.integer(&mut out.ttl),
    },
    AttrKey {
        name: "key",
        expects: "a type",
        example: "key = i64",
        parse: |entry, out| entry.owned_type(&mut out.key),
    },
    AttrKey {
        name: "value",
        expects: "a type",
        example: "value = Uuid",
        parse: |entry, out| entry.owned_type(&mut out.value),
    },
    AttrKey {
        name: "codec",
        expects: "\"bincode\", \"json\", \"string\" or the path of a type implementing `cache_manager::Codec`",
        example: "codec = \"json\"",
        parse: |entry, out| entry.codec(&mut out.codec),
    },
    AttrKey {
        name: "version",
        expects: "an integer from 0 to 4294967295",
        example: "version = 2",
        parse: |entry, out| entry.integer(&mut out.version),
    },
    AttrKey {
        name: "local",
        expects: "the most entries kept in process",
        example: "local = 10_000",
        parse: |entry, out| entry.integer(&mut out.local),
    },
    AttrKey {
        name: "local_ttl",
        expects: "whole seconds, at most the cache's `ttl`",
        example: "local_ttl = 30",
        parse: |entry, out| entry.integer(&mut out.local_ttl),
    },
    AttrKey {
        name: "hash_tag",
        expects: "`true` or `false`",
        example: "hash_tag = true",
        parse: |entry, out| {
            entry.flag(
                &mut out.hash_tag,
                "keeps every key of the cache in one Redis Cluster hash slot",
            )
        },
    },
    AttrKey {
        name: "fail_safe",
        expects: "whole seconds from 1 to 4294967295",
        example: "fail_safe = 3600",
        parse: |entry, out| entry.integer(&mut out.fail_safe),
    },
    AttrKey {
        name: "load_timeout_ms",
        expects: "whole milliseconds from 1 to 3600000",
        example: "load_timeout_ms = 150",
        parse: |entry, out| entry.integer(&mut out.load_timeout_ms),
    },
    AttrKey {
        name: "refresh_ahead",
        expects: "a percent of the cache's `ttl` from 1 to 99",
        example: "refresh_ahead = 80",
        parse: |entry, out| entry.integer(&mut out.refresh_ahead),
    },
    AttrKey {
        name: "negative_ttl",
        expects: "whole seconds, at most the cache's `ttl`",
        example: "negative_ttl = 30",
        parse: |entry, out| entry.integer(&mut out.negative_ttl),
    },
    AttrKey {
        name: "ttl_jitter",
        expects: "whole seconds, at most the cache's `ttl`",
        example: "ttl_jitter = 60",
        parse: |entry, out| entry.integer(&mut out.ttl_jitter),
    },
    AttrKey {
        name: "single_flight",
        expects: "\"local\" (a key's concurrent loads run once per process, the default) or \"global\" (once across every instance sharing the Redis)",
        example: "single_flight = \"global\"",
        parse: |entry, out| {
            entry.choice(
                &mut out.single_flight,
                &[
                    ("local", SingleFlightChoice::Local),
                    ("global", SingleFlightChoice::Global),
                ],
            )
        },
    },
    AttrKey {
        name: "compress",
        expects: "`true` or `false`",
        example: "compress = true",
        parse: |entry, out| {
            entry.flag(
                &mut out.compress,
                "stores values above a size threshold compressed",
            )
        },
    },
    AttrKey {
        name: "max_bytes",
        expects: "bytes from 1 to 536870912 (512 MiB, the largest value Redis stores)",
        example: "max_bytes = 1_048_576",
        parse: |entry, out| entry.integer(&mut out.max_bytes),
    },
];

/// The row of the key `name`, if it is one.
fn lookup(name: &str) -> Option<&'static AttrKey> {
    ATTRIBUTES.iter().find(|key| key.name == name)
}

/// How the key `name` is written, e.g. `ttl = 600`, for messages outside this module.
/// Callers name keys they know exist, so a miss is a bug in this crate.
pub(crate) fn example(name: &str) -> &'static str {
    lookup(name)
        .expect("`example` is asked only for keys of ATTRIBUTES")
        .example
}

/// A value with the span of the tokens it was read from.
pub(crate) struct Spanned<T> {
    /// The value as parsed.
    pub value: T,
    /// Where it was written, so a later check can point at it.
    pub span: Span,
}

/// The codec named by `codec = ...`.
pub(crate) enum CodecChoice {
    /// `"bincode"`, `"json"` or `"string"`.
    Builtin(&'static str, Span),
    /// A path to a user type implementing `Codec<V>`.
    Custom(Path),
}

/// The reach of `get_or_load`'s single flight named by `single_flight = "..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SingleFlightChoice {
    /// `"local"`: within this process.
    Local,
    /// `"global"`: across every instance sharing the Redis.
    Global,
}

/// Everything `#[cache(...)]` said, unchecked beyond literal types.
#[derive(Default)]
pub(crate) struct Attrs {
    /// The first `#[cache(...)]`, for errors about what it lacks.
    pub attr: Option<TokenStream>,
    /// A `#[cache(...)]` did not parse to the end: what it lacks is unknown.
    pub incomplete: bool,
    /// Keys that were written, valid or not.
    pub seen: Vec<&'static str>,
    /// `namespace = "..."`: the prefix of the cache's Redis keys.
    pub namespace: Option<LitStr>,
    /// `ttl = N`: the expiry of each entry, in seconds.
    pub ttl: Option<Spanned<u64>>,
    /// `key = Type`: the type of the cache's keys.
    pub key: Option<Type>,
    /// `value = Type`: the type of the cache's values, for a mapping (form A).
    pub value: Option<Type>,
    /// `codec = ...`: how values are encoded.
    pub codec: Option<CodecChoice>,
    /// `version = N`: mixed into the fingerprint to invalidate stored entries.
    pub version: Option<Spanned<u32>>,
    /// `local = N`: the capacity of the in-process level.
    pub local: Option<Spanned<u64>>,
    /// `local_ttl = N`: how long an in-process copy is kept, in seconds.
    pub local_ttl: Option<Spanned<u64>>,
    /// `hash_tag = bool`: whether the namespace is a Redis Cluster hash tag.
    pub hash_tag: Option<Spanned<bool>>,
    /// `fail_safe = S`: how long an entry is kept past its TTL for a failing loader.
    pub fail_safe: Option<Spanned<u64>>,
    /// `load_timeout_ms = N`: how long `get_or_load` waits before answering stale.
    pub load_timeout_ms: Option<Spanned<u64>>,
    /// `refresh_ahead = P`: the percent of the TTL after which a hit refreshes.
    pub refresh_ahead: Option<Spanned<u64>>,
    /// `negative_ttl = S`: how long a loader's `Ok(None)` is remembered.
    pub negative_ttl: Option<Spanned<u64>>,
    /// `ttl_jitter = S`: the most time added at random to each write's expiry.
    pub ttl_jitter: Option<Spanned<u64>>,
    /// `single_flight = "..."`: how far a key's single flight reaches.
    pub single_flight: Option<Spanned<SingleFlightChoice>>,
    /// `compress = bool`: whether large values are stored compressed.
    pub compress: Option<Spanned<bool>>,
    /// `max_bytes = N`: the largest encoded value written.
    pub max_bytes: Option<Spanned<u64>>,
}

impl Attrs {
    /// Whether `key` was written, even with an invalid value.
    pub(crate) fn saw(&self, key: &str) -> bool {
        self.seen.contains(&key)
    }
}

/// Reads every `#[cache(...)]` of the item, recording each mistake and going on.
pub(crate) fn parse(cx: &Ctxt, attrs: &[Attribute]) -> Attrs {
    let mut out = Attrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("cache")) {
        out.attr.get_or_insert_with(|| attr.to_token_stream());
        if let Err(error) = attr.parse_nested_meta(|meta| parse_entry(cx, &mut out, meta)) {
            out.incomplete = true;
            cx.syn_error(error);
        }
    }
    out
}

/// Reads one `key = value`. An `Err` is a parse error that stops the attribute; a wrong
/// but well-formed value is recorded in `cx` so the next key is still read.
fn parse_entry(cx: &Ctxt, out: &mut Attrs, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
    let name = meta.path.to_token_stream().to_string().replace(' ', "");
    let Some(key) = lookup(&name) else {
        let expected: Vec<String> = ATTRIBUTES
            .iter()
            .map(|key| format!("`{}`", key.name))
            .collect();
        cx.error_spanned_by(
            &meta.path,
            format_args!(
                "unknown cache attribute `{name}`; expected one of {}",
                expected.join(", ")
            ),
        );
        return skip_value(&meta);
    };
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format_args!(
            "`{}` needs a value: `{}`",
            key.name, key.example
        )));
    }
    out.seen.push(key.name);
    let entry = Entry {
        cx,
        key,
        path: &meta.path,
        input: meta.value()?,
    };
    (key.parse)(&entry, out)
}

/// Consumes `= value` or `(...)` after an unknown key so parsing can go on; the
/// function attributes' parser skips unknown arguments with it too.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// One known key whose value is being read: what the parsers of [`ATTRIBUTES`] share, so
/// each reports in terms of its own row.
struct Entry<'a> {
    /// Where a wrong value is recorded.
    cx: &'a Ctxt,
    /// The row of the key being read.
    key: &'static AttrKey,
    /// The key as written, where a duplicate is reported.
    path: &'a Path,
    /// The tokens after `=`.
    input: ParseStream<'a>,
}

impl Entry<'_> {
    /// Stores `value` unless the key was already given, in this or an earlier attribute.
    fn set_once<T>(&self, slot: &mut Option<T>, value: T) {
        if slot.is_some() {
            self.cx.error_spanned_by(
                self.path,
                format_args!(
                    "duplicate cache attribute `{}`; give it once",
                    self.key.name
                ),
            );
        } else {
            *slot = Some(value);
        }
    }

    /// A string literal.
    fn string(&self, slot: &mut Option<LitStr>) -> syn::Result<()> {
        match self.input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => self.set_once(slot, lit),
            other => self.cx.error_spanned_by(
                other,
                format_args!("expected {}: `{}`", self.key.expects, self.key.example),
            ),
        }
        Ok(())
    }

    /// `true` or `false`; `effect` says what `true` does, completing the message.
    fn flag(&self, slot: &mut Option<Spanned<bool>>, effect: &str) -> syn::Result<()> {
        match self.input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(lit),
                ..
            }) => {
                let flag = Spanned {
                    value: lit.value,
                    span: lit.span(),
                };
                self.set_once(slot, flag);
            }
            other => self.cx.error_spanned_by(
                other,
                format_args!(
                    "`{}` takes {}: `{}` {effect}",
                    self.key.name, self.key.expects, self.key.example
                ),
            ),
        }
        Ok(())
    }

    /// A string literal naming one of `choices`, stored as its value.
    fn choice<T: Copy>(
        &self,
        slot: &mut Option<Spanned<T>>,
        choices: &[(&str, T)],
    ) -> syn::Result<()> {
        let name = self.key.name;
        let expects = self.key.expects;
        match self.input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => {
                let written = lit.value();
                match choices.iter().find(|(choice, _)| *choice == written) {
                    Some(&(_, value)) => self.set_once(
                        slot,
                        Spanned {
                            value,
                            span: lit.span(),
                        },
                    ),
                    None => self.cx.error_spanned_by(
                        &lit,
                        format_args!("`{name}` cannot be {written:?}; expected {expects}"),
                    ),
                }
            }
            other => self.cx.error_spanned_by(
                other,
                format_args!(
                    "`{name}` takes a string literal; expected {expects}, e.g. `{}`",
                    self.key.example
                ),
            ),
        }
        Ok(())
    }

    /// An integer literal that fits `T`, reporting what was wrong otherwise.
    fn integer<T>(&self, slot: &mut Option<Spanned<T>>) -> syn::Result<()>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let expr: Expr = self.input.parse()?;
        let name = self.key.name;
        let expected = format!("{}, e.g. `{}`", self.key.expects, self.key.example);
        match &expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) if !lit.suffix().is_empty() => self.cx.error_spanned_by(
                lit,
                format_args!(
                    "`{name}` takes a plain integer without a type suffix; expected {expected}"
                ),
            ),
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => match lit.base10_parse::<T>() {
                Ok(value) => self.set_once(
                    slot,
                    Spanned {
                        value,
                        span: lit.span(),
                    },
                ),
                Err(_) => self.cx.error_spanned_by(
                    lit,
                    format_args!("`{name}` is out of range; expected {expected}"),
                ),
            },
            Expr::Unary(ExprUnary {
                op: UnOp::Neg(_), ..
            }) => self.cx.error_spanned_by(
                &expr,
                format_args!("`{name}` cannot be negative; expected {expected}"),
            ),
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => self.cx.error_spanned_by(
                s,
                format_args!("`{name}` takes an integer, not a string; expected {expected}"),
            ),
            other => self.cx.error_spanned_by(
                other,
                format_args!("`{name}` takes an integer literal; expected {expected}"),
            ),
        }
        Ok(())
    }

    /// An owned type: a string or a reference is reported, since users write both.
    fn owned_type(&self, slot: &mut Option<Type>) -> syn::Result<()> {
        let name = self.key.name;
        if self.input.peek(LitStr) {
            let lit: LitStr = self.input.parse()?;
            self.cx.error_spanned_by(
                &lit,
                format_args!("expected a type, not a string: `{name} = {}`", lit.value()),
            );
            return Ok(());
        }
        // A value that is not a type cannot be skipped reliably, so it ends the attribute.
        let ty: Type = self.input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format_args!(
                    "expected {} after `{name} =`: `{}`",
                    self.key.expects, self.key.example
                ),
            )
        })?;
        if let Type::Reference(reference) = &ty {
            self.cx.error_spanned_by(
                reference,
                format_args!(
                    "a cache {name} must be an owned type: use `String` rather than `&str`, `Vec<u8>` rather than `&[u8]`"
                ),
            );
            return Ok(());
        }
        self.set_once(slot, ty);
        Ok(())
    }

    /// A built-in codec's name as a string, or the path of a user codec.
    fn codec(&self, slot: &mut Option<CodecChoice>) -> syn::Result<()> {
        let expects = self.key.expects;
        let choice = if self.input.peek(LitStr) {
            let lit: LitStr = self.input.parse()?;
            match lit.value().as_str() {
                "bincode" => Some(CodecChoice::Builtin("bincode", lit.span())),
                "json" => Some(CodecChoice::Builtin("json", lit.span())),
                "string" => Some(CodecChoice::Builtin("string", lit.span())),
                other => {
                    self.cx.error_spanned_by(
                        &lit,
                        format_args!("unknown codec `{other}`; expected {expects}"),
                    );
                    None
                }
            }
        } else {
            match self.input.parse::<Expr>()? {
                Expr::Path(p) if p.qself.is_none() => Some(CodecChoice::Custom(p.path)),
                other => {
                    self.cx
                        .error_spanned_by(other, format_args!("expected {expects}"));
                    None
                }
            }
        };
        if let Some(choice) = choice {
            self.set_once(slot, choice);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ATTRIBUTES, SingleFlightChoice, parse};
    use crate::ctxt::Ctxt;

    /// `#[cache(<inside>)]` parsed, with the errors it recorded.
    fn parse_cache(inside: &str) -> (super::Attrs, syn::Result<()>) {
        let item: syn::DeriveInput =
            syn::parse_str(&format!("#[cache({inside})] struct S;")).unwrap();
        let cx = Ctxt::default();
        let attrs = parse(&cx, &item.attrs);
        (attrs, cx.check())
    }

    /// The rows are written by hand: a copied row that was not fully edited would show a
    /// key under another key's name in every message.
    #[test]
    fn each_row_is_its_own_key() {
        for (i, key) in ATTRIBUTES.iter().enumerate() {
            assert!(
                key.example.starts_with(&format!("{} = ", key.name)),
                "{}",
                key.name
            );
            assert!(
                ATTRIBUTES[..i].iter().all(|other| other.name != key.name),
                "`{}` is listed twice",
                key.name
            );
        }
    }

    /// Messages show each row's example as the way to write its key, so its own parser
    /// must accept it.
    #[test]
    fn each_example_parses() {
        for key in ATTRIBUTES {
            let (attrs, errors) = parse_cache(key.example);
            assert!(errors.is_ok(), "`{}`: {errors:?}", key.example);
            assert_eq!(attrs.seen, [key.name]);
        }
    }

    /// A choice is stored by name, and a name outside the list is refused with the list
    /// the row's `expects` gives.
    #[test]
    fn single_flight_is_local_or_global() {
        for (written, choice) in [
            ("local", SingleFlightChoice::Local),
            ("global", SingleFlightChoice::Global),
        ] {
            let (attrs, errors) = parse_cache(&format!("single_flight = {written:?}"));
            assert!(errors.is_ok(), "{written}");
            assert_eq!(attrs.single_flight.map(|s| s.value), Some(choice));
        }
        let (attrs, errors) = parse_cache("single_flight = \"cluster\"");
        assert!(attrs.single_flight.is_none());
        let message = errors.unwrap_err().to_string();
        assert!(message.starts_with("`single_flight` cannot be \"cluster\"; expected \"local\""));
        assert!(message.contains("\"global\""), "{message}");
    }
}
