//! Parses `#[cache(...)]`, keeping each value's span for later checks.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Lit, LitStr, Path, Type, UnOp};

use crate::ctxt::Ctxt;

const KEYS: &str =
    "`namespace`, `ttl`, `key`, `value`, `codec`, `version`, `local`, `local_ttl`, `hash_tag`";

/// A value with the span of the tokens it was read from.
pub(crate) struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// The codec named by `codec = ...`.
pub(crate) enum CodecChoice {
    /// `"bincode"`, `"json"` or `"string"`.
    Builtin(&'static str, Span),
    /// A path to a user type implementing `Codec<V>`.
    Custom(Path),
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
    pub namespace: Option<LitStr>,
    pub ttl: Option<Spanned<u64>>,
    pub key: Option<Type>,
    pub value: Option<Type>,
    pub codec: Option<CodecChoice>,
    pub version: Option<Spanned<u32>>,
    pub local: Option<Spanned<u64>>,
    pub local_ttl: Option<Spanned<u64>>,
    pub hash_tag: Option<Spanned<bool>>,
}

impl Attrs {
    /// Whether `key` was written, even with an invalid value.
    pub(crate) fn saw(&self, key: &str) -> bool {
        self.seen.contains(&key)
    }
}

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

fn parse_entry(cx: &Ctxt, out: &mut Attrs, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
    let path = meta.path.clone();
    let name = path.to_token_stream().to_string().replace(' ', "");
    let Some(key) = [
        "namespace",
        "ttl",
        "version",
        "key",
        "value",
        "codec",
        "local",
        "local_ttl",
        "hash_tag",
    ]
    .into_iter()
    .find(|k| *k == name) else {
        cx.error_spanned_by(
            &path,
            format_args!("unknown cache attribute `{name}`; expected one of {KEYS}"),
        );
        return skip_value(&meta);
    };
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format_args!("`{key}` needs a value: {}", example(key))));
    }
    out.seen.push(key);
    let input = meta.value()?;
    match key {
        "namespace" => match input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => set_once(cx, &mut out.namespace, lit, &path),
            other => cx.error_spanned_by(
                other,
                format_args!("expected a string literal: {}", example(key)),
            ),
        },
        "ttl" => {
            let expr: Expr = input.parse()?;
            if let Some(ttl) = integer::<u64>(
                cx,
                &expr,
                key,
                "whole seconds from 1 to 4294967295, e.g. `ttl = 600`",
            ) {
                set_once(cx, &mut out.ttl, ttl, &path);
            }
        }
        "version" => {
            let expr: Expr = input.parse()?;
            if let Some(version) = integer::<u32>(
                cx,
                &expr,
                key,
                "an integer from 0 to 4294967295, e.g. `version = 2`",
            ) {
                set_once(cx, &mut out.version, version, &path);
            }
        }
        "local" => {
            let expr: Expr = input.parse()?;
            let expected = "the most entries kept in process, e.g. `local = 10_000`";
            if let Some(local) = integer::<u64>(cx, &expr, key, expected) {
                set_once(cx, &mut out.local, local, &path);
            }
        }
        "local_ttl" => {
            let expr: Expr = input.parse()?;
            let expected = "whole seconds, at most the cache's `ttl`, e.g. `local_ttl = 30`";
            if let Some(ttl) = integer::<u64>(cx, &expr, key, expected) {
                set_once(cx, &mut out.local_ttl, ttl, &path);
            }
        }
        "hash_tag" => match input.parse::<Expr>()? {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(lit),
                ..
            }) => {
                let flag = Spanned {
                    value: lit.value,
                    span: lit.span(),
                };
                set_once(cx, &mut out.hash_tag, flag, &path);
            }
            other => cx.error_spanned_by(
                other,
                format_args!(
                    "`hash_tag` takes `true` or `false`: {} keeps every key of the cache in one Redis Cluster hash slot",
                    example(key)
                ),
            ),
        },
        "key" | "value" => {
            if input.peek(LitStr) {
                let lit: LitStr = input.parse()?;
                cx.error_spanned_by(
                    &lit,
                    format_args!("expected a type, not a string: `{key} = {}`", lit.value()),
                );
                return Ok(());
            }
            let ty: Type = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format_args!("expected a type after `{key} =`: {}", example(key)),
                )
            })?;
            if let Type::Reference(reference) = &ty {
                cx.error_spanned_by(
                    reference,
                    format_args!(
                        "a cache {key} must be an owned type: use `String` rather than `&str`, `Vec<u8>` rather than `&[u8]`"
                    ),
                );
                return Ok(());
            }
            let slot = if key == "key" {
                &mut out.key
            } else {
                &mut out.value
            };
            set_once(cx, slot, ty, &path);
        }
        "codec" => {
            let choice = if input.peek(LitStr) {
                let lit: LitStr = input.parse()?;
                match lit.value().as_str() {
                    "bincode" => Some(CodecChoice::Builtin("bincode", lit.span())),
                    "json" => Some(CodecChoice::Builtin("json", lit.span())),
                    "string" => Some(CodecChoice::Builtin("string", lit.span())),
                    other => {
                        cx.error_spanned_by(
                            &lit,
                            format_args!(
                                "unknown codec `{other}`; expected \"bincode\", \"json\", \"string\" or the path of a type implementing `cache_manager::Codec`"
                            ),
                        );
                        None
                    }
                }
            } else {
                match input.parse::<Expr>()? {
                    Expr::Path(p) if p.qself.is_none() => Some(CodecChoice::Custom(p.path)),
                    other => {
                        cx.error_spanned_by(
                            other,
                            "expected \"bincode\", \"json\", \"string\" or the path of a type implementing `cache_manager::Codec`",
                        );
                        None
                    }
                }
            };
            if let Some(choice) = choice {
                set_once(cx, &mut out.codec, choice, &path);
            }
        }
        _ => unreachable!("`key` is one of the known keys"),
    }
    Ok(())
}

/// How a key is written, for messages.
pub(crate) fn example(key: &str) -> &'static str {
    match key {
        "namespace" => "`namespace = \"user:profile\"`",
        "ttl" => "`ttl = 600`",
        "version" => "`version = 2`",
        "key" => "`key = i64`",
        "value" => "`value = Uuid`",
        "local" => "`local = 10_000`",
        "local_ttl" => "`local_ttl = 30`",
        "hash_tag" => "`hash_tag = true`",
        _ => "`codec = \"json\"`",
    }
}

/// Consumes `= value` or `(...)` after an unknown key so parsing can go on.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

fn set_once<T>(cx: &Ctxt, slot: &mut Option<T>, value: T, path: &Path) {
    if slot.is_some() {
        let name = path.to_token_stream().to_string();
        cx.error_spanned_by(
            path,
            format_args!("duplicate cache attribute `{name}`; give it once"),
        );
    } else {
        *slot = Some(value);
    }
}

/// Reads an integer literal that fits `T`, reporting what was wrong otherwise.
fn integer<T>(cx: &Ctxt, expr: &Expr, name: &str, expected: &str) -> Option<Spanned<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) if !lit.suffix().is_empty() => {
            cx.error_spanned_by(
                lit,
                format_args!(
                    "`{name}` takes a plain integer without a type suffix; expected {expected}"
                ),
            );
            None
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => match lit.base10_parse::<T>() {
            Ok(value) => Some(Spanned {
                value,
                span: lit.span(),
            }),
            Err(_) => {
                cx.error_spanned_by(
                    lit,
                    format_args!("`{name}` is out of range; expected {expected}"),
                );
                None
            }
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => {
            cx.error_spanned_by(
                expr,
                format_args!("`{name}` cannot be negative; expected {expected}"),
            );
            None
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            cx.error_spanned_by(
                s,
                format_args!("`{name}` takes an integer, not a string; expected {expected}"),
            );
            None
        }
        other => {
            cx.error_spanned_by(
                other,
                format_args!("`{name}` takes an integer literal; expected {expected}"),
            );
            None
        }
    }
}
