//! Code generation for `#[derive(Cache)]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{DeriveInput, Ident};

use crate::ast::Input;
use crate::attr::CodecChoice;
use crate::ctxt::Ctxt;
use crate::valid::{self, Decl};
use crate::{fallback, fingerprint};

/// The whole expansion: the declaration's impl, or its errors with a stand-in impl.
pub(crate) fn derive(item: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let input = Input::from_syn(&cx, item);
    let decl = valid::check(&cx, &input);
    match (cx.check(), decl) {
        (Ok(()), Some(decl)) => generate(&input, &decl),
        (Err(errors), _) => fallback::expand(&input, errors),
        (Ok(()), None) => unreachable!("a declaration without errors is complete"),
    }
}

/// `::cache_manager::__private`, the hidden module generated code names everything
/// through. It is spelled here only, so moving the module is a one-line change. Its tokens
/// carry `span`, so an unmet bound on a path built from it can point at the attribute
/// that chose that path; `Span::call_site()` where nothing did.
pub(crate) fn private_path(span: Span) -> TokenStream {
    quote_spanned!(span=> ::cache_manager::__private)
}

/// The type that implements `Cache`: the unit struct itself (form A), or the generated
/// `<Name>Cache` (form B).
pub(crate) fn cache_type(input: &Input<'_>) -> Ident {
    if input.is_value_type() {
        format_ident!("{}Cache", input.item.ident)
    } else {
        input.item.ident.clone()
    }
}

/// For form B, declares the `<Name>Cache` marker: an uninhabited enum, so the only way to
/// use the cache is through a registry.
pub(crate) fn marker(input: &Input<'_>, cache: &Ident) -> TokenStream {
    if !input.is_value_type() {
        return TokenStream::new();
    }
    let vis = &input.item.vis;
    let value = &input.item.ident;
    let doc = format!(
        "The cache of [`{value}`] values declared by its `#[cache(...)]` attribute. Register it in `cache_registry!` to use it."
    );
    quote! {
        #[doc = #doc]
        #vis enum #cache {}
    }
}

/// The `Cache` impl of a declaration that passed every check.
fn generate(input: &Input<'_>, decl: &Decl<'_>) -> TokenStream {
    let private = private_path(Span::call_site());
    let cache = cache_type(input);
    let marker = marker(input, &cache);
    let item = input.item;

    let (value, definition): (TokenStream, u64) = match decl.value {
        Some(ty) => (quote!(#ty), fingerprint::of_type(ty)),
        None => {
            let ident = &item.ident;
            (quote!(#ident), fingerprint::of_item(item))
        }
    };
    let fingerprint = fingerprint::finish(definition, decl.version);
    let key = decl.key;
    // The codec path carries the span of what the user wrote, so an unmet codec bound
    // (a value without `Serialize`, say) points at it rather than at the derive.
    let codec = match decl.codec {
        Some(CodecChoice::Custom(path)) => quote!(#path),
        Some(CodecChoice::Builtin(name, span)) => builtin_codec(name, *span),
        None => {
            let span = match decl.value {
                Some(ty) => ty.span(),
                None => item.ident.span(),
            };
            builtin_codec("bincode", span)
        }
    };
    let local = match decl.local {
        None => quote! { type Local = #private::NoLocal; },
        Some((capacity, ttl, span)) => {
            // Spanned at `local = N`, so a value that is not `Clone` is reported there.
            let private_at_local = private_path(span);
            let level = quote_spanned!(span=> #private_at_local::Moka<#value>);
            quote! {
                type Local = #level;
                const LOCAL_CAPACITY: u64 = #capacity;
                const LOCAL_TTL: #private::Duration = #private::Duration::from_secs(#ttl);
            }
        }
    };
    let namespace = decl.namespace;
    let ttl = decl.ttl;
    let version = decl.version;
    let hash_tag = decl.hash_tag;

    quote! {
        #marker

        #[automatically_derived]
        impl #private::Declared for #cache {}

        #[automatically_derived]
        impl #private::Cache for #cache {
            type Key = #key;
            type Value = #value;
            type Codec = #codec;
            type Loads = #private::Inline;
            #local
            const NAMESPACE: &'static str = #namespace;
            const TTL: #private::Duration = #private::Duration::from_secs(#ttl);
            const VERSION: u32 = #version;
            const FINGERPRINT: u32 = #fingerprint;
            const HASH_TAG: bool = #hash_tag;
        }
    }
}

/// The type of the built-in codec `name`, spanned at `span` so an unmet bound points there.
fn builtin_codec(name: &str, span: Span) -> TokenStream {
    let codec = match name {
        "json" => "Json",
        "string" => "Text",
        _ => "Bincode",
    };
    let codec = Ident::new(codec, span);
    let private = private_path(span);
    quote_spanned!(span=> #private::codec::#codec)
}
