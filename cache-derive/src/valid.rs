//! The semantic checks of a declaration; every failure is recorded, none stops the others.

use quote::ToTokens;
use syn::{Data, LitStr, Type};

use crate::ast::{Input, Shape};
use crate::attr::{Attrs, CodecChoice, SingleFlightChoice, Spanned, example};
use crate::ctxt::Ctxt;

/// The TTL used when `ttl` is not given, in seconds.
const DEFAULT_TTL: u64 = 600;

/// The longest `load_timeout_ms`: one hour.
const MAX_LOAD_TIMEOUT_MS: u64 = 3_600_000;

/// The largest `max_bytes`: 512 MiB, the largest value Redis stores.
const MAX_VALUE_BYTES: u64 = 512 * 1024 * 1024;

/// A declaration that passed every check.
pub(crate) struct Decl<'a> {
    pub namespace: &'a LitStr,
    pub ttl: u64,
    pub key: &'a Type,
    /// `Some` for a mapping (form A); `None` when the item is the value type (form B).
    pub value: Option<&'a Type>,
    pub codec: Option<&'a CodecChoice>,
    pub version: u32,
    /// `Some((capacity, local ttl, span of local = N))` for a cache with an in-process
    /// first level.
    pub local: Option<(u64, u64, proc_macro2::Span)>,
    pub hash_tag: bool,
    /// `fail_safe = S`, in seconds.
    pub fail_safe: Option<u64>,
    /// `load_timeout_ms = N`, in milliseconds.
    pub load_timeout_ms: Option<u64>,
    /// `refresh_ahead = P`, a percent of the TTL from 1 to 99.
    pub refresh_ahead: Option<u64>,
    /// `negative_ttl = S`, in seconds.
    pub negative_ttl: Option<u64>,
    /// `ttl_jitter = S`, in seconds.
    pub ttl_jitter: Option<u64>,
    /// `single_flight = "local" | "global"`.
    pub single_flight: Option<SingleFlightChoice>,
    /// `compress = bool`, only with bincode.
    pub compress: Option<bool>,
    /// `max_bytes = N`, at most [`MAX_VALUE_BYTES`].
    pub max_bytes: Option<u64>,
}

pub(crate) fn check<'a>(cx: &Ctxt, input: &'a Input<'_>) -> Option<Decl<'a>> {
    let attrs = &input.attrs;
    let item = input.item;
    let Some(attr) = &attrs.attr else {
        cx.error_spanned_by(
            &item.ident,
            "missing `#[cache(namespace = \"...\", key = Type)]`: `#[derive(Cache)]` needs at least a namespace and a key type",
        );
        return None;
    };

    if let Some(namespace) = &attrs.namespace
        && let Err(message) = check_namespace(&namespace.value())
    {
        cx.error_spanned_by(namespace, message);
    }

    if let Some(ttl) = &attrs.ttl {
        if ttl.value == 0 {
            cx.error_at(
                ttl.span,
                "`ttl` must be at least 1 second (the default is 600)",
            );
        } else if ttl.value > u64::from(u32::MAX) {
            cx.error_at(ttl.span, "`ttl` must be at most 4294967295 seconds");
        }
    }

    let ttl = attrs.ttl.as_ref().map_or(DEFAULT_TTL, |t| t.value);
    if let Some(local) = &attrs.local
        && local.value == 0
    {
        cx.error_at(
            local.span,
            "`local` must be at least 1 entry; leave it out for no in-process level",
        );
    }
    if let Some(local_ttl) = &attrs.local_ttl {
        if attrs.local.is_none() {
            cx.error_at(
                local_ttl.span,
                "`local_ttl` needs `local = N`, the size of the in-process level",
            );
        } else if local_ttl.value == 0 || local_ttl.value > ttl {
            cx.error_at(
                local_ttl.span,
                format_args!(
                    "`local_ttl` must be from 1 to the cache's `ttl` ({ttl} s): an in-process copy is kept at most as long as a Redis entry"
                ),
            );
        }
    }

    check_read_through(cx, attrs, ttl);
    check_storage(cx, attrs);

    let shape_name = match input.shape {
        Shape::Enum => Some("an enum"),
        Shape::Struct => Some("a struct with fields"),
        Shape::Unit | Shape::Union => None,
    };
    match (&input.shape, &attrs.value) {
        (Shape::Union, _) => {
            let Data::Union(u) = &item.data else { unreachable!("shape follows data") };
            cx.error_spanned_by(u.union_token, "`Cache` cannot be derived for a union; use a struct or an enum");
        }
        (Shape::Struct | Shape::Enum, Some(value)) => cx.error_spanned_by(
            value,
            format_args!(
                "`value = ...` belongs on a unit struct that declares a mapping; `{}` is {}, so it is the value type itself: remove `value`",
                item.ident,
                shape_name.unwrap_or_default()
            ),
        ),
        _ => {}
    }

    // What is missing is only known when every attribute parsed to its end.
    if !attrs.incomplete {
        let mut missing = Vec::new();
        for (key, what) in [
            ("namespace", "the prefix of this cache's Redis keys"),
            ("key", "the type of this cache's keys"),
        ] {
            if !attrs.saw(key) {
                missing.push(format!("`{}` ({what})", example(key)));
            }
        }
        if matches!(input.shape, Shape::Unit) && !attrs.saw("value") {
            missing.push(format!(
                "`{}` (a unit struct declares a mapping from `key` to `value`; to cache a type itself, derive `Cache` on that type)",
                example("value")
            ));
        }
        if !missing.is_empty() {
            cx.error_spanned_by(
                attr,
                format_args!("`#[cache(...)]` is missing {}", missing.join(" and ")),
            );
        }
    }

    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics.params,
            "a cache declaration cannot be generic; declare one cache per concrete type",
        );
    } else if let Some(clause) = &item.generics.where_clause {
        cx.error_spanned_by(
            clause,
            "a cache declaration cannot have a where clause; declare it on a concrete type",
        );
    }

    Some(Decl {
        namespace: attrs.namespace.as_ref()?,
        ttl,
        key: attrs.key.as_ref()?,
        value: attrs.value.as_ref(),
        codec: attrs.codec.as_ref(),
        version: attrs.version.as_ref().map_or(0, |v| v.value),
        local: attrs.local.as_ref().map(|l| {
            (
                l.value,
                attrs.local_ttl.as_ref().map_or(ttl, |t| t.value),
                l.span,
            )
        }),
        hash_tag: attrs.hash_tag.as_ref().is_some_and(|h| h.value),
        fail_safe: value(&attrs.fail_safe),
        load_timeout_ms: value(&attrs.load_timeout_ms),
        refresh_ahead: value(&attrs.refresh_ahead),
        negative_ttl: value(&attrs.negative_ttl),
        ttl_jitter: value(&attrs.ttl_jitter),
        single_flight: value(&attrs.single_flight),
        compress: value(&attrs.compress),
        max_bytes: value(&attrs.max_bytes),
    })
}

/// The value of a key that was given, without its span.
fn value<T: Copy>(slot: &Option<Spanned<T>>) -> Option<T> {
    slot.as_ref().map(|s| s.value)
}

/// The keys of `get_or_load`: `fail_safe`, `load_timeout_ms`, `refresh_ahead`,
/// `negative_ttl`, `ttl_jitter`. `ttl` is the cache's, checked already.
fn check_read_through(cx: &Ctxt, attrs: &Attrs, ttl: u64) {
    // Against an invalid `ttl`, whose error is reported, a bound would only add noise.
    let ttl_is_valid = (1..=u64::from(u32::MAX)).contains(&ttl);

    if let Some(fail_safe) = &attrs.fail_safe {
        if fail_safe.value == 0 {
            cx.error_at(
                fail_safe.span,
                "`fail_safe` must be at least 1 second; leave it out to turn fail-safe off",
            );
        } else if fail_safe.value > u64::from(u32::MAX) {
            cx.error_at(
                fail_safe.span,
                "`fail_safe` must be at most 4294967295 seconds",
            );
        }
    }

    if let Some(timeout) = &attrs.load_timeout_ms {
        if timeout.value == 0 {
            cx.error_at(
                timeout.span,
                "`load_timeout_ms` must be at least 1 millisecond; leave it out to wait for every load",
            );
        } else {
            if timeout.value > MAX_LOAD_TIMEOUT_MS {
                cx.error_at(
                    timeout.span,
                    "`load_timeout_ms` must be at most 3600000 milliseconds (one hour)",
                );
            }
            // A `fail_safe` that was written but is wrong has its own error.
            if !attrs.saw("fail_safe") {
                cx.error_at(
                    timeout.span,
                    format_args!(
                        "`load_timeout_ms` needs `fail_safe`, e.g. `{}`: when a load is slow, `get_or_load` answers from the stale entry, and only `fail_safe` keeps an entry past its `ttl`",
                        example("fail_safe")
                    ),
                );
            }
        }
    }

    if let Some(percent) = &attrs.refresh_ahead {
        if percent.value == 0 {
            cx.error_at(
                percent.span,
                "`refresh_ahead` must be at least 1 (percent of the `ttl`); leave it out to turn refresh-ahead off",
            );
        } else if percent.value > 99 {
            cx.error_at(
                percent.span,
                "`refresh_ahead` must be at most 99: it is the percent of the `ttl` after which a hit refreshes the entry, and at 100 the entry has expired",
            );
        }
    }

    if let Some(negative) = &attrs.negative_ttl {
        if negative.value == 0 {
            cx.error_at(
                negative.span,
                "`negative_ttl` must be at least 1 second; leave it out to remember nothing when a loader finds nothing",
            );
        } else if ttl_is_valid && negative.value > ttl {
            cx.error_at(
                negative.span,
                format_args!(
                    "`negative_ttl` must be at most the cache's `ttl` ({ttl} s): an absence is remembered no longer than a value is kept"
                ),
            );
        }
        const WHY: &str =
            "a remembered absence is a marker in the entry's bytes, which only bincode frames";
        match foreign_codec(attrs) {
            None => {}
            Some(Foreign::Shared(name)) => cx.error_at(
                negative.span,
                format_args!(
                    "`negative_ttl` needs the `bincode` codec, the default: {WHY}; `codec = \"{name}\"` writes bytes that other languages' services read, and to them a marker would look like a value"
                ),
            ),
            Some(Foreign::Custom(path)) => cx.error_at(
                negative.span,
                format_args!(
                    "`negative_ttl` needs the `bincode` codec, the default: {WHY}; the custom codec `{path}` owns its bytes, and to whatever decodes them a marker would look like a value"
                ),
            ),
        }
    }

    if let Some(jitter) = &attrs.ttl_jitter {
        if jitter.value == 0 {
            cx.error_at(
                jitter.span,
                "`ttl_jitter` must be at least 1 second; leave it out for no jitter",
            );
        } else if ttl_is_valid && jitter.value > ttl {
            cx.error_at(
                jitter.span,
                format_args!(
                    "`ttl_jitter` must be at most the cache's `ttl` ({ttl} s): it adds up to that much to every expiry, and more would keep entries over twice as long as declared"
                ),
            );
        }
    }
}

/// The keys of how values are stored: `compress`, `max_bytes`.
fn check_storage(cx: &Ctxt, attrs: &Attrs) {
    if let Some(compress) = &attrs.compress
        && compress.value
    {
        match foreign_codec(attrs) {
            None => {}
            Some(Foreign::Shared(name)) => cx.error_at(
                compress.span,
                format_args!(
                    "`compress = true` needs the `bincode` codec, the default: `codec = \"{name}\"` writes bytes that other languages' services read, and they would get compressed bytes they cannot decode"
                ),
            ),
            Some(Foreign::Custom(path)) => cx.error_at(
                compress.span,
                format_args!(
                    "`compress = true` needs the `bincode` codec, the default: the custom codec `{path}` owns its bytes; compress them in the codec if they need it"
                ),
            ),
        }
    }

    if let Some(max) = &attrs.max_bytes {
        if max.value == 0 {
            cx.error_at(
                max.span,
                "`max_bytes` must be at least 1 byte; leave it out for no limit but Redis's own (512 MiB)",
            );
        } else if max.value > MAX_VALUE_BYTES {
            cx.error_at(
                max.span,
                "`max_bytes` must be at most 536870912 (512 MiB): Redis stores no larger value",
            );
        }
    }
}

/// A codec whose bytes are not framed by this library, so a setting that would change
/// them (a marker, compression) is refused.
enum Foreign {
    /// `"json"` or `"string"`: bytes other languages' services read.
    Shared(&'static str),
    /// The path of a user codec, as written.
    Custom(String),
}

/// The declared codec, unless it is bincode (the default), whose entries this library
/// frames.
fn foreign_codec(attrs: &Attrs) -> Option<Foreign> {
    match attrs.codec.as_ref()? {
        CodecChoice::Builtin("bincode", _) => None,
        CodecChoice::Builtin(name, _) => Some(Foreign::Shared(name)),
        CodecChoice::Custom(path) => Some(Foreign::Custom(
            path.to_token_stream().to_string().replace(' ', ""),
        )),
    }
}

/// The namespace grammar, shared with the runtime and `cachectl`.
fn check_namespace(namespace: &str) -> Result<(), String> {
    cache_keyspace::check_namespace(namespace).map_err(|e| e.to_string())
}
