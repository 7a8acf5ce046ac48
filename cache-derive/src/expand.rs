//! Code generation for `#[derive(Cache)]`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{DeriveInput, Ident};

use crate::ast::Input;
use crate::attr::{CodecChoice, SingleFlightChoice};
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
    // A soft timeout or a refresh ahead answers before its load ends, so the load must be
    // able to outlive its caller.
    let loads = if decl.load_timeout_ms.is_some() || decl.refresh_ahead.is_some() {
        quote!(#private::Background)
    } else {
        quote!(#private::Inline)
    };
    let settings = settings(decl, &private);
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
            type Loads = #loads;
            #local
            const NAMESPACE: &'static str = #namespace;
            const TTL: #private::Duration = #private::Duration::from_secs(#ttl);
            const VERSION: u32 = #version;
            const FINGERPRINT: u32 = #fingerprint;
            const HASH_TAG: bool = #hash_tag;
            #settings
        }
    }
}

/// The consts of the read-through and storage keys that were given; the trait's defaults
/// (all off) stand for the others. Numbers are unsuffixed so each takes its const's type.
fn settings(decl: &Decl<'_>, private: &TokenStream) -> TokenStream {
    let duration = quote!(#private::Duration);
    let mut out = TokenStream::new();
    if let Some(secs) = decl.fail_safe.map(Literal::u64_unsuffixed) {
        out.extend(quote! { const FAIL_SAFE: #duration = #duration::from_secs(#secs); });
    }
    if let Some(ms) = decl.load_timeout_ms.map(Literal::u64_unsuffixed) {
        out.extend(quote! {
            const LOAD_TIMEOUT: ::core::option::Option<#duration> =
                ::core::option::Option::Some(#duration::from_millis(#ms));
        });
    }
    if let Some(percent) = decl.refresh_ahead.map(Literal::u64_unsuffixed) {
        out.extend(quote! { const REFRESH_AHEAD: u8 = #percent; });
    }
    if let Some(secs) = decl.negative_ttl.map(Literal::u64_unsuffixed) {
        out.extend(quote! { const NEGATIVE_TTL: #duration = #duration::from_secs(#secs); });
    }
    if let Some(secs) = decl.ttl_jitter.map(Literal::u64_unsuffixed) {
        out.extend(quote! { const TTL_JITTER: #duration = #duration::from_secs(#secs); });
    }
    if let Some(choice) = decl.single_flight {
        let variant = match choice {
            SingleFlightChoice::Local => quote!(Local),
            SingleFlightChoice::Global => quote!(Global),
        };
        out.extend(quote! {
            const SINGLE_FLIGHT: #private::SingleFlight = #private::SingleFlight::#variant;
        });
    }
    if let Some(compress) = decl.compress {
        out.extend(quote! { const COMPRESS: bool = #compress; });
    }
    if let Some(bytes) = decl.max_bytes.map(Literal::u64_unsuffixed) {
        out.extend(quote! {
            const MAX_BYTES: ::core::option::Option<usize> = ::core::option::Option::Some(#bytes);
        });
    }
    out
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

#[cfg(test)]
mod tests {
    use super::derive;

    /// The expansion of `#[cache(<keys>)]` on a unit struct mapping `i64` to `String`.
    fn expand(keys: &str) -> String {
        let src = format!(
            "#[cache(namespace = \"user\", key = i64, value = String, {keys})] struct UserCache;"
        );
        derive(&syn::parse_str(&src).unwrap()).to_string()
    }

    /// Only a soft timeout and a refresh ahead answer before their load ends, so only they
    /// ask loaders to be `Send + 'static`; every other cache keeps borrowing loaders.
    #[test]
    fn loads_run_in_the_background_only_when_they_outlive_the_caller() {
        for keys in [
            "fail_safe = 60, load_timeout_ms = 100",
            "refresh_ahead = 80",
        ] {
            let out = expand(keys);
            assert!(!out.contains("compile_error"), "{keys}: {out}");
            assert!(
                out.contains("Background") && !out.contains("Inline"),
                "{keys}"
            );
        }
        for keys in [
            "fail_safe = 60",
            "negative_ttl = 30, ttl_jitter = 5, single_flight = \"global\"",
            "compress = true, max_bytes = 1024",
        ] {
            let out = expand(keys);
            assert!(!out.contains("compile_error"), "{keys}: {out}");
            assert!(
                out.contains("Inline") && !out.contains("Background"),
                "{keys}"
            );
        }
    }
}
