//! What a declaration with errors expands to besides the errors, as thiserror does.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::Type;

use crate::ast::{Input, Shape};
use crate::expand::{cache_type, marker, private_path};

/// The errors, next to enough of the declaration that the registry and the code using the
/// cache do not add follow-on errors of their own.
pub(crate) fn expand(input: &Input<'_>, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    // A union cannot be a cache, and a generic item has no one type to implement `Cache`
    // for: a stand-in would only bring errors of its own.
    if matches!(input.shape, Shape::Union) || !input.item.generics.params.is_empty() {
        return errors;
    }
    let private = private_path(Span::call_site());
    let cache = cache_type(input);
    let marker = marker(input, &cache);
    // A key, value or codec that was not given or did not parse becomes `Unconfigured`,
    // which meets the bounds of `Cache`, so this impl adds no error of its own.
    let unconfigured = quote!(#private::Unconfigured);
    let key = type_or(input.attrs.key.as_ref(), &unconfigured);
    let value = if input.is_value_type() {
        let ident = &input.item.ident;
        quote!(#ident)
    } else {
        type_or(input.attrs.value.as_ref(), &unconfigured)
    };
    quote! {
        #errors

        #marker

        #[automatically_derived]
        impl #private::Declared for #cache {}

        #[automatically_derived]
        impl #private::Cache for #cache {
            type Key = #key;
            type Value = #value;
            type Codec = #unconfigured;
            type Local = #private::NoLocal;
            type Loads = #private::Inline;
            const NAMESPACE: &'static str = "";
            const TTL: #private::Duration = #private::Duration::from_secs(600);
            const VERSION: u32 = 0;
            const FINGERPRINT: u32 = 0;
        }
    }
}

/// The type the user wrote, or `default` where there was none.
fn type_or(ty: Option<&Type>, default: &TokenStream) -> TokenStream {
    match ty {
        Some(ty) => quote!(#ty),
        None => default.clone(),
    }
}
