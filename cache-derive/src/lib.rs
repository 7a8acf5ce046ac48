//! `#[derive(Cache)]`, `#[cached]` and `#[invalidates]`, re-exported by the `cache-manager`
//! crate; see its documentation.
#![deny(missing_docs)]

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod fingerprint;
mod function;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Declares a cache from a `#[cache(...)]` attribute; see `cache_manager` for the keys.
#[proc_macro_derive(Cache, attributes(cache))]
pub fn derive_cache(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}

/// Caches an `async fn`: its body becomes the loader of `get_or_load`; see
/// `cache_manager::cached`.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    function::expand(function::Which::Cached, args.into(), item.into()).into()
}

/// Invalidates a cache's keys after an `async fn` succeeded; see
/// `cache_manager::invalidates`.
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    function::expand(function::Which::Invalidates, args.into(), item.into()).into()
}
