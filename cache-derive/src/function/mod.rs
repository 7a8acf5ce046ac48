//! `#[cached]` and `#[invalidates]`: attributes on an `async fn` that read through, or
//! invalidate, a cache named by an expression.
//!
//! `args.rs` parses the attribute, `sig.rs` reads the function's signature, and
//! `expand.rs` writes the new body. The types involved (which cache, its key and value
//! types, how its loads run) are not visible to a macro: the generated code asks them of
//! `cache_manager::__private::cached`, whose bounds carry the messages.

mod args;
mod expand;
mod sig;

pub(crate) use args::Which;
pub(crate) use expand::expand;
