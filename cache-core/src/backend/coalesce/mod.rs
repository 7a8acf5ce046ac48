//! Coalescing of concurrent `GET`s into `MGET`s.
//!
//! Under load, many tasks read at once and each `GET` costs a round trip's worth of
//! kernel and parsing work on both sides. Keys that queue up while requests are in flight
//! go out together in a few `MGET`s instead. What was measured on this machine with the
//! throughput bench shapes it:
//! - a lone call waits for nothing: while fewer than [`BYPASS_BELOW`] gets are in
//!   progress, a get is a plain `GET` (coalescing loses below ~16 concurrent calls);
//! - the dispatcher yields once to the scheduler before draining the queue, so the other
//!   callers woken in the same tick join the batch instead of fragmenting it;
//! - one `MGET` is in flight at a time ([`MAX_IN_FLIGHT`]), carrying everything that
//!   queued meanwhile. Two to four in flight were expected to do better; this
//!   implementation, in `cargo bench -p cache-tests --bench throughput` runs on this
//!   machine, gained most with one (1.44x raw at 64 tasks against 1.29x with two, 1.82x
//!   against 1.41x at 256): with redis-rs already writing queued commands in one
//!   syscall, bigger batches are what pays. The split over free slots is kept so the
//!   constant can be tuned.
//!
//! Semantics do not change: each caller gets its own key's bytes (decoding and corrupt
//! entry eviction happen in the caller), and each call keeps its deadline, counted from
//! when it was made.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::Unavailable;

/// Below this many gets in progress, a get goes out alone as a `GET`.
pub(crate) const BYPASS_BELOW: usize = 16;
/// The most `MGET`s of coalesced keys in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1;
/// The most keys in one `MGET`, so a burst of thousands of callers does not become one
/// huge command that holds the server.
pub(crate) const MAX_MGET_KEYS: usize = 512;

type Reply = Result<Option<Vec<u8>>, Unavailable>;

struct Waiting {
    key: String,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The queue shared by callers and the dispatcher task.
#[derive(Default)]
pub(crate) struct Coalescer {
    in_progress: AtomicUsize,
    queue: Mutex<VecDeque<Waiting>>,
    wake: Notify,
    woken: AtomicBool,
}

/// Counts a get as in progress until dropped.
pub(crate) struct InProgress<'a>(&'a AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Coalescer {
    /// Registers a get; `None` means go alone (low load), `Some` means queue it.
    pub(crate) fn begin(&self) -> (InProgress<'_>, bool) {
        let before = self.in_progress.fetch_add(1, Ordering::Relaxed);
        (InProgress(&self.in_progress), before >= BYPASS_BELOW)
    }

    /// Queues `key` for the next `MGET` and waits for its bytes.
    pub(crate) async fn get(&self, key: &str, timeout: Duration) -> Reply {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        let waiting = Waiting {
            key: key.to_owned(),
            deadline,
            reply,
        };
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(waiting);
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        // Each caller keeps its own deadline, whatever the batch it joined does. The
        // dispatcher only goes away with the backend; a dropped reply is a failure.
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(reply) => reply.unwrap_or(Err(Unavailable::Failed)),
            Err(_) => Err(Unavailable::Timeout),
        }
    }

    fn take(&self, limit: usize) -> Vec<Waiting> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = limit.min(queue.len());
        queue.drain(..n).collect()
    }

    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Sends queued keys as `MGET`s through `mget` until the backend drops
/// the task. Runs as one task per backend, driving its `MGET`s itself.
pub(crate) async fn dispatch<F, Fut>(coalescer: &Coalescer, mget: F)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Vec<u8>>>, Unavailable>>,
{
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = coalescer.wake.notified() => {}
            Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
        }
        // Let the callers woken in this tick queue up first: those just answered by a
        // finished MGET ask again at once, and draining before they do fragments batches.
        tokio::task::yield_now().await;
        coalescer.woken.store(false, Ordering::Release);
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(in_flight.next()) {}
        let queued = coalescer.queued();
        let free = MAX_IN_FLIGHT - in_flight.len();
        if free == 0 || queued == 0 {
            continue;
        }
        // Split the waiting keys evenly over the free slots.
        let per_batch = queued.div_ceil(free).min(MAX_MGET_KEYS);
        for _ in 0..free {
            let batch = coalescer.take(per_batch);
            if batch.is_empty() {
                break;
            }
            in_flight.push(send(batch, &mget));
        }
        if coalescer.queued() > 0 && in_flight.len() < MAX_IN_FLIGHT {
            // More than the cap queued: go round again without waiting for a wake-up.
            coalescer.wake.notify_one();
        }
    }
}

/// One `MGET` for `batch`, answering each waiter with its own key's bytes.
async fn send<F, Fut>(batch: Vec<Waiting>, mget: &F)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Vec<u8>>>, Unavailable>>,
{
    let now = Instant::now();
    let (live, expired): (Vec<Waiting>, Vec<Waiting>) =
        batch.into_iter().partition(|w| w.deadline > now);
    for waiting in expired {
        let _ = waiting.reply.send(Err(Unavailable::Timeout));
    }
    if live.is_empty() {
        return;
    }
    let keys = live.iter().map(|w| w.key.clone()).collect();
    // The connection's response timeout bounds the MGET (and counts towards the
    // breaker); callers whose own deadline passes first have stopped waiting already.
    match mget(keys).await {
        Ok(values) if values.len() == live.len() => {
            for (waiting, value) in live.into_iter().zip(values) {
                let _ = waiting.reply.send(Ok(value));
            }
        }
        outcome => {
            let why = match outcome {
                Err(why) => why,
                Ok(_) => Unavailable::Failed,
            };
            for waiting in live {
                let _ = waiting.reply.send(Err(why));
            }
        }
    }
}
