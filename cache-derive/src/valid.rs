//! The semantic checks of a declaration; every failure is recorded, none stops the others.

use syn::{Data, LitStr, Type};

use crate::ast::{Input, Shape};
use crate::attr::{CodecChoice, example};
use crate::ctxt::Ctxt;

/// The TTL used when `ttl` is not given, in seconds.
const DEFAULT_TTL: u64 = 600;

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
    })
}

/// The namespace grammar, shared with the runtime and `cachectl`.
fn check_namespace(namespace: &str) -> Result<(), String> {
    cache_keyspace::check_namespace(namespace).map_err(|e| e.to_string())
}
