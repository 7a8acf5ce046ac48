//! `#[derive(Cache)]`, re-exported by the `cache-manager` crate; see its documentation.
#![deny(missing_docs)]

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod fingerprint;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Declares a cache from a `#[cache(...)]` attribute; see `cache_manager` for the keys.
#[proc_macro_derive(Cache, attributes(cache))]
pub fn derive_cache(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
