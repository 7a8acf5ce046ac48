//! Code generation for `#[cached]` and `#[invalidates]`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{ItemFn, ReturnType, Type};

use super::args::{self, Args, Which};
use super::sig::{self, Returns};
use crate::ctxt::Ctxt;
use crate::expand::private_path;

/// The expansion of `which(args)` on `item`: the function with its new body, or the
/// errors next to the function as written, so its callers add no errors of their own.
pub(crate) fn expand(which: Which, args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    let args = args::parse(&cx, which, args);
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            cx.error_at(
                Span::call_site(),
                format_args!("`{}` goes on an `async fn` with a body", which.name()),
            );
            return fallback(cx, item);
        }
    };
    sig::check_async(&cx, which, &func.sig);
    let returns = match which {
        Which::Cached => sig::returns(&cx, &func.sig),
        Which::Invalidates => None,
    };
    if cx.has_errors() {
        return fallback(cx, item);
    }
    let (Some(cache), Some(key_or_keys)) = (&args.cache, Key::of(&args)) else {
        unreachable!("arguments without errors name a cache and a key")
    };
    let body = match (which, returns) {
        (Which::Cached, Some(returns)) => cached(&func, cache, &key_or_keys, &returns),
        (Which::Invalidates, _) => invalidates(&func, cache, &key_or_keys),
        (Which::Cached, None) => unreachable!("a return type without errors has a shape"),
    };
    let ItemFn {
        attrs, vis, sig, ..
    } = &func;
    quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }
    }
}

/// The errors, and the function as written.
fn fallback(cx: Ctxt, item: TokenStream) -> TokenStream {
    let errors = cx
        .check()
        .err()
        .map(syn::Error::into_compile_error)
        .unwrap_or_default();
    quote!(#errors #item)
}

/// `key = ...` or `keys = ...`.
enum Key<'a> {
    One(&'a syn::Expr),
    Many(&'a syn::Expr),
}

impl<'a> Key<'a> {
    fn of(args: &'a Args) -> Option<Self> {
        match (&args.key, &args.keys) {
            (Some(key), _) => Some(Key::One(key)),
            (None, Some(keys)) => Some(Key::Many(keys)),
            (None, None) => None,
        }
    }
}

/// A local of the generated code, invisible to the user's tokens.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// A [`local`] whose errors are reported at `span`, where the user wrote what it holds.
fn local_at(name: &str, span: Span) -> Ident {
    Ident::new(name, Span::mixed_site().located_at(span))
}

/// `local` as it appears at `span`: the same variable, with errors about it reported
/// at what the user wrote there.
fn at(local: &Ident, span: Span) -> TokenStream {
    let mut moved = local.clone();
    moved.set_span(local.span().located_at(span));
    moved.into_token_stream()
}

/// The handle `cache = ...` names, bound to `cache`; an expression that is not a cache
/// handle is reported at it.
fn bind_cache(expr: &syn::Expr, cache: &Ident) -> TokenStream {
    // Located at the expression, so a type error about it is reported there.
    let named = local_at("__named_cache", expr.span());
    let handle = spanned_call(expr.span(), "handle", quote!(#named));
    quote! {
        // Bound first, so a temporary handle lives as long as the call.
        let #named = &(#expr);
        let #cache = #handle;
    }
}

/// The key or keys, copied out before the body runs, bound to `key`; a key of another
/// type than the cache's is a type error at the expression.
fn bind_key(key: &Key<'_>, cache: &Ident, bound: &Ident) -> TokenStream {
    match key {
        Key::One(expr) => {
            let key_of = spanned_call(expr.span(), "key", at(cache, expr.span()));
            let read = quote_spanned!(expr.span()=> (#key_of)(&(#expr)));
            quote! { let #bound = #read; }
        }
        Key::Many(expr) => {
            let cache = at(cache, expr.span());
            let read = spanned_call(expr.span(), "keys", quote!(#cache, #expr));
            quote! { let #bound = #read; }
        }
    }
}

/// `cache_manager::__private::cached::<function>(<args>)`, every token at `span`, so
/// an error of the call is reported at what the user wrote there.
fn spanned_call(span: Span, function: &str, args: TokenStream) -> TokenStream {
    let private = private_path(span);
    let function = Ident::new(function, span);
    quote_spanned!(span=> #private::cached::#function(#args))
}

/// The body as an `async` block whose output is the function's return type, so `?` and
/// `return` inside it mean what they meant in the function (tracing's `#[instrument]`
/// types its block the same way).
fn typed_body(func: &ItemFn, moves: bool) -> TokenStream {
    let output = match &func.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    let stmts = &func.block.stmts;
    let fake = local("__returns");
    let move_token = moves.then(|| quote!(move));
    quote! {
        async #move_token {
            #[allow(
                unknown_lints,
                unreachable_code,
                clippy::diverging_sub_expression,
                clippy::empty_loop,
                clippy::let_unit_value,
                clippy::needless_return
            )]
            if false {
                let #fake: #output = loop {};
                return #fake;
            }
            #(#stmts)*
        }
    }
}

/// The body of a `#[cached]` function: the original body is the loader of
/// `get_or_load`.
fn cached(
    func: &ItemFn,
    cache_expr: &syn::Expr,
    key: &Key<'_>,
    returns: &Returns<'_>,
) -> TokenStream {
    let private = private_path(Span::call_site());
    let cache = local("__cache");
    let key_local = local("__key");
    let bind_cache = bind_cache(cache_expr, &cache);
    let bind_key = bind_key(key, &cache, &key_local);

    // A body that borrows an argument runs in the caller, and can only serve a cache
    // whose loads do; any other body owns what it uses (`move`), so it may also run on
    // a task of its own.
    let borrowed = sig::first_borrowed(&func.sig);
    let moves = borrowed.is_none();
    let may_borrow = borrowed.map(|arg| {
        let mode = quote_spanned!(arg.span()=> ::core::marker::PhantomData);
        let check = spanned_call(arg.span(), "may_borrow", quote!(#cache, #mode));
        quote!(#check;)
    });
    let value: &Type = match returns {
        Returns::ResultOption(value) | Returns::Result(value) | Returns::Option(value) => value,
    };
    let cache_at_value = at(&cache, value.span());
    let holds = spanned_call(
        value.span(),
        "holds",
        quote_spanned!(value.span()=> #cache_at_value, ::core::marker::PhantomData::<#value>),
    );
    let holds = quote!(#holds;);

    let move_token = moves.then(|| quote!(move));
    let body = typed_body(func, moves);
    let read = match returns {
        Returns::ResultOption(_) => quote! {
            #cache.get_or_load(&#key_local, #move_token || #body).await
        },
        Returns::Option(_) => quote! {
            #private::cached::optional(
                #cache
                    .get_or_load(&#key_local, #move_token || #private::cached::infallible(#body))
                    .await,
            )
        },
        Returns::Result(_) => {
            let slot = local("__body");
            let answer = local("__answer");
            quote! {
                // Kept out of the loader until it is called: if the cache answers an
                // absence instead, the function still owes a value and runs the body.
                let mut #slot = ::core::option::Option::Some(#move_token || #body);
                let #answer = #cache
                    .get_or_load(&#key_local, || {
                        #private::cached::present((#private::cached::take(&mut #slot))())
                    })
                    .await;
                #private::cached::value(#answer, #slot).await
            }
        }
    };
    quote! {
        #bind_cache
        #may_borrow
        #holds
        #bind_key
        #read
    }
}

/// The body of an `#[invalidates]` function: the original body, then the invalidation
/// if it succeeded.
fn invalidates(func: &ItemFn, cache_expr: &syn::Expr, key: &Key<'_>) -> TokenStream {
    let private = private_path(Span::call_site());
    let cache = local("__cache");
    let key_local = local("__key");
    // Located at the return type, so a type that cannot tell success is reported there.
    let outcome = match &func.sig.output {
        ReturnType::Default => local("__outcome"),
        ReturnType::Type(_, ty) => local_at("__outcome", ty.span()),
    };
    let bind_cache = bind_cache(cache_expr, &cache);
    let bind_key = bind_key(key, &cache, &key_local);
    let body = typed_body(func, false);
    let succeeded = match &func.sig.output {
        ReturnType::Default => quote!(#private::cached::succeeded(&#outcome)),
        ReturnType::Type(_, ty) => spanned_call(
            ty.span(),
            "succeeded",
            quote_spanned!(ty.span()=> &#outcome),
        ),
    };
    let invalidate = match key {
        Key::One(_) => quote! {
            let _ = #cache.invalidate(&#key_local).await;
        },
        Key::Many(_) => quote! {
            #private::cached::invalidate_all(#cache, &#key_local).await;
        },
    };
    quote! {
        #bind_cache
        #bind_key
        let #outcome = #body.await;
        if #succeeded {
            #invalidate
        }
        #outcome
    }
}
