//! What every cache call reports besides its result: a `tracing` span with its namespace
//! and operation, and, with the `metrics` feature, its latency.
//!
//! Both cost next to nothing when nobody listens: the span is created at debug level, so
//! without a subscriber interested in it the call is awaited as it is; without the
//! feature no clock is read and nothing is recorded.
//!
//! Every call also spends one unit of tokio's cooperative budget. Many calls complete
//! without ever waiting (the breaker is open, the manager is not connected, `memory://`,
//! a first-level hit, a rejected batch); without the budget a task looping on them would
//! never give its worker back, and timers and other tasks on that worker would stall.
//! With it, such a loop yields as often as a loop over a tokio channel does.

use std::future::Future;

use tracing::Instrument as _;

/// The operation a call performs, as it appears in spans and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    Set,
    Mget,
    Mset,
    Invalidate,
    Minvalidate,
    Clear,
}

impl Op {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Mget => "mget",
            Op::Mset => "mset",
            Op::Invalidate => "invalidate",
            Op::Minvalidate => "minvalidate",
            Op::Clear => "clear",
        }
    }
}

/// Runs the call `make` starts inside a `cache` span and records its latency, after
/// spending a unit of the task's cooperative budget (yielding to the runtime first when
/// it is spent).
///
/// It takes a function that starts the call rather than the call's future: a future
/// passed as an argument is kept whole in this one's state and moved again to be
/// awaited, which doubled the size of every call's future (a `set`'s from 1 160 to
/// 2 472 bytes), and the bytes a task's future moves and keeps in cache add up at tens
/// of concurrent calls.
pub(crate) async fn observed<F: Future>(
    namespace: &'static str,
    op: Op,
    make: impl FnOnce() -> F,
) -> F::Output {
    tokio::task::consume_budget().await;
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("cache", namespace, operation = op.name());
    let output = if span.is_disabled() {
        make().await
    } else {
        make().instrument(span).await
    };
    #[cfg(feature = "metrics")]
    metrics::histogram!(
        "cache_operation_duration_seconds",
        "namespace" => namespace,
        "operation" => op.name()
    )
    .record(started.elapsed());
    output
}

/// Lets a message about a key be logged once per interval, not once per call: a value
/// too large to cache, loaded again and again, is one line a minute, not thousands.
pub(crate) struct OncePerKey {
    logged: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    every: std::time::Duration,
}

impl OncePerKey {
    /// The most keys remembered: past it, those logged longest ago are forgotten.
    const KEYS: usize = 1024;

    pub(crate) fn new(every: std::time::Duration) -> Self {
        OncePerKey {
            logged: std::sync::Mutex::default(),
            every,
        }
    }

    /// Whether to log about `key` now; if so, it is not logged again for the interval.
    pub(crate) fn now(&self, key: &str) -> bool {
        let now = tokio::time::Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.get(key).is_some_and(|at| now - *at < self.every) {
            return false;
        }
        if logged.len() >= Self::KEYS {
            let every = self.every;
            logged.retain(|_, at| now - *at < every);
        }
        if logged.len() < Self::KEYS {
            logged.insert(key.to_owned(), now);
        }
        true
    }
}
