//! What `#[cached]` and `#[invalidates]` expand to: the glue between a function's body
//! and its cache, and the checks whose failures users read.
//!
//! The attributes cannot see types: `cache = ...` is any expression, so which cache it
//! names, its key and value types and how its loads run are known only here, through
//! the handle's type. Each check is a trait bound with a message of its own
//! (`#[diagnostic::on_unimplemented]`), or a plain function argument whose mismatch is
//! an ordinary type error at the user's expression.

use std::borrow::Borrow;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;

use crate::cache::{Cache, MAX_BATCH};
use crate::handle::TypedCache;
use crate::loads::Inline;

/// What `cache = ...` may name: a cache handle, or a reference to one.
#[diagnostic::on_unimplemented(
    message = "`cache = ...` must name a cache handle, `&TypedCache<C>`; this is `{Self}`",
    label = "not a cache handle",
    note = "name one cache of the registry, e.g. `cache = CacheManager::global().profiles()`"
)]
pub trait Handle {
    /// The cache declaration the handle reads.
    type Cache: Cache;
    /// The handle itself.
    fn typed(&self) -> &TypedCache<Self::Cache>;
}

impl<C: Cache> Handle for TypedCache<C> {
    type Cache = C;
    fn typed(&self) -> &TypedCache<C> {
        self
    }
}

impl<H: Handle + ?Sized> Handle for &H {
    type Cache = H::Cache;
    fn typed(&self) -> &TypedCache<H::Cache> {
        (**self).typed()
    }
}

/// The handle `cache = ...` named.
pub fn handle<H: Handle + ?Sized>(handle: &H) -> &TypedCache<H::Cache> {
    handle.typed()
}

/// A key of `cache`: its type is checked against the cache's key type where the
/// returned function is called (an ordinary mismatch, at the user's expression), and
/// it is copied out, so the body may consume the arguments the key was made of.
pub fn key<C: Cache>(_: &TypedCache<C>) -> fn(&C::Key) -> C::Key {
    C::Key::clone
}

/// The keys of `keys = ...`, collected before the body runs, for the same reason.
pub fn keys<C, I>(_: &TypedCache<C>, keys: I) -> Vec<C::Key>
where
    C: Cache,
    I: IntoIterator,
    I::Item: Borrow<C::Key>,
{
    keys.into_iter().map(|key| key.borrow().clone()).collect()
}

/// Implemented by the load modes whose loaders may borrow from their caller: only
/// [`Inline`]. A `#[cached]` function with a borrowed argument asks it of its cache.
#[diagnostic::on_unimplemented(
    message = "this cache runs loads in the background (`load_timeout_ms` or `refresh_ahead`), so the body of a `#[cached]` function cannot borrow its arguments",
    label = "borrowed, but a background load may outlive this call",
    note = "take owned arguments the body can keep, e.g. `db: Arc<Db>` instead of `db: &Db`, and a method `self: Arc<Self>` instead of `&self`",
    note = "or drop `load_timeout_ms` and `refresh_ahead` from the cache's declaration to run loads in the caller"
)]
pub trait MayBorrow {}

impl MayBorrow for Inline {}

/// Checks that `cache`'s loads run in the caller, so a body may borrow. The mode is a
/// parameter of its own, built where the borrowed argument is written, so an error is
/// reported there.
pub fn may_borrow<C, L>(_: &TypedCache<C>, _: PhantomData<L>)
where
    C: Cache<Loads = L>,
    L: MayBorrow,
{
}

/// Implemented by every type for itself only: `V: Same<W>` says `V` is `W`, with a
/// message of its own where it is not.
#[diagnostic::on_unimplemented(
    message = "a `#[cached]` function must return the values of its cache, `{T}`; this one returns `{Self}`",
    label = "not the cache's value type `{T}`",
    note = "return the cache's value type, or name the cache that holds `{Self}`"
)]
pub trait Same<T> {}

impl<T> Same<T> for T {}

/// Checks that `cache` holds values of type `V`, the type the function returns.
pub fn holds<V, C: Cache>(_: &TypedCache<C>, _: PhantomData<V>)
where
    V: Same<C::Value>,
{
}

/// The loader of a body returning `Result<V, E>`: a value is always present.
pub async fn present<V, E>(body: impl Future<Output = Result<V, E>>) -> Result<Option<V>, E> {
    body.await.map(Some)
}

/// The loader of a body returning `Option<V>`: `None` is an absence, never an error.
pub async fn infallible<V>(body: impl Future<Output = Option<V>>) -> Result<Option<V>, Infallible> {
    Ok(body.await)
}

/// The answer to a body returning `Option<V>`.
pub fn optional<V>(answer: Result<Option<V>, Infallible>) -> Option<V> {
    match answer {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Takes the body out of its slot for `get_or_load`, which calls its loader at most
/// once; what is left is run by [`value`] if the cache answers an absence.
pub fn take<F>(body: &mut Option<F>) -> F {
    body.take()
        .expect("get_or_load calls its loader at most once")
}

/// The answer to a body returning `Result<V, E>`. Such a body never says "absent", but
/// another caller of the same cache may have (a remembered absence, a single flight it
/// led): then the body runs here, uncached, since the function must return a value.
pub async fn value<V, E, F, Fut>(answer: Result<Option<V>, E>, body: Option<F>) -> Result<V, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    match (answer, body) {
        (Ok(Some(value)), _) => Ok(value),
        (Err(error), _) => Err(error),
        (Ok(None), Some(body)) => body().await,
        (Ok(None), None) => {
            unreachable!("a body returning `Result<V, E>` is loaded as `Ok(Some(_))` or `Err(_)`")
        }
    }
}

/// What a body returning `Self` says about its success; `#[invalidates]` invalidates
/// only after a success.
#[diagnostic::on_unimplemented(
    message = "`#[invalidates]` invalidates after the body succeeded, which `{Self}` cannot say",
    label = "neither a `Result` nor `()`",
    note = "return `Result<T, E>` (the keys are invalidated after `Ok`) or nothing (always invalidated)"
)]
pub trait Outcome {
    /// Whether the body succeeded.
    fn succeeded(&self) -> bool;
}

impl Outcome for () {
    fn succeeded(&self) -> bool {
        true
    }
}

impl<T, E> Outcome for Result<T, E> {
    fn succeeded(&self) -> bool {
        self.is_ok()
    }
}

/// Whether the body's `outcome` was a success.
pub fn succeeded<O: Outcome>(outcome: &O) -> bool {
    outcome.succeeded()
}

/// Removes every key of `keys`, in batches of at most [`MAX_BATCH`] so no count of keys
/// is refused. Like every cache call it cannot fail: an unavailable backend is logged.
pub async fn invalidate_all<C: Cache>(cache: &TypedCache<C>, keys: &[C::Key]) {
    for batch in keys.chunks(MAX_BATCH) {
        // A batch within the limit is never refused.
        let _ = cache.minvalidate(batch).await;
    }
}
