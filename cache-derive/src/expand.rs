//! Code generation for `#[derive(Cache)]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{DeriveInput, Ident, Type};

use crate::ast::{Input, Shape};
use crate::attr::CodecChoice;
use crate::ctxt::Ctxt;
use crate::fingerprint;
use crate::valid::{self, Decl};

pub(crate) fn derive(item: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let input = Input::from_syn(&cx, item);
    let decl = valid::check(&cx, &input);
    match (cx.check(), decl) {
        (Ok(()), Some(decl)) => generate(&input, &decl),
        (Err(errors), _) => {
            let errors = errors.into_compile_error();
            let fallback = fallback(&input);
            quote! { #errors #fallback }
        }
        (Ok(()), None) => unreachable!("a declaration without errors is complete"),
    }
}

/// The type that implements `Cache`: the unit struct itself (form A), or the generated
/// `<Name>Cache` (form B).
fn cache_type(input: &Input<'_>) -> Ident {
    if input.is_value_type() {
        format_ident!("{}Cache", input.item.ident)
    } else {
        input.item.ident.clone()
    }
}

/// For form B, declares the `<Name>Cache` marker: an uninhabited enum, so the only way to
/// use the cache is through a registry.
fn marker(input: &Input<'_>, cache: &Ident) -> TokenStream {
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

fn generate(input: &Input<'_>, decl: &Decl<'_>) -> TokenStream {
    let private = quote!(::cache_manager::__private);
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
            let level = quote_spanned!(span=> ::cache_manager::__private::Moka<#value>);
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
        impl #private::Cache for #cache {
            type Key = #key;
            type Value = #value;
            type Codec = #codec;
            #local
            const NAMESPACE: &'static str = #namespace;
            const TTL: #private::Duration = #private::Duration::from_secs(#ttl);
            const VERSION: u32 = #version;
            const FINGERPRINT: u32 = #fingerprint;
            const HASH_TAG: bool = #hash_tag;
        }
    }
}

fn builtin_codec(name: &str, span: Span) -> TokenStream {
    let codec = match name {
        "json" => "Json",
        "string" => "Text",
        _ => "Bincode",
    };
    let codec = Ident::new(codec, span);
    quote_spanned!(span=> ::cache_manager::__private::codec::#codec)
}

/// Emitted next to the errors: enough of the declaration that the registry and the code
/// using the cache do not add follow-on errors of their own.
fn fallback(input: &Input<'_>) -> TokenStream {
    if matches!(input.shape, Shape::Union) || !input.item.generics.params.is_empty() {
        return TokenStream::new();
    }
    let private = quote!(::cache_manager::__private);
    let cache = cache_type(input);
    let marker = marker(input, &cache);
    let unconfigured = quote!(#private::Unconfigured);
    let key = type_or(input.attrs.key.as_ref(), &unconfigured);
    let value = if input.is_value_type() {
        let ident = &input.item.ident;
        quote!(#ident)
    } else {
        type_or(input.attrs.value.as_ref(), &unconfigured)
    };
    quote! {
        #marker

        #[automatically_derived]
        impl #private::Cache for #cache {
            type Key = #key;
            type Value = #value;
            type Codec = #unconfigured;
            type Local = #private::NoLocal;
            const NAMESPACE: &'static str = "";
            const TTL: #private::Duration = #private::Duration::from_secs(600);
            const VERSION: u32 = 0;
            const FINGERPRINT: u32 = 0;
        }
    }
}

fn type_or(ty: Option<&Type>, default: &TokenStream) -> TokenStream {
    match ty {
        Some(ty) => quote!(#ty),
        None => default.clone(),
    }
}
