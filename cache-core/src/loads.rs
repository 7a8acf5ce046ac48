//! How a cache's loads run: in the caller, or on a task of their own.
//!
//! A soft timeout (`load_timeout_ms`) answers a caller before its load ends, and a
//! refresh ahead (`refresh_ahead`) answers at once and loads afterwards: both need a
//! load that outlives its caller, so its future must be `Send + 'static`. Only caches
//! declared with those keys ask that of their loaders; the others keep accepting
//! loaders that borrow (`|| db.profile(id)` with `db: &Db`). The derive picks the mode,
//! and [`Runs`] is the bound `get_or_load` puts on the loader's future through it.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

/// A load mode: [`Inline`] or [`Background`]. Chosen by `#[derive(Cache)]`.
pub trait LoadMode: Send + Sync + 'static {
    /// Whether loads may outlive their caller.
    const BACKGROUND: bool;
}

/// Loads run inside the caller's future; the loader may borrow from the caller.
#[derive(Debug)]
pub enum Inline {}

/// Loads may go on after their caller got an answer (soft timeout, refresh ahead): the
/// loader's future and its output must be `Send + 'static`.
#[derive(Debug)]
pub enum Background {}

impl LoadMode for Inline {
    const BACKGROUND: bool = false;
}

impl LoadMode for Background {
    const BACKGROUND: bool = true;
}

/// A load's future, kept in the caller or made ready to run on a task of its own.
pub enum Started<Fut: Future> {
    /// Runs in the caller's future.
    Here(Fut),
    /// May be spawned: `Send + 'static`, its output [`Carried`].
    Movable(Pin<Box<dyn Future<Output = Carried> + Send + 'static>>),
}

/// The output of a load that may cross tasks, boxed: code generic over any loader
/// cannot prove its error is `Send`, but the [`Background`] mode that packed it did.
pub struct Carried(Box<dyn Any + Send>);

/// What a cache's load mode asks of a loader's future `Fut`.
#[diagnostic::on_unimplemented(
    message = "this cache runs loads in the background (`load_timeout_ms` or `refresh_ahead`), so its loader must be `Send + 'static`",
    label = "this loader borrows from its caller or is not `Send`",
    note = "a load that outlives its caller cannot borrow from it: move what the loader needs into it, e.g. `let pool = Arc::clone(&pool); move || async move {{ pool.profile(id).await }}`",
    note = "or drop `load_timeout_ms` and `refresh_ahead` from the cache's declaration to run loads in the caller"
)]
pub trait Runs<Fut: Future> {
    /// Keeps the load in the caller, or makes it movable to a task of its own.
    fn start(load: Fut) -> Started<Fut>;
    /// Boxes a load's output to carry it across tasks (movable loads only).
    fn pack(output: Fut::Output) -> Carried;
    /// Takes back what [`pack`](Self::pack) boxed (movable loads only).
    fn unpack(carried: Carried) -> Fut::Output;
}

impl<Fut: Future> Runs<Fut> for Inline {
    fn start(load: Fut) -> Started<Fut> {
        Started::Here(load)
    }

    fn pack(_: Fut::Output) -> Carried {
        unreachable!("an inline load never leaves its caller")
    }

    fn unpack(_: Carried) -> Fut::Output {
        unreachable!("an inline load never leaves its caller")
    }
}

#[diagnostic::do_not_recommend]
impl<Fut> Runs<Fut> for Background
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn start(load: Fut) -> Started<Fut> {
        Started::Movable(Box::pin(
            async move { <Self as Runs<Fut>>::pack(load.await) },
        ))
    }

    fn pack(output: Fut::Output) -> Carried {
        Carried(Box::new(output))
    }

    fn unpack(carried: Carried) -> Fut::Output {
        match carried.0.downcast::<Fut::Output>() {
            Ok(output) => *output,
            Err(_) => unreachable!("a load's output is unpacked as the type it was packed as"),
        }
    }
}
