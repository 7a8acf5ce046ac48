//! What the attributes need to know of the function they are on, read from its
//! signature alone: that it is `async`, what it returns, and whether it borrows.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Signature, Type};

use super::args::Which;
use crate::ctxt::Ctxt;

/// The return types `#[cached]` supports, with the value type `V` each carries.
pub(crate) enum Returns<'a> {
    /// `Result<Option<V>, E>`: `Ok(None)` is "not found".
    ResultOption(&'a Type),
    /// `Result<V, E>`: cached when `Ok`.
    Result(&'a Type),
    /// `Option<V>`: `None` is "not found".
    Option(&'a Type),
}

/// What the message about an unsupported return type lists.
const SUPPORTED: &str = "`Result<Option<V>, E>` (`Ok(None)`: not found), `Result<V, E>` (cached when `Ok`) or `Option<V>` (`None`: not found), where `V` is the cache's value type";

/// Records an error unless the function is `async`: the cache is read with `.await`.
pub(crate) fn check_async(cx: &Ctxt, which: Which, sig: &Signature) {
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format_args!(
                "`{}` goes on an `async fn`: the cache is called with `.await`; write `async fn {}`",
                which.name(),
                sig.ident
            ),
        );
    }
}

/// The shape of a `#[cached]` function's return type, or an error saying what is
/// supported.
pub(crate) fn returns<'a>(cx: &Ctxt, sig: &'a Signature) -> Option<Returns<'a>> {
    let ReturnType::Type(_, ty) = &sig.output else {
        cx.error_spanned_by(
            &sig.ident,
            format_args!(
                "a `#[cached]` function returns what it caches, as one of {SUPPORTED}; `{}` returns nothing",
                sig.ident
            ),
        );
        return None;
    };
    let shape = match generic_of(ty, "Result") {
        Some(inner) => match generic_of(inner, "Option") {
            Some(value) => Some(Returns::ResultOption(value)),
            None => Some(Returns::Result(inner)),
        },
        None => generic_of(ty, "Option").map(Returns::Option),
    };
    if shape.is_none() {
        cx.error_spanned_by(
            ty,
            format_args!(
                "a `#[cached]` function returns what it caches, as one of {SUPPORTED}; this type is none of them"
            ),
        );
    }
    shape
}

/// `T` of a type written `...::Name<T, ...>`: the last segment decides, so
/// `std::io::Result<T>` and `anyhow::Result<T>` are a `Result` too.
fn generic_of<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let ty = peel(ty);
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(inner) => Some(inner),
        _ => None,
    }
}

/// The type inside invisible groups and parentheses (from macros, or `(T)`).
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel(&group.elem),
        Type::Paren(paren) => peel(&paren.elem),
        _ => ty,
    }
}

/// The first argument whose type borrows (a reference or a lifetime anywhere in it,
/// `&self` included): a body using it cannot outlive the call.
pub(crate) fn first_borrowed(sig: &Signature) -> Option<&FnArg> {
    sig.inputs.iter().find(|arg| {
        let ty = match arg {
            FnArg::Receiver(receiver) => &receiver.ty,
            FnArg::Typed(typed) => &typed.ty,
        };
        borrows(ty.to_token_stream())
    })
}

/// Whether the tokens of a type hold a `&` or a lifetime.
fn borrows(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Punct(punct) => matches!(punct.as_char(), '&' | '\''),
        TokenTree::Group(group) => borrows(group.stream()),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(src: &str) -> Signature {
        syn::parse_str::<syn::ItemFn>(&format!("{src} {{}}"))
            .unwrap()
            .sig
    }

    fn shape(src: &str) -> Option<&'static str> {
        let cx = Ctxt::default();
        let sig = Box::leak(Box::new(sig(src)));
        let shape = returns(&cx, sig).map(|shape| match shape {
            Returns::ResultOption(_) => "result-option",
            Returns::Result(_) => "result",
            Returns::Option(_) => "option",
        });
        assert_eq!(cx.check().is_ok(), shape.is_some(), "{src}");
        shape
    }

    #[test]
    fn return_shapes_are_told_by_their_last_segment() {
        let cases = [
            (
                "async fn f() -> Result<Option<User>, DbError>",
                Some("result-option"),
            ),
            (
                "async fn f() -> anyhow::Result<Option<User>>",
                Some("result-option"),
            ),
            ("async fn f() -> Result<User, DbError>", Some("result")),
            (
                "async fn f() -> std::io::Result<core::option::Option<User>>",
                Some("result-option"),
            ),
            ("async fn f() -> Option<User>", Some("option")),
            ("async fn f() -> User", None),
            ("async fn f() -> Vec<User>", None),
            ("async fn f()", None),
            ("async fn f() -> Result", None),
        ];
        for (src, expected) in cases {
            assert_eq!(shape(src), expected, "{src}");
        }
    }

    #[test]
    fn borrowed_arguments_are_references_lifetimes_and_ref_self() {
        let borrowed =
            |src: &str| first_borrowed(&sig(src)).map(|arg| arg.to_token_stream().to_string());
        assert_eq!(borrowed("async fn f(id: i64, db: Arc<Db>)"), None);
        assert_eq!(borrowed("async fn f(self: Arc<Self>, id: i64)"), None);
        assert_eq!(borrowed("async fn f(self, id: i64)"), None);
        assert_eq!(
            borrowed("async fn f(id: i64, db: &Db)").as_deref(),
            Some("db : & Db")
        );
        assert_eq!(
            borrowed("async fn f(&self, id: i64)").as_deref(),
            Some("& self")
        );
        assert_eq!(
            borrowed("async fn f(rows: Rows<'_>)").as_deref(),
            Some("rows : Rows < '_ >")
        );
        assert_eq!(
            borrowed("async fn f(ids: Vec<&str>)").as_deref(),
            Some("ids : Vec < & str >")
        );
    }
}
