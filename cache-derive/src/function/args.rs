//! Parses the arguments of `#[cached(...)]` and `#[invalidates(...)]`: expressions, kept
//! as written so generated code can point errors at them.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, Path};

use crate::attr::skip_value;
use crate::ctxt::Ctxt;

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// `#[cached]`: the body is the loader of `get_or_load`.
    Cached,
    /// `#[invalidates]`: the keys are invalidated after a successful body.
    Invalidates,
}

impl Which {
    /// The attribute as users write it, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Cached => "#[cached]",
            Which::Invalidates => "#[invalidates]",
        }
    }

    /// The arguments it accepts, for "expected" messages.
    fn expected(self) -> &'static str {
        match self {
            Which::Cached => {
                "`cache = ...` (the cache handle) or `key = ...` (the key, an expression over the arguments)"
            }
            Which::Invalidates => {
                "`cache = ...` (the cache handle), `key = ...` (one key) or `keys = ...` (an iterator of keys)"
            }
        }
    }
}

/// What the attribute said; each expression as written.
pub(crate) struct Args {
    /// `cache = EXPR`: an expression yielding the cache handle.
    pub cache: Option<Expr>,
    /// `key = EXPR`: the key, an expression over the arguments.
    pub key: Option<Expr>,
    /// `keys = EXPR` (`#[invalidates]` only): an iterator of keys.
    pub keys: Option<Expr>,
}

/// Reads the arguments, recording every mistake in `cx`.
pub(crate) fn parse(cx: &Ctxt, which: Which, tokens: TokenStream) -> Args {
    let mut args = Args {
        cache: None,
        key: None,
        keys: None,
    };
    let parser = syn::meta::parser(|meta| parse_one(cx, which, &mut args, meta));
    let complete = match parser.parse2(tokens) {
        Ok(()) => true,
        Err(error) => {
            cx.syn_error(error);
            false
        }
    };
    // What is missing is only known when the arguments parsed to their end.
    if complete {
        check_complete(cx, which, &args);
    }
    args
}

/// Reads one `name = EXPR`.
fn parse_one(
    cx: &Ctxt,
    which: Which,
    args: &mut Args,
    meta: ParseNestedMeta<'_>,
) -> syn::Result<()> {
    let name = meta.path.to_token_stream().to_string().replace(' ', "");
    let slot = match (name.as_str(), which) {
        ("cache", _) => &mut args.cache,
        ("key", _) => &mut args.key,
        ("keys", Which::Invalidates) => &mut args.keys,
        ("keys", Which::Cached) => {
            cx.error_spanned_by(
                &meta.path,
                "`#[cached]` reads one key: `key = ...`; `keys = ...` is for `#[invalidates]`",
            );
            return skip_value(&meta);
        }
        _ => {
            cx.error_spanned_by(
                &meta.path,
                format_args!(
                    "unknown `{}` argument `{name}`; expected {}",
                    which.name(),
                    which.expected()
                ),
            );
            return skip_value(&meta);
        }
    };
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format_args!("`{name}` needs a value: `{}`", example(&name))));
    }
    let expr: Expr = meta.value()?.parse()?;
    if slot.is_some() {
        duplicate(cx, &meta.path, &name);
    } else {
        *slot = Some(expr);
    }
    Ok(())
}

/// Every argument with a typical value, for messages.
fn example(name: &str) -> &'static str {
    match name {
        "cache" => "cache = CacheManager::global().profiles()",
        "key" => "key = user_id",
        _ => "keys = users.iter().map(|user| user.id)",
    }
}

fn duplicate(cx: &Ctxt, path: &Path, name: &str) {
    cx.error_spanned_by(path, format_args!("duplicate `{name}`; give it once"));
}

/// What every use needs: a cache, and exactly one of `key` and `keys`.
fn check_complete(cx: &Ctxt, which: Which, args: &Args) {
    let mut missing = Vec::new();
    if args.cache.is_none() {
        missing.push(format!(
            "`{}` (the cache handle, any expression yielding `&TypedCache<C>`)",
            example("cache")
        ));
    }
    if args.key.is_none() && args.keys.is_none() {
        missing.push(match which {
            Which::Cached => format!(
                "`{}` (the key, an expression over the arguments)",
                example("key")
            ),
            Which::Invalidates => format!(
                "`{}` (the key to invalidate) or `{}` (an iterator of keys)",
                example("key"),
                example("keys")
            ),
        });
    }
    if !missing.is_empty() {
        cx.error_at(
            proc_macro2::Span::call_site(),
            format_args!("`{}` needs {}", which.name(), missing.join(" and ")),
        );
    }
    if let (Some(_), Some(keys)) = (&args.key, &args.keys) {
        cx.error_spanned_by(
            keys,
            "give either `key = ...` (one key) or `keys = ...` (an iterator of keys), not both",
        );
    }
}
