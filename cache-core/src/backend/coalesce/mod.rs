//! Coalescing of concurrent `GET`s into `MGET`s, and of concurrent writes into the same
//! pipeline.
//!
//! Under load, many tasks read at once and each `GET` costs a round trip's worth of
//! kernel and parsing work on both sides. Keys that queue up while requests are in flight
//! go out together in a few `MGET`s instead; writes (`SET`s) queued meanwhile travel in
//! the same pipeline, one write to the socket and one reply to read for all of them.
//! What was measured on this machine with the throughput bench shapes it:
//! - a lone call waits for nothing: while fewer than [`BYPASS_BELOW`] calls are in
//!   progress, a get is a plain `GET` and a write goes alone (coalescing loses below ~16
//!   concurrent calls);
//! - the dispatcher yields once to the scheduler before draining the queue, so the other
//!   callers woken in the same tick join the batch instead of fragmenting it;
//! - two batches at most are in flight ([`MAX_IN_FLIGHT`]), as two cohorts of callers:
//!   a batch that comes back alone (nothing else in flight) with at least [`SPLIT_FROM`]
//!   callers is answered in two halves, the second once the first half's new calls are
//!   sent, so Redis works on one cohort's `MGET` while the client answers the other's
//!   callers; after that each batch back is answered whole and its callers' next calls go
//!   out together. With one batch in flight, Redis waited while the client answered a
//!   batch and the client while Redis worked (64 tasks, current-thread runtime: 67 µs in
//!   flight and 31 µs answering per batch of 64); splitting whatever is queued into equal
//!   shares instead sent both shares in the same tick, and they came back together;
//! - every batch carries everything queued, up to [`MAX_MGET_KEYS`];
//! - no timer per caller: the dispatcher answers every waiter by its deadline, with one
//!   timer per batch in flight and one for the queue;
//! - while batches are in flight the dispatcher keeps polling for their replies, yielding
//!   to the scheduler between polls, for up to [`SPIN_MAX`] after each batch it sends
//!   before it lets the thread sleep (not at all where replies keep coming later than
//!   that; calls queued while a slot is free end the poll, to be sent): on a VM, a thread
//!   put to sleep and woken by the reply took tens of microseconds more per round trip
//!   than the round trip itself (64 tasks, current-thread runtime, A/B runs of the
//!   throughput bench: 1.05-1.14x raw throughput without it, 1.28-1.58x with it); never
//!   on a runtime with more workers than the CPUs the process may use (see
//!   [`polling_pays`]);
//! - whether coalescing pays at all is measured, not configured (see [`choose`]): where
//!   it does not (two workers squeezed on one CPU), gets under load go alone.
//!
//! Semantics do not change: each caller gets its own key's bytes (decoding and corrupt
//! entry eviction happen in the caller), and each call keeps its deadline, counted from
//! when it was made.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Timed, Unavailable};

mod choose;

use choose::{Chooser, Route};

/// Below this many calls (gets and sets) in progress, a call goes out alone.
pub(crate) const BYPASS_BELOW: usize = 16;
/// The most batches in flight at once: two cohorts of callers.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// The fewest callers in a batch back alone that are split in two cohorts.
pub(crate) const SPLIT_FROM: usize = 32;
/// How long the dispatcher polls for replies after each batch it sends before it lets
/// the thread sleep.
pub(crate) const SPIN_MAX: Duration = Duration::from_micros(200);
/// The largest value a write may carry to join a batch: a batch's gets wait for its
/// whole reply, so a large value goes alone rather than hold them up.
pub(crate) const MAX_WRITE_BYTES: usize = 16 * 1024;
/// The most keys in one `MGET`, so a burst of thousands of callers does not become one
/// huge command that holds the server.
pub(crate) const MAX_MGET_KEYS: usize = 512;

/// What a queued call is answered: a get's bytes (`None` for a miss), `None` for a
/// write Redis took, or why not.
pub(crate) type Reply = Result<Option<Timed>, Unavailable>;

/// What a queued call asks for.
enum Op {
    /// A key's bytes; with the time the entry has left (`PTTL`) when `timed`.
    Get { key: String, timed: bool },
    /// A write, whose reply only says whether Redis took it (boxed: a queued call is
    /// moved several times, and most are gets).
    Write(Box<redis::Cmd>),
}

struct Waiting {
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// One round trip's worth of queued calls: the keys of one `MGET` (with a `PTTL` per
/// key flagged in `timed`), then the writes, in one pipeline. The answer holds a reply
/// per key, then one per write.
pub(crate) struct Batch {
    pub keys: Vec<String>,
    pub timed: Vec<bool>,
    pub writes: Vec<redis::Cmd>,
}

/// A caller in a batch in flight: its deadline and where its answer goes, once.
struct Answer {
    deadline: Instant,
    reply: Option<oneshot::Sender<Reply>>,
}

/// The queue shared by callers and the dispatcher task.
#[derive(Default)]
pub(crate) struct Coalescer {
    in_progress: AtomicUsize,
    queue: Mutex<VecDeque<Waiting>>,
    wake: Notify,
    woken: AtomicBool,
    /// Gets finished, to pick the ones timed.
    finished: AtomicU64,
    /// The chooser's pick: gets under load go alone (`true`) or are coalesced.
    alone: AtomicBool,
    meter: Mutex<Meter>,
    /// Polling windows opened (one per batch sent while polling is on), and replies
    /// caught by polling (a window is shared by the batches in flight, so it may catch
    /// two).
    polled: AtomicU64,
    caught: AtomicU64,
}

/// Whether the dispatcher polls for the replies in flight before it sleeps (a window
/// opened by each batch it sends, shared by the batches in flight): yes while polling
/// catches replies; after [`SPIN_MISSES`] windows in a row that expired with a batch
/// still in flight (a slow or distant server), no, except to try again once every
/// [`SPIN_RETRY`] batches.
struct Spin {
    /// The longest window.
    max: Duration,
    /// Windows in a row that ended before the reply came.
    misses: u32,
    /// Batches finished since polling stopped.
    idle: u32,
}

/// Windows in a row that end before the reply before the dispatcher stops polling.
const SPIN_MISSES: u32 = 4;
/// Batches between two tries of polling once it stopped.
const SPIN_RETRY: u32 = 64;

impl Spin {
    fn new(max: Duration) -> Self {
        Spin {
            max,
            misses: 0,
            idle: 0,
        }
    }

    /// How long to poll for the batch just sent; called once per batch.
    fn window(&mut self) -> Duration {
        if self.misses < SPIN_MISSES {
            return self.max;
        }
        self.idle += 1;
        if self.idle >= SPIN_RETRY {
            self.idle = 0;
            return self.max;
        }
        Duration::ZERO
    }

    /// Whether the last window caught the reply.
    fn caught(&mut self, caught: bool) {
        if caught {
            self.misses = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
        }
    }
}

/// Length of a measured epoch.
const EPOCH: Duration = Duration::from_millis(20);
/// About one get in this many is timed, to measure epochs by.
const SAMPLE_EVERY: u64 = 32;
/// Fewer timed gets than this in an epoch measure nothing.
const SAMPLES_MIN: u32 = 8;

/// What an epoch has seen so far.
struct Meter {
    started: std::time::Instant,
    /// Time in progress of the timed gets, and the load each one found.
    spent: Duration,
    load: u64,
    samples: u32,
    chooser: Chooser,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            started: std::time::Instant::now(),
            spent: Duration::ZERO,
            load: 0,
            samples: 0,
            chooser: Chooser::default(),
        }
    }
}

/// Counts a get as in progress until dropped; a timed one reports its time then.
pub(crate) struct InProgress<'a> {
    coalescer: &'a Coalescer,
    /// For a timed get: when it began and how many were in progress then.
    timed: Option<(std::time::Instant, usize)>,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let coalescer = self.coalescer;
        coalescer.in_progress.fetch_sub(1, Ordering::Relaxed);
        coalescer.finished.fetch_add(1, Ordering::Relaxed);
        if let Some((began, load)) = self.timed {
            coalescer.measured(began.elapsed(), load);
        }
    }
}

impl Coalescer {
    /// Registers a call (a get or a set); `false` means go alone (low load, or the chooser
    /// found that coalescing does not pay now), `true` means queue it.
    pub(crate) fn begin(&self) -> (InProgress<'_>, bool) {
        let before = self.in_progress.fetch_add(1, Ordering::Relaxed);
        let busy = before >= BYPASS_BELOW;
        let timed = (busy
            && self
                .finished
                .load(Ordering::Relaxed)
                .is_multiple_of(SAMPLE_EVERY))
        .then(|| (std::time::Instant::now(), before + 1));
        let coalesce = busy && !self.alone.load(Ordering::Relaxed);
        (
            InProgress {
                coalescer: self,
                timed,
            },
            coalesce,
        )
    }

    /// Counts a timed get; at the end of an epoch, lets the chooser pick the route.
    fn measured(&self, spent: Duration, load: usize) {
        // One caller at a time keeps the books; a sample lost to contention is no loss.
        let Ok(mut meter) = self.meter.try_lock() else {
            return;
        };
        meter.spent += spent;
        meter.load += load as u64;
        meter.samples += 1;
        let now = std::time::Instant::now();
        if now - meter.started < EPOCH {
            return;
        }
        let samples = meter.samples;
        let busy = meter.load >= BYPASS_BELOW as u64 * u64::from(samples);
        let mean = (samples >= SAMPLES_MIN && busy)
            .then(|| meter.spent.as_secs_f64() / f64::from(samples));
        let before = meter.chooser.route();
        let route = meter.chooser.epoch(mean);
        if route != before {
            tracing::trace!(?route, "coalescing route changed");
        }
        self.alone.store(route == Route::Alone, Ordering::Relaxed);
        meter.started = now;
        meter.spent = Duration::ZERO;
        meter.load = 0;
        meter.samples = 0;
    }

    /// Queues `key` for the next `MGET` and waits for its bytes (with the time its entry
    /// has left when `timed`; `None` otherwise), at most `timeout`.
    pub(crate) async fn get(&self, key: &str, timed: bool, timeout: Duration) -> Reply {
        let op = Op::Get {
            key: key.to_owned(),
            timed,
        };
        self.queue(op, timeout).await
    }

    /// Queues a write for the next round trip and waits until Redis took it, at most
    /// `timeout`.
    pub(crate) async fn write(
        &self,
        cmd: redis::Cmd,
        timeout: Duration,
    ) -> Result<(), Unavailable> {
        self.queue(Op::Write(Box::new(cmd)), timeout)
            .await
            .map(drop)
    }

    async fn queue(&self, op: Op, timeout: Duration) -> Reply {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            op,
            deadline: Instant::now() + timeout,
            reply,
        };
        self.lock().push_back(waiting);
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        // The dispatcher answers by the deadline (with `Timeout` if need be); it only goes
        // away with the backend, and a dropped reply is a failure.
        answer.await.unwrap_or(Err(Unavailable::Failed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the queued callers whose deadline has passed; the earliest deadline left.
    fn expire_queued(&self, now: Instant) -> Option<Instant> {
        let mut queue = self.lock();
        let mut kept = VecDeque::with_capacity(queue.len());
        for waiting in queue.drain(..) {
            if waiting.deadline <= now {
                let _ = waiting.reply.send(Err(Unavailable::Timeout));
            } else {
                kept.push_back(waiting);
            }
        }
        *queue = kept;
        queue.iter().map(|w| w.deadline).min()
    }
}

/// Sends queued calls as batches (an `MGET` and writes in one pipeline) through `mget`,
/// [`MAX_IN_FLIGHT`] at most at once, until the backend drops the task. Runs as one task
/// per backend, driving its batches itself, and after each batch it sends polls for the
/// replies in flight for up to `spin_max` ([`SPIN_MAX`]) before it sleeps on them.
pub(crate) async fn dispatch<F, Fut>(coalescer: &Coalescer, mget: F, spin_max: Duration)
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<Vec<Reply>, Unavailable>>,
{
    let mut in_flight = FuturesUnordered::new();
    // One timer for the callers still queued while every slot is taken.
    let mut expiry = pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;
    let mut spin = Spin::new(if polling_pays() {
        spin_max
    } else {
        Duration::ZERO
    });
    // Until when to poll for the batches in flight, once a window is open.
    let mut poll_until: Option<std::time::Instant> = None;
    // Callers whose deadline passed before their batch was sent, answered once the queue
    // is unlocked.
    let mut expired = Vec::new();
    // Batches whose replies came, with their callers not answered yet.
    let mut finished: Vec<Finished> = Vec::new();
    // The second cohort of a split batch, answered once the first one's batch is sent.
    let mut held = Finished::default();
    // Calls still queued with a slot free after the last round: they go out next, with
    // no polling first.
    let mut more = false;
    loop {
        // Poll for the replies of the batches in flight a while before sleeping on them:
        // a window opens with each batch sent, shared by the batches in flight (wake-ups
        // meanwhile do not open another), and ends when it expires with a batch still in
        // flight (a miss) or when a reply is caught. Each poll yields, so every other task
        // runs first, and the runtime checks its sockets in between without waiting.
        // Calls queued while a slot is free end the poll: they go first.
        let mut caught = false;
        if let Some(until) = poll_until
            && !in_flight.is_empty()
            && !more
        {
            loop {
                if std::time::Instant::now() >= until {
                    poll_until = None;
                    spin.caught(false);
                    break;
                }
                if let Some(Some(batch)) = in_flight.next().now_or_never() {
                    finished.push(batch);
                    caught = true;
                    spin.caught(true);
                    coalescer.caught.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if in_flight.len() < MAX_IN_FLIGHT && coalescer.woken.load(Ordering::Acquire) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if in_flight.is_empty() {
            poll_until = None;
        }
        // A batch just finished is what the wait below waits for: the keys queued while
        // it was in flight go next, with no wake-up of their own to come.
        if !caught {
            tokio::select! {
                () = coalescer.wake.notified() => {}
                Some(batch) = in_flight.next(), if !in_flight.is_empty() => finished.push(batch),
                () = &mut expiry, if armed.is_some() => {
                    armed = None;
                    if let Some(next) = coalescer.expire_queued(Instant::now()) {
                        expiry.as_mut().reset(next);
                        armed = Some(next);
                    }
                }
            }
        }
        while let Some(Some(batch)) = in_flight.next().now_or_never() {
            finished.push(batch);
        }
        // A lone batch back with nothing else in flight is split in two cohorts: the
        // first half is answered now and its callers' next calls make the batch sent
        // below; the second half is answered once that batch is in flight (queued to be
        // written), and its callers' next calls make the other batch. Redis then works on
        // one cohort while the client answers the other. (A failed batch is not split:
        // every caller gets its error now.)
        if finished.len() == 1
            && in_flight.is_empty()
            && finished[0].len() >= SPLIT_FROM
            && matches!(finished[0].replies, Some(Ok(_)))
        {
            let mut first = finished.pop().unwrap_or_default();
            held = first.split_off(first.len() / 2);
            first.answer();
        }
        for batch in finished.drain(..) {
            batch.answer();
        }
        // Let the callers woken in this tick queue up first: those just answered by a
        // finished MGET ask again at once, and draining before they do fragments batches.
        tokio::task::yield_now().await;
        coalescer.woken.store(false, Ordering::Release);
        let mut queue = coalescer.lock();
        if in_flight.len() < MAX_IN_FLIGHT && !queue.is_empty() {
            let share = queue.len().min(MAX_MGET_KEYS);
            let (batch, answers) = prepare(queue.drain(..share), Instant::now(), &mut expired);
            // (Nothing to send when every caller's deadline passed or it went away.)
            if !answers.is_empty() {
                in_flight.push(send(batch, answers, &mget));
                let window = spin.window();
                if !window.is_zero() {
                    // Counted before the batch's callers can be answered.
                    coalescer.polled.fetch_add(1, Ordering::Relaxed);
                    poll_until = Some(std::time::Instant::now() + window);
                }
            }
        }
        let front = queue.front().map(|w| w.deadline);
        more = !queue.is_empty() && in_flight.len() < MAX_IN_FLIGHT;
        drop(queue);
        for reply in expired.drain(..) {
            let _ = reply.send(Err(Unavailable::Timeout));
        }
        std::mem::take(&mut held).answer();
        match front {
            Some(deadline) if armed.is_none_or(|at| at > deadline) => {
                expiry.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            Some(_) => {}
            None => armed = None,
        }
        if more {
            // More queued with a slot free: go round again at once.
            coalescer.wake.notify_one();
        }
    }
}

/// A batch whose reply came: its callers (some may have been answered already, by their
/// deadline) and a reply for each, or why there is none.
#[derive(Default)]
struct Finished {
    answers: Vec<Answer>,
    replies: Option<Result<Vec<Reply>, Unavailable>>,
}

impl Finished {
    /// Callers in the batch.
    fn len(&self) -> usize {
        self.answers.len()
    }

    /// Moves the callers from `at` on, with their replies, to a batch of their own.
    fn split_off(&mut self, at: usize) -> Finished {
        let replies = match &mut self.replies {
            Some(Ok(replies)) => Some(Ok(replies.split_off(at))),
            Some(Err(why)) => Some(Err(*why)),
            None => None,
        };
        Finished {
            answers: self.answers.split_off(at),
            replies,
        }
    }

    /// Answers each caller still waiting with its reply.
    fn answer(self) {
        match self.replies {
            Some(Ok(replies)) => {
                for (answer, value) in self.answers.into_iter().zip(replies) {
                    if let Some(reply) = answer.reply {
                        let _ = reply.send(value);
                    }
                }
            }
            Some(Err(why)) => {
                for reply in self.answers.into_iter().filter_map(|a| a.reply) {
                    let _ = reply.send(Err(why));
                }
            }
            None => {}
        }
    }
}

/// Whether polling for a reply can pay on the runtime the dispatcher runs on: not where
/// its workers outnumber the CPUs this process may use (its CPU affinity, a container's
/// CPU quota). A worker polling there takes the CPU from another worker that has the
/// callers to run, for nothing: on the throughput bench's multi-thread runtime (2
/// workers) pinned to one CPU, 64 concurrent gets ran at 0.71-0.87x raw with polling
/// and 0.81-0.96x without (5 alternating pairs of runs, each faster without).
fn polling_pays() -> bool {
    let workers = tokio::runtime::Handle::try_current().map_or(1, |rt| rt.metrics().num_workers());
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    workers <= cpus
}

/// Splits queued calls into a batch (each call's key or write, moved, not copied) and
/// where each answer goes, in the order of the replies: the gets', then the writes'.
/// Callers whose deadline has passed go to `expired`, to be answered `Timeout`; callers
/// that went away are neither read nor written for.
fn prepare(
    queued: impl ExactSizeIterator<Item = Waiting>,
    now: Instant,
    expired: &mut Vec<oneshot::Sender<Reply>>,
) -> (Batch, Vec<Answer>) {
    let mut keys = Vec::with_capacity(queued.len());
    let mut timed = Vec::with_capacity(queued.len());
    let mut writes = Vec::new();
    let mut answers = Vec::with_capacity(queued.len());
    let mut written = Vec::new();
    for waiting in queued {
        if waiting.deadline <= now {
            expired.push(waiting.reply);
        } else if !waiting.reply.is_closed() {
            let answer = Answer {
                deadline: waiting.deadline,
                reply: Some(waiting.reply),
            };
            match waiting.op {
                Op::Get { key, timed: t } => {
                    keys.push(key);
                    timed.push(t);
                    answers.push(answer);
                }
                Op::Write(cmd) => {
                    writes.push(*cmd);
                    written.push(answer);
                }
            }
        }
    }
    answers.append(&mut written);
    (
        Batch {
            keys,
            timed,
            writes,
        },
        answers,
    )
}

/// One round trip for `batch`: each caller with its own reply (a key's bytes, or whether
/// its write was taken), for the dispatcher to answer; a caller whose deadline passes
/// first is answered `Timeout` when it does.
async fn send<F, Fut>(batch: Batch, mut answers: Vec<Answer>, mget: &F) -> Finished
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<Vec<Reply>, Unavailable>>,
{
    // The connection's response timeout bounds the MGET (and counts towards the
    // breaker, so it is always awaited to the end); callers whose own deadline passes
    // first are answered when it does.
    let mut call = pin!(mget(batch));
    let outcome = loop {
        let Some(first) = answers
            .iter()
            .filter(|a| a.reply.is_some())
            .map(|a| a.deadline)
            .min()
        else {
            call.await.ok();
            return Finished::default();
        };
        tokio::select! {
            biased;
            outcome = &mut call => break outcome,
            () = tokio::time::sleep_until(first) => {
                let now = Instant::now();
                for answer in &mut answers {
                    if answer.deadline <= now
                        && let Some(reply) = answer.reply.take()
                    {
                        let _ = reply.send(Err(Unavailable::Timeout));
                    }
                }
            }
        }
    };
    // One reply per caller, or they cannot be told apart.
    let replies = match outcome {
        Ok(replies) if replies.len() != answers.len() => Err(Unavailable::Failed),
        outcome => outcome,
    };
    Finished {
        answers,
        replies: Some(replies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the meter epochs in which a get's time in progress depends on the route
    /// taken, as `begin` reports it; returns whether gets under load are coalesced at
    /// the end.
    fn settle_on(coalesced: Duration, alone: Duration, epochs: u32) -> bool {
        let coalescer = Coalescer::default();
        // Enough gets in progress for the chooser's pick to apply.
        let busy: Vec<_> = (0..BYPASS_BELOW).map(|_| coalescer.begin().0).collect();
        for _ in 0..epochs {
            let coalescing = coalescer.begin().1;
            let spent = if coalescing { coalesced } else { alone };
            for _ in 0..SAMPLES_MIN {
                coalescer.measured(spent, BYPASS_BELOW + 1);
            }
            std::thread::sleep(EPOCH + Duration::from_millis(1));
            coalescer.measured(spent, BYPASS_BELOW + 1);
        }
        let coalescing = coalescer.begin().1;
        drop(busy);
        coalescing
    }

    #[test]
    fn gets_under_load_go_alone_once_that_measures_better_and_stay_coalesced_otherwise() {
        let fast = Duration::from_micros(100);
        let slow = Duration::from_micros(300);
        // Past the first exploit period, a probe and its settling epoch.
        let epochs = 16 + 1 + 2 + 2;
        assert!(
            !settle_on(slow, fast, epochs),
            "coalescing measured 3x slower, yet gets under load are still coalesced"
        );
        assert!(
            settle_on(fast, slow, epochs),
            "coalescing measured 3x faster, yet gets under load go alone"
        );
    }

    #[test]
    fn polling_stops_where_replies_keep_coming_late_and_is_tried_again_later() {
        let mut spin = Spin::new(SPIN_MAX);
        for _ in 0..SPIN_MISSES {
            assert_eq!(spin.window(), SPIN_MAX);
            spin.caught(false);
        }
        for batch in 1..SPIN_RETRY {
            assert_eq!(
                spin.window(),
                Duration::ZERO,
                "batch {batch} after {SPIN_MISSES} misses in a row was polled for"
            );
        }
        assert_eq!(spin.window(), SPIN_MAX, "polling was never tried again");
        spin.caught(false);
        assert_eq!(
            spin.window(),
            Duration::ZERO,
            "a missed retry turned polling on"
        );
        for _ in 2..SPIN_RETRY {
            spin.window();
        }
        assert_eq!(spin.window(), SPIN_MAX);
        spin.caught(true);
        for _ in 0..SPIN_RETRY {
            assert_eq!(
                spin.window(),
                SPIN_MAX,
                "a caught reply did not turn polling on"
            );
        }
    }

    /// A dispatcher on this runtime whose `MGET`s answer every key `None` after `reply`,
    /// polling for up to `window`.
    fn fake_dispatcher(reply: Duration, window: Duration) -> std::sync::Arc<Coalescer> {
        fake_dispatcher_counting(reply, window).0
    }

    /// [`fake_dispatcher`], and how many batches it has sent.
    fn fake_dispatcher_counting(
        reply: Duration,
        window: Duration,
    ) -> (std::sync::Arc<Coalescer>, std::sync::Arc<AtomicUsize>) {
        let (coalescer, sent, _) = fake_dispatcher_tracking(reply, window);
        (coalescer, sent)
    }

    /// [`fake_dispatcher_counting`], and the most batches that were in flight at once.
    fn fake_dispatcher_tracking(
        reply: Duration,
        window: Duration,
    ) -> (
        std::sync::Arc<Coalescer>,
        std::sync::Arc<AtomicUsize>,
        std::sync::Arc<AtomicUsize>,
    ) {
        let coalescer = std::sync::Arc::new(Coalescer::default());
        let sent = std::sync::Arc::new(AtomicUsize::new(0));
        let now = std::sync::Arc::new(AtomicUsize::new(0));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let mget = {
            let (sent, most) = (std::sync::Arc::clone(&sent), std::sync::Arc::clone(&most));
            move |batch: Batch| {
                sent.fetch_add(1, Ordering::Relaxed);
                most.fetch_max(now.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
                let now = std::sync::Arc::clone(&now);
                async move {
                    tokio::time::sleep(reply).await;
                    now.fetch_sub(1, Ordering::Relaxed);
                    Ok(vec![Ok(None); batch.keys.len() + batch.writes.len()])
                }
            }
        };
        let dispatcher = std::sync::Arc::clone(&coalescer);
        tokio::spawn(async move { dispatch(&dispatcher, mget, window).await });
        (coalescer, sent, most)
    }

    /// Batches polled for, and replies caught by polling.
    fn polling(coalescer: &Coalescer) -> (u64, u64) {
        (
            coalescer.polled.load(Ordering::Relaxed),
            coalescer.caught.load(Ordering::Relaxed),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_dispatcher_polls_for_a_reply_while_other_tasks_keep_running() {
        const REPLY: Duration = Duration::from_millis(5);
        const WINDOW: Duration = Duration::from_millis(100);
        let coalescer = fake_dispatcher(REPLY, WINDOW);
        let started = std::time::Instant::now();
        let get = tokio::spawn({
            let coalescer = std::sync::Arc::clone(&coalescer);
            async move { coalescer.get("k", false, Duration::from_secs(5)).await }
        });
        // Another task on the same thread, counting its turns.
        let mut turns = 0u32;
        while !get.is_finished() {
            tokio::task::yield_now().await;
            turns += 1;
            assert!(started.elapsed() < Duration::from_secs(5), "the get hung");
        }
        let took = started.elapsed();
        assert!(matches!(get.await, Ok(Ok(None))));
        // Polled for, and the reply taken as soon as it was there, well inside the window.
        assert_eq!(polling(&coalescer), (1, 1), "(batches polled for, caught)");
        assert!(
            took < WINDOW / 2,
            "the get took {took:?} for a {REPLY:?} reply"
        );
        // Each poll yields, so this task had its turns all along (thousands in 5 ms here);
        // polling without yielding would have kept it out until the reply.
        assert!(
            turns > 50,
            "another task had {turns} turns while the dispatcher polled for {took:?}"
        );
    }

    /// Batches sent and batches polled for by a dispatcher on a multi-thread runtime of
    /// `workers` workers, for 4 gets one after another.
    fn polled_on_workers(workers: usize) -> (usize, u64) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let (coalescer, sent) =
                fake_dispatcher_counting(Duration::from_millis(2), Duration::from_millis(100));
            for _ in 0..4 {
                let get = coalescer.get("k", false, Duration::from_secs(5));
                let got = tokio::time::timeout(Duration::from_secs(10), get)
                    .await
                    .expect("a get hung");
                assert!(matches!(got, Ok(None)), "{got:?}");
            }
            (sent.load(Ordering::Relaxed), polling(&coalescer).0)
        })
    }

    #[test]
    fn the_dispatcher_polls_only_where_the_runtime_has_a_cpu_per_worker() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(
            polled_on_workers(cpus),
            (4, 4),
            "(batches, polled for) with {cpus} workers on {cpus} CPUs"
        );
        // One worker more than the CPUs: a polling worker would take a CPU from the
        // worker that runs the callers.
        assert_eq!(
            polled_on_workers(cpus + 1),
            (4, 0),
            "(batches, polled for) with {} workers on {cpus} CPUs",
            cpus + 1
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_whose_deadline_passed_before_they_were_sent_make_no_batch() {
        let (coalescer, sent) =
            fake_dispatcher_counting(Duration::from_millis(1), Duration::from_millis(100));
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            coalescer.get("k", false, Duration::ZERO),
        )
        .await
        .expect("a get past its deadline hung");
        assert!(matches!(got, Err(Unavailable::Timeout)), "{got:?}");
        // Let the dispatcher finish its round.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent.load(Ordering::Relaxed), 0, "a batch was sent");
        assert_eq!(polling(&coalescer), (0, 0), "(batches polled for, caught)");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn keys_left_queued_behind_full_batches_go_as_soon_as_a_slot_frees() {
        // 1100 keys queued at once: a full batch of 512 goes out and, with a slot free,
        // a second one at once, without polling for the first's reply; the last 76 stay
        // queued with both slots taken, and the wake-up that brought them is spent.
        // Polling catches a reply; nothing else will wake the dispatcher for the 76, so
        // catching it must send them.
        const REPLY: Duration = Duration::from_millis(5);
        const WINDOW: Duration = Duration::from_millis(100);
        let (coalescer, sent, most) = fake_dispatcher_tracking(REPLY, WINDOW);
        let keys: Vec<String> = (0..1100).map(|k| format!("k{k}")).collect();
        let started = std::time::Instant::now();
        let replies = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(
                keys.iter()
                    .map(|key| coalescer.get(key, false, Duration::from_secs(5))),
            ),
        )
        .await
        .expect("1100 gets hung past their deadlines");
        let took = started.elapsed();
        assert!(
            replies.iter().all(|r| matches!(r, Ok(None))),
            "{} of 1100 gets were not answered",
            replies.iter().filter(|r| !matches!(r, Ok(None))).count()
        );
        assert_eq!(
            sent.load(Ordering::Relaxed),
            3,
            "two full batches, then the rest"
        );
        assert_eq!(
            most.load(Ordering::Relaxed),
            2,
            "the second full batch waited for the first one's reply"
        );
        assert!(polling(&coalescer).1 >= 1, "no reply was caught by polling");
        // Two round trips of 5 ms; stranded, the 76 would wait for their 5 s deadline.
        assert!(took < Duration::from_secs(1), "1100 gets took {took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_dispatcher_polls_once_per_batch_however_often_it_is_woken() {
        // Keys queued while a batch is in flight wake the dispatcher; each wake-up must
        // not open another window on the same batch (a slow server would then be polled
        // for the whole of its round trip).
        const REPLY: Duration = Duration::from_millis(40);
        const WINDOW: Duration = Duration::from_millis(2);
        let (coalescer, sent) = fake_dispatcher_counting(REPLY, WINDOW);
        let get = |key: &'static str| {
            let coalescer = std::sync::Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.get(key, false, Duration::from_secs(5)).await })
        };
        let mut gets = vec![get("first")];
        for key in ["second", "third", "fourth"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            gets.push(get(key));
        }
        for got in gets {
            let got = tokio::time::timeout(Duration::from_secs(5), got)
                .await
                .expect("a get hung")
                .unwrap();
            assert!(matches!(got, Ok(None)), "{got:?}");
        }
        let batches = sent.load(Ordering::Relaxed) as u64;
        assert_eq!(
            polling(&coalescer).0,
            batches,
            "windows opened for {batches} batches"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gets_and_writes_in_one_batch_each_get_their_own_reply() {
        // Answers each key with its own bytes and each write with whether it was taken
        // (refused when its key starts with "refused"), in the batch's order: gets, then
        // writes.
        let batches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mget = {
            let batches = std::sync::Arc::clone(&batches);
            move |batch: Batch| {
                let mut replies: Vec<Reply> = batch
                    .keys
                    .iter()
                    .map(|key| {
                        Ok(Some(Timed {
                            bytes: key.as_bytes().to_vec(),
                            remaining: None,
                        }))
                    })
                    .collect();
                for write in &batch.writes {
                    let key = write.args_iter().nth(1);
                    let refused = matches!(
                        key,
                        Some(redis::Arg::Simple(key)) if key.starts_with(b"refused")
                    );
                    replies.push(if refused {
                        Err(Unavailable::Failed)
                    } else {
                        Ok(None)
                    });
                }
                batches
                    .lock()
                    .unwrap()
                    .push((batch.keys.len(), batch.writes.len()));
                std::future::ready(Ok(replies))
            }
        };
        let coalescer = std::sync::Arc::new(Coalescer::default());
        let dispatcher = std::sync::Arc::clone(&coalescer);
        tokio::spawn(async move { dispatch(&dispatcher, mget, SPIN_MAX).await });
        let timeout = Duration::from_secs(5);
        let set = |key: &str| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg("value");
            cmd
        };
        // Queued in one tick: a write between two gets, and a refused one after them.
        let (taken, first, refused, second) = tokio::join!(
            coalescer.write(set("taken"), timeout),
            coalescer.get("first", false, timeout),
            coalescer.write(set("refused"), timeout),
            coalescer.get("second", true, timeout),
        );
        assert_eq!(
            *batches.lock().unwrap(),
            [(2, 2)],
            "(keys, writes) per batch"
        );
        assert!(taken.is_ok(), "{taken:?}");
        assert!(matches!(refused, Err(Unavailable::Failed)), "{refused:?}");
        for (got, key) in [(first, "first"), (second, "second")] {
            let bytes = got.expect("a get failed").expect("a get missed").bytes;
            assert_eq!(
                bytes,
                key.as_bytes(),
                "a get was given another call's reply"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_batch_back_is_split_so_two_cohorts_keep_two_batches_in_flight() {
        const TASKS: usize = 64;
        const ROUNDS: usize = 20;
        let (coalescer, sent, most) = fake_dispatcher_tracking(Duration::from_millis(1), SPIN_MAX);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let coalescer = std::sync::Arc::clone(&coalescer);
                tokio::spawn(async move {
                    let key = format!("k{task}");
                    for _ in 0..ROUNDS {
                        let got = coalescer.get(&key, false, Duration::from_secs(5)).await;
                        assert!(matches!(got, Ok(None)), "{got:?}");
                    }
                })
            })
            .collect();
        tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::try_join_all(tasks),
        )
        .await
        .expect("the gets hung past their deadlines")
        .expect("a get failed");
        // With one batch in flight, Redis would wait while the client answers the batch's
        // callers, and the client while Redis works.
        assert_eq!(
            most.load(Ordering::Relaxed),
            2,
            "the most batches in flight at once"
        );
        // Two cohorts, not fragments: 64 tasks make batches of some 32 keys.
        let sent = sent.load(Ordering::Relaxed);
        assert!(
            sent <= TASKS * ROUNDS / 16,
            "{sent} batches for {} gets from {TASKS} tasks",
            TASKS * ROUNDS
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_dispatcher_stops_polling_where_replies_come_later_than_its_window() {
        const REPLY: Duration = Duration::from_millis(10);
        const WINDOW: Duration = Duration::from_millis(2);
        let coalescer = fake_dispatcher(REPLY, WINDOW);
        for _ in 0..SPIN_MISSES + 4 {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                coalescer.get("k", false, Duration::from_secs(5)),
            )
            .await;
            assert!(matches!(got, Ok(Ok(None))), "{got:?}");
        }
        assert_eq!(
            polling(&coalescer),
            (u64::from(SPIN_MISSES), 0),
            "(batches polled for, caught) of {} batches whose reply came after the window",
            SPIN_MISSES + 4
        );
    }

    #[test]
    fn few_gets_in_progress_always_go_alone() {
        let coalescer = Coalescer::default();
        let alone: Vec<_> = (0..BYPASS_BELOW).map(|_| coalescer.begin()).collect();
        assert!(alone.iter().all(|(_, coalesce)| !coalesce));
        assert!(coalescer.begin().1, "the 17th get in progress is coalesced");
    }
}
