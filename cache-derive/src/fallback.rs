//! What a declaration with errors expands to besides the errors, as thiserror does.

use proc_macro2::{Span, TokenStream};
use quote::quote;

use crate::ast::{Input, Shape};
use crate::expand::{cache_type, marker, private_path};

/// The errors, next to enough of the declaration that the registry and the code using the
/// cache do not add follow-on errors of their own.
pub(crate) fn expand(input: &Input<'_>, errors: syn::Error) -> TokenStream {
    // A union cannot be a cache, and a generic item has no one type to implement `Cache`
    // for: a stand-in would only bring errors of its own.
    if matches!(input.shape, Shape::Union) || !input.item.generics.params.is_empty() {
        return errors.into_compile_error();
    }
    let private = private_path(Span::call_site());
    let cache = cache_type(input);
    let marker = marker(input, &cache);
    let unconfigured = quote!(#private::Unconfigured);
    let value_type = input.is_value_type();
    let key_missing = input.attrs.key.is_none();
    let value_missing = !value_type && input.attrs.value.is_none();
    // A key or value type that was not given (or did not parse) must accept whatever the
    // code using the cache passes, or every call would add an error of its own. The one
    // type that does is an erroneous one: the first error is reported from inside it,
    // as the length of an array, and the type checker then stays silent about it.
    let mut errors = errors.into_iter();
    let mut erroneous = None;
    if key_missing || value_missing {
        erroneous = errors.next().map(|first| {
            let first = first.into_compile_error();
            quote!([::core::primitive::u8; #first])
        });
    }
    let rest: TokenStream = errors.map(syn::Error::into_compile_error).collect();
    let key = match (&input.attrs.key, &erroneous) {
        (Some(ty), _) => quote!(#ty),
        (None, Some(erroneous)) => erroneous.clone(),
        (None, None) => unconfigured.clone(),
    };
    let value = if value_type {
        let ident = &input.item.ident;
        quote!(#ident)
    } else {
        match (&input.attrs.value, &erroneous) {
            (Some(ty), _) => quote!(#ty),
            // The key already carries the error: an array of it is erroneous too.
            (None, Some(_)) if key_missing => {
                quote!([<Self as #private::Cache>::Key; 0])
            }
            (None, Some(erroneous)) => erroneous.clone(),
            (None, None) => unconfigured.clone(),
        }
    };
    quote! {
        #rest

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
