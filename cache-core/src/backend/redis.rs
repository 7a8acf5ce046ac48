//! `redis://` and `rediss://`: one multiplexed connection shared by every cache of a
//! manager, guarded by a circuit breaker and kept alive by a supervisor task. A Redis
//! Cluster (`cluster.rs`) runs one of these per master.
//!
//! redis-rs's `ConnectionManager` makes callers wait on its reconnect future, unbounded by
//! the response timeout, never reconnects after timeouts, and fails its constructor when
//! Redis is down. Here:
//! - every call is bounded by the response timeout, which covers sending and the reply;
//! - the breaker is closed while there is a connection and open while there is none;
//!   with it open, calls degrade at once without touching the network;
//! - it opens on an I/O error, a `READONLY` or `LOADING` reply, or `failure_threshold`
//!   timeouts in a row (a hung server or half-open socket), and the connection is dropped;
//! - one supervisor task then reconnects with capped, jittered exponential backoff, and
//!   closes the breaker only after the new connection answered a `PING` and `ROLE`
//!   named a primary.
//!
//! With `redis+sentinel://` the server is not fixed: the supervisor asks the sentinels
//! where the master is before every attempt, checks `ROLE`, follows announced
//! failovers, and the listener moves with it (see `sentinel.rs`).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, PushInfo, RedisError};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::coalesce::{self, Coalescer};
use super::outage::{ConnectFailure, Outage};
use super::sentinel::{self, Sentinels};
use super::{Timed, Unavailable, Write, remaining_from_pttl};
use crate::config::{CacheConfig, NodeAddr, RedisSettings, Secret, SentinelSettings};
use crate::health::{Breaker, Health};
use crate::local::{self, LocalLevels};

pub(crate) struct RedisBackend {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
    /// The task hearing invalidations for the first levels, and its claim on them.
    listener: Option<(tokio::task::JoinHandle<()>, u64)>,
    /// Whether its listener also hears the ends of other instances' loads (one per
    /// manager: pub/sub messages reach every node of a cluster).
    designated: bool,
    /// With sentinels: the task hearing their announcements of a new master.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// The server a connection goes to.
struct Server {
    client: redis::Client,
    /// The same server over RESP3, which carries the pushes a listener hears.
    tracking_client: redis::Client,
    /// The master's address as the sentinels name it; `None` for a fixed server.
    address: Option<NodeAddr>,
}

impl Server {
    fn new(client: redis::Client, address: Option<NodeAddr>) -> Self {
        Server {
            tracking_client: resp3(&client),
            client,
            address,
        }
    }
}

/// How a connection starts, besides its first levels.
struct Start {
    /// The server, or `None` with sentinels until they name the master.
    server: Option<Server>,
    url: String,
    secret: Option<Secret>,
    config: CacheConfig,
    topology_changed: Option<Arc<Notify>>,
    sentinels: Option<Arc<Sentinels>>,
    listen: bool,
}

struct Inner {
    /// Where connections go: the URL's server (fixed), or the master the sentinels name.
    /// The listener reconnects whenever it changes.
    target: watch::Sender<Option<Arc<Server>>>,
    redis_config: AsyncConnectionConfig,
    config: CacheConfig,
    url: String,
    secret: Option<Secret>,
    /// The breaker: `Some` closed, `None` open.
    conn: ArcSwapOption<MultiplexedConnection>,
    wake: Notify,
    timeouts_in_a_row: AtomicU32,
    outage: Outage,
    coalescer: Coalescer,
    locals: Arc<LocalLevels>,
    /// Where invalidations and the ends of loads are published and heard.
    channels: local::Channels,
    /// In a cluster: woken when a reply says the slot map changed (`MOVED`, `ASK`,
    /// `CLUSTERDOWN`), so the cluster refreshes it.
    topology_changed: Option<Arc<Notify>>,
    /// With `redis+sentinel://`: who names the master to connect to.
    sentinels: Option<Arc<Sentinels>>,
    /// Whether the calls' connection reached a server before, and that server's `run_id`
    /// (`None` unknown): a reconnection that finds another one moves the listener too.
    reached: std::sync::Mutex<(bool, Option<String>)>,
    /// This backend's listener in [`LocalLevels`] (0: none).
    listener_id: AtomicU64,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.supervisor.abort();
        self.dispatcher.abort();
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        if let Some((listener, id)) = &self.listener {
            listener.abort();
            self.inner.locals.release(*id);
        }
    }
}

impl RedisBackend {
    /// Connects, or starts degraded when Redis cannot be reached; either way the
    /// supervisor keeps the connection up from now on.
    pub(crate) async fn start(settings: RedisSettings, locals: Arc<LocalLevels>) -> Self {
        let start = Start {
            server: Some(Server::new(settings.client, None)),
            url: settings.redacted,
            secret: settings.secret,
            config: settings.config,
            topology_changed: None,
            sentinels: None,
            listen: true,
        };
        Self::start_with(start, locals).await
    }

    /// [`start`](Self::start) on the master the sentinels name, following it across
    /// failovers; starts degraded when no sentinel answers or the master does not.
    pub(crate) async fn start_sentinel(
        settings: SentinelSettings,
        locals: Arc<LocalLevels>,
    ) -> Self {
        let start = Start {
            server: None,
            url: settings.redacted.clone(),
            secret: settings.nodes.secret().cloned(),
            config: settings.config.clone(),
            topology_changed: None,
            sentinels: Some(Arc::new(Sentinels::new(settings))),
            listen: true,
        };
        Self::start_with(start, locals).await
    }

    /// [`start`](Self::start) for one node of a cluster: replies that say the slot map
    /// changed wake `topology_changed` instead of being logged as refusals. Each master
    /// tracks its own keys for the first levels; pub/sub messages reach every node of a
    /// cluster, so only one node needs to `listen` for them (the ends of loads, and
    /// invalidations where the servers have no tracking).
    pub(crate) async fn start_node(
        settings: RedisSettings,
        topology_changed: Arc<Notify>,
        locals: Arc<LocalLevels>,
        listen: bool,
    ) -> Self {
        let start = Start {
            server: Some(Server::new(settings.client, None)),
            url: settings.redacted,
            secret: settings.secret,
            config: settings.config,
            topology_changed: Some(topology_changed),
            sentinels: None,
            listen,
        };
        Self::start_with(start, locals).await
    }

    async fn start_with(start: Start, locals: Arc<LocalLevels>) -> Self {
        let config = start.config;
        let listen = start.listen;
        let redis_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let channels = local::Channels::for_prefix(config.key_prefix.as_deref());
        let (backend, subject) = match start.sentinels {
            Some(_) => ("redis-sentinel", "redis master"),
            None => ("redis", "redis"),
        };
        let inner = Arc::new(Inner {
            channels,
            target: watch::Sender::new(start.server.map(Arc::new)),
            redis_config,
            config,
            url: start.url,
            secret: start.secret,
            conn: ArcSwapOption::empty(),
            wake: Notify::new(),
            timeouts_in_a_row: AtomicU32::new(0),
            outage: Outage::new(backend, subject),
            coalescer: Coalescer::default(),
            locals,
            topology_changed: start.topology_changed,
            sentinels: start.sentinels,
            reached: std::sync::Mutex::new((false, None)),
            listener_id: AtomicU64::new(0),
        });
        // Heard before the first attempt, so a failover during it is not missed.
        let watcher = inner
            .sentinels
            .as_ref()
            .map(|s| tokio::spawn(sentinel::watch(Arc::clone(s))));
        match inner.connect().await {
            Ok(mut conn) => {
                inner.reached(&mut conn).await;
                inner.conn.store(Some(Arc::new(conn)));
                tracing::info!(
                    backend,
                    url = %inner.url,
                    master = %inner.master().map(|m| m.to_string()).unwrap_or_default(),
                    "cache connected"
                );
            }
            // Not an error for `connect`: the outage is logged once and the supervisor
            // keeps trying.
            Err(failure) => inner.outage.went_down(&inner.url, failure.text),
        }
        // The connection made above counts from now, as the supervisor's own do.
        let connected = inner.conn.load().is_some().then(Instant::now);
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner), connected));
        let dispatcher = tokio::spawn({
            let inner = Arc::clone(&inner);
            async move {
                let mget = |batch: coalesce::Batch| inner.send_batch(batch);
                coalesce::dispatch(&inner.coalescer, mget, coalesce::SPIN_MAX).await;
            }
        });
        // Every server (every master of a cluster) tracks its own keys for the levels;
        // one listener per manager hears the ends of loads.
        let locals = &inner.locals;
        let needed = locals.any() || (listen && locals.listen_needed());
        let listener = needed.then(|| {
            let id = locals.claim(inner.topology_changed.is_none());
            inner.listener_id.store(id, Ordering::Release);
            (
                tokio::spawn(self::listen(Arc::clone(&inner), id, listen)),
                id,
            )
        });
        RedisBackend {
            inner,
            supervisor,
            dispatcher,
            listener,
            designated: listen && needed,
            watcher,
        }
    }

    /// What health and `Debug` call this backend: `redis`, or `redis-sentinel`.
    pub(crate) fn kind(&self) -> &'static str {
        if self.inner.sentinels.is_some() {
            "redis-sentinel"
        } else {
            "redis"
        }
    }

    /// The connection, or `Down` at once while the breaker is open.
    fn connection(&self) -> Result<Arc<MultiplexedConnection>, Unavailable> {
        self.inner.conn.load_full().ok_or_else(|| {
            self.inner.outage.count_degraded();
            Unavailable::Down
        })
    }

    /// Whether the breaker is closed: a connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// Sends one command, bounded by the response timeout, and settles its outcome.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Unavailable> {
        let conn = self.connection()?;
        let result = cmd.query_async::<T>(&mut (*conn).clone()).await;
        self.inner.settle(&conn, result)
    }

    /// A plain `GET` under low load; under load, the key joins the next `MGET`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        // (Checked before the call counts as in progress: a call that fails at once while
        // the breaker is open would be a misleading sample of the route it took.)
        let conn = self.connection()?;
        let (_in_progress, busy) = self.inner.coalescer.begin();
        if !self.coalesces(busy) {
            let result = redis::cmd("GET")
                .arg(key)
                .query_async(&mut (*conn).clone())
                .await;
            return self.inner.settle(&conn, result);
        }
        drop(conn);
        let found = self
            .inner
            .coalescer
            .get(key, false, self.inner.config.response_timeout)
            .await
            .inspect_err(|_| self.inner.outage.count_degraded())?;
        Ok(found.map(|timed| timed.bytes))
    }

    /// Whether a get with `busy` from [`Coalescer::begin`] joins the next `MGET`. A
    /// cluster node's keys lie in many hash slots, which one MGET may not span
    /// (CROSSSLOT): its gets always go alone.
    fn coalesces(&self, busy: bool) -> bool {
        busy && self.inner.config.coalesce && self.inner.topology_changed.is_none()
    }

    pub(crate) async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        // One value per key, or the reply cannot be mapped back to the keys.
        if values.len() == keys.len() {
            Ok(values)
        } else {
            Err(Unavailable::Failed)
        }
    }

    /// A `SET`; under load, unless it must be announced or is large, it joins the next
    /// batch's pipeline.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        announce: bool,
    ) -> Result<(), Unavailable> {
        let cmd = set_command(key, value, ttl);
        // A first level's write needs a `PUBLISH` beside it only where writes announce.
        if !announce || !self.announces() {
            // (Taken before the call counts as in progress, as in `get`.)
            let conn = self.connection()?;
            let (_in_progress, busy) = self.inner.coalescer.begin();
            if self.coalesces(busy) && value.len() <= coalesce::MAX_WRITE_BYTES {
                drop(conn);
                return self
                    .inner
                    .coalescer
                    .write(cmd, self.inner.config.response_timeout)
                    .await
                    .inspect_err(|_| self.inner.outage.count_degraded());
            }
            let result = cmd.query_async::<()>(&mut (*conn).clone()).await;
            return self.inner.settle(&conn, result);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).ignore();
        self.inner.announce(&mut pipe, key);
        self.pipeline(&pipe).await
    }

    pub(crate) async fn mset(&self, entries: &[Write], announce: bool) -> Result<(), Unavailable> {
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.add_command(set_command(&entry.key, &entry.bytes, entry.ttl))
                .ignore();
        }
        if announce {
            for entry in entries {
                self.inner.announce(&mut pipe, &entry.key);
            }
        }
        self.pipeline(&pipe).await
    }

    /// `GET` and `PTTL` of `key` in one round trip; under load, the key joins the next
    /// `MGET`, with its `PTTL` in the same round trip.
    pub(crate) async fn get_timed(&self, key: &str) -> Result<Option<Timed>, Unavailable> {
        // (Taken before the call counts as in progress, as in `get`.)
        let conn = self.connection()?;
        let (_in_progress, busy) = self.inner.coalescer.begin();
        if self.coalesces(busy) {
            drop(conn);
            return self
                .inner
                .coalescer
                .get(key, true, self.inner.config.response_timeout)
                .await
                .inspect_err(|_| self.inner.outage.count_degraded());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let result = pipe.query_async(&mut (*conn).clone()).await;
        let (bytes, pttl): (Option<Vec<u8>>, i64) = self.inner.settle(&conn, result)?;
        Ok(bytes.map(|bytes| Timed {
            bytes,
            remaining: remaining_from_pttl(pttl),
        }))
    }

    /// One `MGET` and a `PTTL` per key, in one round trip.
    pub(crate) async fn mget_timed(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Timed>>, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(keys);
        for key in keys {
            pipe.cmd("PTTL").arg(key);
        }
        let replies: Vec<redis::Value> = self.pipeline(&pipe).await?;
        with_remaining(&vec![true; keys.len()], replies)
    }

    /// `SET key value NX PX ttl`: `true` when stored.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        let reply: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await?;
        Ok(reply.is_some())
    }

    /// `PEXPIRE key ttl` while `key` still holds `expected`, in one script.
    pub(crate) async fn expire_if_eq(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
        self.query::<u64>(
            redis::cmd("EVAL")
                .arg(SCRIPT)
                .arg(1)
                .arg(key)
                .arg(expected)
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
        .map(|n| n > 0)
    }

    /// Publishes the end of a load to every instance (global single flight).
    pub(crate) async fn publish_load(&self, message: &str) -> Result<(), Unavailable> {
        self.query::<()>(
            redis::cmd("PUBLISH")
                .arg(&self.inner.channels.loads)
                .arg(message),
        )
        .await
    }

    pub(crate) async fn del(&self, key: &str, announce: bool) -> Result<bool, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(key);
        if announce {
            self.inner.announce(&mut pipe, key);
        }
        self.pipeline::<(u64,)>(&pipe).await.map(|(n,)| n > 0)
    }

    /// Sends `pipe` in one round trip. With `ignore_errors` set on it, each command's
    /// server error comes back as its `Value::ServerError` entry, for the caller to settle
    /// with [`refused`](Self::refused) or a topology refresh.
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Unavailable> {
        let conn = self.connection()?;
        let result = pipe.query_async::<T>(&mut (*conn).clone()).await;
        self.inner.settle(&conn, result)
    }

    /// Whether this connection's listener hears the ends of other instances' loads.
    pub(crate) fn listens(&self) -> bool {
        self.designated
    }

    /// Adds the invalidation of `key` for other instances' first levels to `pipe`, unless
    /// Redis pushes invalidations itself.
    pub(crate) fn announce(&self, pipe: &mut redis::Pipeline, key: &str) {
        self.inner.announce(pipe, key);
    }

    /// Whether writes publish their keys for other instances' first levels: where the
    /// server has no `CLIENT TRACKING`, or another instance's level hears by pub/sub, or
    /// the listener is away.
    pub(crate) fn announces(&self) -> bool {
        self.inner.locals.writes_announce()
    }

    /// Records a command of a pipeline the server refused: counted, logged at most once
    /// per 10 s; a reply saying the slot map changed wakes the cluster's refresh instead.
    pub(crate) fn refused(&self, error: &RedisError) {
        let inner = &self.inner;
        inner.outage.count_degraded();
        if !inner.topology_hint(error) {
            inner.outage.refused(&inner.url, inner.describe(error));
        }
    }

    /// One `DEL` of every key: how many entries it removed.
    pub(crate) async fn del_many(
        &self,
        keys: &[String],
        announce: bool,
    ) -> Result<u64, Unavailable> {
        if !announce {
            return self.query::<u64>(redis::cmd("DEL").arg(keys)).await;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(keys);
        for key in keys {
            self.inner.announce(&mut pipe, key);
        }
        self.pipeline::<(u64,)>(&pipe).await.map(|(n,)| n)
    }

    pub(crate) async fn del_if_eq(&self, key: &str, expected: &[u8]) -> Result<bool, Unavailable> {
        // EVAL rather than EVALSHA: corrupt entries are rare, and EVAL needs no script cache.
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        self.query::<u64>(redis::cmd("EVAL").arg(SCRIPT).arg(1).arg(key).arg(expected))
            .await
            .map(|n| n > 0)
    }

    /// Removes every key matching `pattern` (a cache's `{prefix}*`) with `SCAN` +
    /// `UNLINK` (see [`scan_unlink`]).
    pub(crate) async fn clear(&self, pattern: &str, announce: bool) -> (u64, Option<Unavailable>) {
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(why) => return (0, Some(why)),
        };
        let cluster_node = self.inner.topology_changed.is_some();
        let (removed, result) = scan_unlink(
            &mut (*conn).clone(),
            pattern,
            CLEAR_BATCH,
            cluster_node,
            &mut |_| {},
        )
        .await;
        if let Err(why) = self.inner.settle(&conn, result) {
            return (removed, Some(why));
        }
        if announce && self.announces() {
            // The pattern tells other instances to empty the namespace's level.
            let mut pipe = redis::pipe();
            self.inner.announce(&mut pipe, pattern);
            if let Err(why) = self.pipeline::<()>(&pipe).await {
                return (removed, Some(why));
            }
        }
        (removed, None)
    }

    pub(crate) async fn health(&self) -> Health {
        let inner = &self.inner;
        let ping = async {
            match inner.conn.load_full() {
                None => Err(()),
                Some(conn) => {
                    let started = Instant::now();
                    let result = redis::cmd("PING")
                        .query_async::<()>(&mut (*conn).clone())
                        .await;
                    let rtt = started.elapsed();
                    inner.settle(&conn, result).map(|()| rtt).map_err(drop)
                }
            }
        };
        let sentinels = async {
            match &inner.sentinels {
                Some(sentinels) => Some(sentinels.health(inner.master().as_ref()).await),
                None => None,
            }
        };
        let (ping, sentinel) = tokio::join!(ping, sentinels);
        let (error, down_for) = inner.outage.report();
        let breaker = if inner.conn.load().is_some() {
            Breaker::Closed
        } else {
            Breaker::Open
        };
        let degraded = inner.outage.degraded_total();
        let mut health = match ping {
            Ok(rtt) => Health::redis_up(&inner.url, rtt, degraded),
            Err(()) => Health::redis_down(
                &inner.url,
                breaker,
                error.unwrap_or_else(|| "no reply".to_owned()),
                down_for,
                degraded,
            ),
        };
        if sentinel.is_some() {
            health.backend = self.kind();
            health.sentinel = sentinel;
        }
        health
    }
}

/// Keys `SCAN` is asked to visit per call during a clear, and so the most keys (give or
/// take what one hash bucket holds) one `UNLINK` carries.
const CLEAR_BATCH: usize = 500;

/// Removes every key matching `pattern` from the server behind `conn`: `SCAN MATCH
/// pattern COUNT count` and one `UNLINK` per batch found, until the cursor comes back to 0.
/// Returns the keys removed, also when it stopped on an error; `removed` hears the
/// running total after each batch (an operator tool's progress bar).
///
/// It works on one connection to one server, so a cluster backend runs it once per
/// primary node. `SCAN` guarantees the loop ends: a full iteration returns cursor 0.
///
/// On a cluster node the keys of one page lie in many hash slots, which one `UNLINK`
/// may not span (CROSSSLOT): `per_key` sends one `UNLINK` per key, pipelined, still one
/// round trip per page.
pub(crate) async fn scan_unlink<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    pattern: &str,
    count: usize,
    per_key: bool,
    removed_so_far: &mut (dyn FnMut(u64) + Send),
) -> (u64, Result<(), RedisError>) {
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let scanned = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async::<(u64, Vec<Vec<u8>>)>(conn)
            .await;
        let (next, keys) = match scanned {
            Ok(page) => page,
            Err(error) => return (removed, Err(error)),
        };
        if !keys.is_empty() {
            let unlinked = if per_key {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("UNLINK").arg(key);
                }
                pipe.query_async::<Vec<u64>>(conn)
                    .await
                    .map(|n| n.iter().sum())
            } else {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(conn)
                    .await
            };
            match unlinked {
                Ok(n) => {
                    removed += n;
                    removed_so_far(removed);
                }
                Err(error) => return (removed, Err(error)),
            }
        }
        if next == 0 {
            return (removed, Ok(()));
        }
        cursor = next;
    }
}

/// The replies of an `MGET` followed by a `PTTL` per key flagged in `timed`, as each
/// key's value with the time it has left (`None` for the keys not timed); `Failed` when
/// the replies do not map back onto the keys.
fn with_remaining(
    timed: &[bool],
    mut replies: Vec<redis::Value>,
) -> Result<Vec<Option<Timed>>, Unavailable> {
    let pttls = timed.iter().filter(|t| **t).count();
    if replies.len() != pttls + 1 {
        return Err(Unavailable::Failed);
    }
    let mut pttls = replies.split_off(1).into_iter();
    mget_values(replies.remove(0), timed.len())?
        .zip(timed)
        .map(|(bytes, &timed)| {
            let remaining = if timed {
                let pttl = pttls.next().ok_or(Unavailable::Failed)?;
                let pttl: i64 = redis::from_redis_value(pttl).map_err(|_| Unavailable::Failed)?;
                remaining_from_pttl(pttl)
            } else {
                None
            };
            Ok(bytes.map(|bytes| Timed { bytes, remaining }))
        })
        .collect()
}

/// `MGET` of `keys`, sized once for all of them.
fn mget_command(keys: &[String]) -> redis::Cmd {
    let bytes = keys.iter().map(String::len).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(keys.len() + 1, bytes + "MGET".len());
    cmd.arg("MGET").arg(keys);
    cmd
}

/// The values of an `MGET` of `keys` keys, in order; `Failed` unless the reply holds
/// one value or nil per key, so that each maps back to its key.
fn mget_values(
    reply: redis::Value,
    keys: usize,
) -> Result<impl Iterator<Item = Option<Vec<u8>>>, Unavailable> {
    let redis::Value::Array(values) = reply else {
        return Err(Unavailable::Failed);
    };
    let valid = |v: &redis::Value| {
        matches!(
            v,
            redis::Value::BulkString(_) | redis::Value::Nil | redis::Value::SimpleString(_)
        )
    };
    if values.len() != keys || !values.iter().all(valid) {
        return Err(Unavailable::Failed);
    }
    Ok(values.into_iter().map(|value| match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }))
}

/// What a failed round trip counts, by [`Inner::settle_counting`].
#[derive(Clone, Copy)]
enum Counted {
    /// One call, sent alone: one degraded call, one timeout toward the breaker.
    Call,
    /// A coalesced batch of this many calls: a timeout for each toward the breaker; each
    /// caller counts itself as degraded.
    Batch(usize),
}

/// `SET key value EX s`, or `PX ms` when the TTL has a sub-second part.
pub(super) fn set_command(key: &str, value: &[u8], ttl: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if ttl.subsec_millis() == 0 {
        cmd.arg("EX").arg(ttl.as_secs());
    } else {
        cmd.arg("PX").arg(ttl.as_millis() as u64);
    }
    cmd
}

impl Inner {
    /// One round trip for a coalesced batch: an `MGET` of its keys (with a `PTTL` per
    /// timed key), then its writes, in one pipeline. A reply per key, then per write; a
    /// refused write fails alone.
    async fn send_batch(
        &self,
        batch: coalesce::Batch,
    ) -> Result<Vec<coalesce::Reply>, Unavailable> {
        let conn = self.conn.load_full().ok_or(Unavailable::Down)?;
        let coalesce::Batch {
            keys,
            timed,
            writes,
        } = batch;
        let calls = keys.len() + writes.len();
        if writes.is_empty() && !timed.contains(&true) {
            let result = mget_command(&keys)
                .query_async::<redis::Value>(&mut (*conn).clone())
                .await;
            let values = mget_values(self.settle_batch(&conn, result, calls)?, keys.len())?;
            // Straight from the parsed reply to the callers' answers, in one pass.
            return Ok(values
                .map(|v| {
                    Ok(v.map(|bytes| Timed {
                        bytes,
                        remaining: None,
                    }))
                })
                .collect());
        }
        let mut pipe = redis::pipe();
        // Each write's error is its own: the others' replies still come back.
        pipe.ignore_errors();
        if !keys.is_empty() {
            pipe.add_command(mget_command(&keys));
            // A PTTL per timed key, in the MGET's round trip.
            for (key, _) in keys.iter().zip(&timed).filter(|(_, t)| **t) {
                pipe.cmd("PTTL").arg(key);
            }
        }
        let sent = writes.len();
        for cmd in writes {
            pipe.add_command(cmd);
        }
        let result = pipe
            .query_async::<Vec<redis::Value>>(&mut (*conn).clone())
            .await;
        let mut replies = self.settle_batch(&conn, result, calls)?;
        let reads = if keys.is_empty() {
            0
        } else {
            1 + timed.iter().filter(|t| **t).count()
        };
        // One reply per command, or they cannot be mapped back to the callers.
        if replies.len() != reads + sent {
            return Err(Unavailable::Failed);
        }
        let written = replies.split_off(reads);
        let mut answers = Vec::with_capacity(keys.len() + sent);
        if !keys.is_empty() {
            let read = match replies.first() {
                Some(redis::Value::ServerError(_)) => {
                    Err(self.refusal(&conn, replies.swap_remove(0)))
                }
                _ => with_remaining(&timed, replies),
            };
            match read {
                Ok(values) => answers.extend(values.into_iter().map(Ok)),
                Err(why) => answers.extend(std::iter::repeat_n(Err(why), keys.len())),
            }
        }
        for reply in written {
            answers.push(match reply {
                redis::Value::ServerError(_) => Err(self.refusal(&conn, reply)),
                _ => Ok(None),
            });
        }
        Ok(answers)
    }

    /// Settles a command's error reply in a pipeline whose other replies came back.
    fn refusal(&self, conn: &Arc<MultiplexedConnection>, reply: redis::Value) -> Unavailable {
        match reply.extract_error() {
            Err(error) => self.settle_batch::<()>(conn, Err(error), 1).err(),
            Ok(_) => None,
        }
        .unwrap_or(Unavailable::Failed)
    }

    /// The master the connection goes to, with sentinels (`None` before one was found).
    fn master(&self) -> Option<NodeAddr> {
        self.target
            .borrow()
            .as_ref()
            .and_then(|s| s.address.clone())
    }

    /// A connection to the server; with sentinels, to the master they name, asked before
    /// every attempt, so a reconnection never goes back to a demoted master. When they
    /// name another master than before, the connection (and with it the listener) moves
    /// there and the first levels start over.
    async fn connect(&self) -> Result<MultiplexedConnection, ConnectFailure> {
        let Some(sentinels) = &self.sentinels else {
            let server = self.target.borrow().clone();
            return match server {
                Some(server) => self.open(&server).await,
                None => Err(ConnectFailure {
                    text: "no server to connect to".to_owned(),
                    refused: false,
                }),
            };
        };
        let masters = sentinels.locate().await.map_err(|text| ConnectFailure {
            text: self.scrubbed(text),
            refused: false,
        })?;
        let mut failures = Vec::new();
        let mut refused = true;
        for addr in masters {
            let server = match sentinels.settings(&addr) {
                Ok(settings) => Server::new(settings.client, Some(addr.clone())),
                Err(text) => {
                    failures.push(text);
                    continue;
                }
            };
            match self.open(&server).await {
                Ok(conn) => {
                    self.follow(sentinels, server, &addr);
                    return Ok(conn);
                }
                Err(failure) => {
                    refused &= failure.refused;
                    failures.push(format!("{addr}: {}", failure.text));
                }
            }
        }
        Err(ConnectFailure {
            text: format!(
                "the master the sentinels name cannot be used ({})",
                failures.join("; ")
            ),
            refused,
        })
    }

    /// Makes `server`, at `addr`, the target from now on, unless it already is.
    fn follow(&self, sentinels: &Sentinels, server: Server, addr: &NodeAddr) {
        let current = self.master();
        if current.as_ref() == Some(addr) {
            return;
        }
        self.target.send_replace(Some(Arc::new(server)));
        // Not the first master found: a switch.
        if current.is_some() {
            sentinels.record_switch();
            // Another server: what the levels hold was read from the old one.
            self.locals.forget_all();
            tracing::warn!(
                backend = "redis-sentinel",
                url = %self.url,
                from = %current.map(|c| c.to_string()).unwrap_or_default(),
                to = %addr,
                "redis master switched; the cache follows it"
            );
        }
    }

    /// While connected with sentinels: asks them whether the master moved, and leaves the
    /// current one when most name another; the supervisor then connects to it. With no
    /// sentinel answering, the master in use stays. `true` when it left the master.
    async fn check_master(&self, sentinels: &Sentinels) -> bool {
        let Ok(ranked) = sentinels.locate_ranked().await else {
            return false;
        };
        if let (Some(current), Some(conn)) = (self.master(), self.conn.load_full())
            && let Some(named) = sentinel::moved_from(&ranked, &current)
        {
            self.open_breaker(
                &conn,
                format!("the sentinels name {named} as the master now"),
            );
            return true;
        }
        false
    }

    /// One connection attempt to `server`, closed only once it answered a `PING` (a paused
    /// server accepts TCP connections it never serves) and `ROLE` did not name a replica:
    /// a replica, such as a master demoted by a failover, answers writes with `READONLY`,
    /// so the breaker stays open until it is promoted. Without sentinels, a server that
    /// refuses `ROLE` (an ACL) is taken at its `PING`; with sentinels, `ROLE` must say
    /// master.
    async fn open(&self, server: &Server) -> Result<MultiplexedConnection, ConnectFailure> {
        let attempt = async {
            let mut conn = server
                .client
                .get_multiplexed_async_connection_with_config(&self.redis_config)
                .await?;
            // Also for a master the sentinels name: `ROLE` is answered while the server
            // loads its data, everything else `-LOADING`; the `PING` keeps the breaker
            // open (and the backoff growing) until it serves.
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            if self.sentinels.is_none() {
                let role = redis::cmd("ROLE")
                    .query_async::<redis::Role>(&mut conn)
                    .await;
                if matches!(role, Ok(redis::Role::Replica { .. })) {
                    return Ok(None);
                }
            } else if !sentinel::verify_master(&mut conn).await? {
                return Ok(None);
            }
            Ok::<_, RedisError>(Some(conn))
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            Ok(Ok(None)) if self.sentinels.is_none() => Err(ConnectFailure {
                text: "the server is a replica (read-only); waiting for it to become a primary"
                    .to_owned(),
                refused: true,
            }),
            Ok(Ok(None)) => Err(ConnectFailure {
                text: "not a master (ROLE); the sentinels' answer is out of date".to_owned(),
                refused: false,
            }),
            Ok(Err(e)) => Err(ConnectFailure {
                text: self.describe(&e),
                refused: refused(&e),
            }),
            Err(_) => Err(ConnectFailure {
                text: format!(
                    "no answer within the connect timeout ({:?})",
                    self.config.connect_timeout
                ),
                refused: false,
            }),
        }
    }

    /// Adds the invalidation of `key` for other instances' first levels to `pipe`: only
    /// where Redis does not push invalidations itself (`CLIENT TRACKING`).
    fn announce(&self, pipe: &mut redis::Pipeline, key: &str) {
        if !self.locals.writes_announce() {
            return;
        }
        pipe.cmd("PUBLISH")
            .arg(&self.channels.invalidate)
            .arg(self.locals.message(key))
            .ignore();
    }

    /// The error's text with the password scrubbed, in case a server echoes it.
    fn describe(&self, error: &RedisError) -> String {
        self.scrubbed(error.to_string())
    }

    /// `text` with the password scrubbed.
    fn scrubbed(&self, text: String) -> String {
        match &self.secret {
            Some(secret) => secret.scrub(text),
            None => text,
        }
    }

    /// Turns a command result into the call's outcome, recording failures and opening
    /// the breaker when the connection cannot be trusted any more.
    fn settle<T>(
        &self,
        conn: &Arc<MultiplexedConnection>,
        result: Result<T, RedisError>,
    ) -> Result<T, Unavailable> {
        self.settle_counting(conn, result, Counted::Call)
    }

    /// [`settle`](Self::settle) for the round trip of a coalesced batch of `calls` calls:
    /// the same outcome and side effects (a reconnection, a refusal logged), and when it
    /// got no reply in time, a timeout for each call it carried toward the breaker, as
    /// the calls sent alone in that round trip would have counted. Each caller counts
    /// itself as degraded. (A caller whose own deadline passed while it waited for a
    /// batch to go out counts toward nothing but that: the server may be answering every
    /// round trip in time.)
    fn settle_batch<T>(
        &self,
        conn: &Arc<MultiplexedConnection>,
        result: Result<T, RedisError>,
        calls: usize,
    ) -> Result<T, Unavailable> {
        self.settle_counting(conn, result, Counted::Batch(calls))
    }

    fn settle_counting<T>(
        &self,
        conn: &Arc<MultiplexedConnection>,
        result: Result<T, RedisError>,
        counted: Counted,
    ) -> Result<T, Unavailable> {
        match result {
            Ok(value) => {
                if self.timeouts_in_a_row.load(Ordering::Relaxed) != 0 {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                }
                Ok(value)
            }
            Err(error) => {
                let timeouts = match counted {
                    Counted::Call => {
                        self.outage.count_degraded();
                        1
                    }
                    Counted::Batch(calls) => u32::try_from(calls).unwrap_or(u32::MAX),
                };
                if error.is_timeout() {
                    self.count_timeouts(conn, timeouts);
                    return Err(Unavailable::Timeout);
                }
                if self.topology_hint(&error) {
                    return Err(Unavailable::Failed);
                }
                let text = self.describe(&error);
                if must_reconnect(&error) {
                    self.open_breaker(conn, text);
                } else {
                    self.outage.refused(&self.url, text);
                }
                Err(Unavailable::Failed)
            }
        }
    }

    /// Counts `calls` calls that got no reply in time toward the timeouts in a row that
    /// open the breaker on `conn`.
    fn count_timeouts(&self, conn: &Arc<MultiplexedConnection>, calls: u32) {
        let in_a_row = self
            .timeouts_in_a_row
            .fetch_add(calls, Ordering::Relaxed)
            .saturating_add(calls);
        if in_a_row >= self.config.failure_threshold {
            let reason = format!(
                "{in_a_row} calls in a row got no reply within {:?}",
                self.config.response_timeout
            );
            self.open_breaker(conn, reason);
        }
    }

    /// In a cluster, whether `error` is about the slot map (a redirection, the cluster
    /// down) rather than a refused command; `MOVED` and `CLUSTERDOWN` wake the refresh.
    fn topology_hint(&self, error: &RedisError) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        let Some(changed) = &self.topology_changed else {
            return false;
        };
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::ClusterDown) => {
                changed.notify_one();
                true
            }
            // A slot being migrated: `CLUSTER SLOTS` still names the source until the
            // migration ends (then keys answer `MOVED`), so a refresh would learn nothing,
            // and one per `ASK` reply was some 50 a second per caller.
            ErrorKind::Server(ServerErrorKind::Ask) => true,
            _ => false,
        }
    }

    /// Forgets `conn` (unless it was already replaced) and wakes the supervisor.
    fn open_breaker(&self, conn: &Arc<MultiplexedConnection>, reason: String) {
        let previous = self.conn.compare_and_swap(conn, None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, conn)) {
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
            self.outage.went_down(&self.url, reason);
            self.wake.notify_one();
            // A cluster's slot map is refreshed every second while a master is down (a
            // replica may take over): tell the cluster's supervisor now, or it would
            // notice only at its next periodic refresh, up to 30 s later.
            if let Some(changed) = &self.topology_changed {
                changed.notify_one();
            }
        }
    }
}

/// Errors after which the connection cannot be trusted: I/O, a dropped socket, or a
/// server that is loading its data or no longer a primary.
fn must_reconnect(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading)
        )
}

/// The client's server over RESP3, TLS settings and credentials included.
fn resp3(client: &redis::Client) -> redis::Client {
    let info = client.get_connection_info().clone();
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(redis)).unwrap_or_else(|_| client.clone())
}

/// Sends `cmd` on a connection of its own to the server of `settings`, connecting and
/// answering within `timeout`; errors as text, with the password scrubbed. For the
/// questions asked before there is a connection to keep: a cluster's slot map, where a
/// sentinel says the master is.
pub(crate) async fn ask_once<T: FromRedisValue>(
    settings: &RedisSettings,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<T, String> {
    let redis_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let attempt = async {
        let mut conn = settings
            .client
            .get_multiplexed_async_connection_with_config(&redis_config)
            .await?;
        cmd.query_async::<T>(&mut conn).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(match &settings.secret {
            Some(secret) => secret.scrub(e.to_string()),
            None => e.to_string(),
        }),
        Err(_) => Err(format!(
            "no answer within the connect timeout ({timeout:?})"
        )),
    }
}

/// Between half and all of `wait`, so many instances do not reconnect in lockstep.
pub(super) fn jittered(wait: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = wait / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

/// How often a listener checks that its connection still answers. A connection that
/// died without a word (a half-open socket, a server that was replaced) would otherwise
/// look connected while invalidations no longer arrive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Hears what the first levels and global single flights need, on a connection of its
/// own: with `CLIENT TRACKING ON BCAST` for the key prefixes of the caches with a level,
/// Redis pushes every change of a key under them (any client's write or delete, expiry,
/// eviction, a flush); a server without tracking falls back to the pub/sub channel that
/// writes then publish on, and one without RESP3 (before Redis 6) to a RESP2 pub/sub
/// connection. A `designated` listener (one per manager) also subscribes to the ends of
/// other instances' loads. The levels are readable only while it is connected; it empties
/// them whenever that ends, since changes may have been missed.
async fn listen(inner: Arc<Inner>, id: u64, designated: bool) {
    let (first, longest) = (inner.config.backoff_min, inner.config.backoff_max);
    let mut backoff = first;
    // Whether the server answers RESP3; learned on the first refusal of `HELLO 3`.
    let mut resp3 = true;
    let mut target = inner.target.subscribe();
    loop {
        let Some(server) = target.borrow_and_update().clone() else {
            // With sentinels, until they name a master.
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        let lost = Arc::new(Notify::new());
        let heard = if resp3 {
            let started = inner.hear(&server, &lost, designated);
            match tokio::time::timeout(inner.config.connect_timeout, started).await {
                Ok(Ok((conn, peers))) => {
                    let seen = PeersSeen {
                        locals: &inner.locals,
                        seen: peers,
                    };
                    inner.until_peers_announce().await;
                    inner.locals.heard(id, true);
                    let since = Instant::now();
                    let moved = inner.keep_hearing(conn, seen, &lost, &mut target).await;
                    moved || lasted(since)
                }
                Ok(Err(e)) if no_resp3(&e) => {
                    tracing::info!(
                        backend = "redis",
                        url = %inner.url,
                        reason = %inner.describe(&e),
                        "no RESP3 on this server: first levels are kept coherent by pub/sub messages of this library's writes only"
                    );
                    resp3 = false;
                    continue;
                }
                _ => false,
            }
        } else {
            let subscribed = inner.subscribe(&server, designated);
            match tokio::time::timeout(inner.config.connect_timeout, subscribed).await {
                Ok(Ok(pubsub)) => {
                    inner.until_peers_announce().await;
                    inner.locals.heard(id, true);
                    let since = Instant::now();
                    let mut moved = false;
                    let (mut sink, mut messages) = pubsub.split();
                    let wait = inner.config.response_timeout.max(HEARTBEAT);
                    loop {
                        let message = tokio::select! {
                            message = futures_util::StreamExt::next(&mut messages) => message,
                            // The master moved: hear the new one.
                            _ = target.changed() => {
                                moved = true;
                                None
                            }
                            // A silent connection (a paused server, a dropped route)
                            // would never end the stream: it must answer a `PING`.
                            () = tokio::time::sleep(HEARTBEAT) => {
                                let ping = sink.ping::<redis::Value>();
                                match tokio::time::timeout(wait, ping).await {
                                    Ok(Ok(_)) => continue,
                                    _ => None,
                                }
                            }
                        };
                        let Some(message) = message else { break };
                        let channel = message.get_channel_name().to_owned();
                        if let Ok(payload) = message.get_payload::<String>() {
                            inner.heard_message(&channel, &payload);
                        }
                    }
                    // The server may come back upgraded: ask for RESP3 again.
                    resp3 = true;
                    moved || lasted(since)
                }
                _ => false,
            }
        };
        inner.locals.heard(id, false);
        if heard {
            // It was heard for a while, or the master moved: reconnect at once.
            backoff = first;
        } else {
            // Refused, or cut off as soon as it connected (clients killed by a script, an
            // output buffer limit hit again and again): wait, longer each time. A new
            // master ends the wait: it may answer where the old one did not.
            tokio::select! {
                () = tokio::time::sleep(jittered(backoff)) => {}
                _ = target.changed() => {}
            }
            backoff = (backoff * 2).min(longest);
        }
    }
}

/// Whether a connection (the calls', a listener's, a subscription to a sentinel) made or
/// heard from `since` lasted long enough to count as a success: a second, a listener's
/// heartbeat. One lost sooner counts
/// as a failed attempt, so a server that cuts every connection off at once is not answered
/// by a reconnection each time, and the backoff keeps growing.
pub(super) fn lasted(since: Instant) -> bool {
    since.elapsed() >= HEARTBEAT
}

/// Whether the server does not speak RESP3 (before Redis 6, or `HELLO` renamed away): an
/// unknown `HELLO` or `NOPROTO`. Other refusals of the handshake (`LOADING`, too many
/// clients, a wrong password) pass and are retried as they are.
fn no_resp3(error: &RedisError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    error.kind() == redis::ErrorKind::RESP3NotSupported
        || error.code() == Some("NOPROTO")
        || (text.contains("unknown command") && text.contains("hello"))
}

/// Whether the server refused a command (an error reply), rather than the connection
/// failing: it will refuse it again.
fn refused(error: &RedisError) -> bool {
    !(error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout())
}

/// What a tracking listener last saw of levels that hear by pub/sub, counted in
/// [`LocalLevels`] until it stops looking (dropped with its connection).
struct PeersSeen<'a> {
    locals: &'a LocalLevels,
    seen: bool,
}

impl PeersSeen<'_> {
    fn saw(&mut self, now: bool) {
        self.locals.saw_pubsub_peers(self.seen, now);
        self.seen = now;
    }
}

impl Drop for PeersSeen<'_> {
    fn drop(&mut self) {
        self.locals.saw_pubsub_peers(self.seen, false);
    }
}

/// Whether the server refused `CLIENT TRACKING` for good (an ACL without it, a server or
/// proxy that lacks it) rather than for now: busy with a script (which `HELLO` passes),
/// loading its data, a replica without its master. Only the first makes the levels fall
/// back to pub/sub for the connection's life: an instance that did so on a passing
/// refusal would go on missing every write its tracking peers do not publish. The others
/// are retried as a failed connection is.
fn tracking_refused(error: &RedisError) -> bool {
    const FOR_NOW: [&str; 5] = ["BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"];
    refused(error) && !error.code().is_some_and(|code| FOR_NOW.contains(&code))
}

impl Inner {
    /// Opens a listener's RESP3 connection: tracking for the first levels where the
    /// server has it, pub/sub otherwise; pushes reach [`heard_push`](Self::heard_push).
    async fn hear(
        self: &Arc<Self>,
        server: &Server,
        lost: &Arc<Notify>,
        designated: bool,
    ) -> Result<(MultiplexedConnection, bool), RedisError> {
        let on_push = {
            let (inner, lost) = (Arc::downgrade(self), Arc::clone(lost));
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                if let Some(inner) = inner.upgrade() {
                    inner.heard_push(&lost, push);
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
            .set_push_sender(on_push);
        let mut conn = server
            .tracking_client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let levels = self.locals.any();
        let tracking = levels
            && {
                let mut cmd = redis::cmd("CLIENT");
                cmd.arg("TRACKING").arg("ON").arg("BCAST");
                for prefix in self
                    .locals
                    .tracked_prefixes(self.config.key_prefix.as_deref())
                {
                    cmd.arg("PREFIX").arg(prefix);
                }
                match cmd.query_async::<()>(&mut conn).await {
                    Ok(()) => true,
                    // Tracking refused (an ACL without it, a proxy): pub/sub.
                    Err(e) if tracking_refused(&e) => {
                        tracing::info!(
                            backend = "redis",
                            url = %self.url,
                            reason = %self.describe(&e),
                            "no CLIENT TRACKING on this server: first levels are kept coherent by pub/sub messages of this library's writes only"
                        );
                        false
                    }
                    Err(e) => return Err(e),
                }
            };
        let channels = self.channels(levels && !tracking, designated);
        if !channels.is_empty() {
            conn.subscribe(&channels).await?;
        }
        // Before writes stop announcing: whether another instance's level needs them to.
        let peers = tracking && self.look_for_pubsub_peers(&mut conn).await;
        self.locals.saw_pubsub_peers(false, peers);
        if levels {
            self.locals.set_heard_by(if tracking {
                local::Heard::Tracking
            } else {
                local::Heard::PubSub
            });
        }
        Ok((conn, peers))
    }

    /// Opens a listener's RESP2 pub/sub connection, for a server without RESP3.
    async fn subscribe(
        &self,
        server: &Server,
        designated: bool,
    ) -> Result<redis::aio::PubSub, RedisError> {
        let mut pubsub = server.client.get_async_pubsub().await?;
        let levels = self.locals.any();
        let channels = self.channels(levels, designated);
        if !channels.is_empty() {
            pubsub.subscribe(&channels).await?;
        }
        if levels {
            self.locals.set_heard_by(local::Heard::PubSub);
        }
        Ok(pubsub)
    }

    /// The channels a listener subscribes to: invalidations when they travel by pub/sub,
    /// the ends of loads for the designated listener of a manager with global flights.
    fn channels(&self, invalidations: bool, designated: bool) -> Vec<&str> {
        let mut channels = Vec::new();
        if invalidations {
            channels.push(self.channels.invalidate.as_str());
        }
        if designated && self.locals.global_flights() {
            channels.push(self.channels.loads.as_str());
        }
        channels
    }

    /// Waits until a listener's connection is lost, stops answering a `PING`, or goes to
    /// a server that is no longer the target (the sentinels named another master): `true`
    /// for the last.
    async fn keep_hearing(
        &self,
        mut conn: MultiplexedConnection,
        mut peers: PeersSeen<'_>,
        lost: &Notify,
        target: &mut watch::Receiver<Option<Arc<Server>>>,
    ) -> bool {
        loop {
            tokio::select! {
                () = lost.notified() => return false,
                _ = target.changed() => return true,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            let ping = redis::cmd("PING");
            let wait = self.config.response_timeout.max(HEARTBEAT);
            let answered = tokio::time::timeout(wait, ping.query_async::<()>(&mut conn));
            if !matches!(answered.await, Ok(Ok(()))) {
                return false;
            }
            if self.locals.heard_by() == local::Heard::Tracking {
                let now = self.look_for_pubsub_peers(&mut conn).await;
                peers.saw(now);
            }
        }
    }

    /// Records which server a new calls' connection reached (`INFO server`'s `run_id`);
    /// `true` when the calls reached a server before and this is another one, or it
    /// cannot say (`INFO` refused by an ACL): a reconnection to the same server (a breaker
    /// opened by a spell of timeouts) leaves the listener and the levels alone. An `INFO`
    /// not answered in time changes nothing.
    async fn reached(&self, conn: &mut MultiplexedConnection) -> bool {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info = tokio::time::timeout(
            self.config.response_timeout,
            cmd.query_async::<String>(conn),
        );
        let answered = match info.await {
            Ok(Ok(info)) => Some(
                info.lines()
                    .find_map(|line| line.strip_prefix("run_id:"))
                    .map(|id| id.trim().to_owned()),
            ),
            // Refused (`INFO` is `@dangerous` to ACLs): never known, so every
            // reconnection counts as a move.
            Ok(Err(e)) if refused(&e) => Some(None),
            // No answer in time, just after a spell of them: the same server, most likely.
            _ => None,
        };
        let mut reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
        let Some(run_id) = answered else {
            // Reached all the same: the next server that answers is compared.
            reached.0 = true;
            return false;
        };
        let (before, known) = &*reached;
        let moved = *before && (run_id.is_none() || *known != run_id);
        *reached = (true, run_id);
        moved
    }

    /// For a listener that hears by pub/sub: waits until every instance whose levels Redis
    /// tells itself has seen this one subscribed (their heartbeat, then a write in flight
    /// decided before it) and announces its writes, before the levels are read.
    async fn until_peers_announce(&self) {
        if self.locals.heard_by() == local::Heard::PubSub {
            // A heartbeat's sleep, its `PING` and its look, each answered within `wait`,
            // then a write decided just before, within its response timeout.
            let wait = self.config.response_timeout.max(HEARTBEAT);
            tokio::time::sleep(HEARTBEAT + 2 * wait + self.config.response_timeout).await;
        }
    }

    /// Whether any connection listens on the invalidation channel: another instance whose
    /// levels hear by pub/sub (tracking refused to it), which only messages reach. Writes
    /// announce while one does. Not known (a refusal, no answer): they announce.
    async fn look_for_pubsub_peers(&self, conn: &mut MultiplexedConnection) -> bool {
        let wait = self.config.response_timeout.max(HEARTBEAT);
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(&self.channels.invalidate);
        let counted = tokio::time::timeout(
            wait,
            numsub.query_async::<std::collections::HashMap<String, i64>>(conn),
        );
        match counted.await {
            Ok(Ok(counts)) => counts.values().any(|&n| n > 0),
            _ => true,
        }
    }

    /// Applies what a listener's RESP3 connection pushed: an invalidation from tracking
    /// (key names, or none for a flush), a pub/sub message, or the connection's end.
    fn heard_push(&self, lost: &Notify, push: PushInfo) {
        use redis::{PushKind, Value};
        let text = |value: &Value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        };
        let prefix = self.config.key_prefix.as_deref();
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys.iter().filter_map(text) {
                        self.locals.invalidate(&key, prefix);
                    }
                }
                // A flush: every key is gone.
                _ => self.locals.forget_all(),
            },
            PushKind::Message => {
                if let (Some(channel), Some(payload)) = (
                    push.data.first().and_then(text),
                    push.data.get(1).and_then(text),
                ) {
                    self.heard_message(&channel, &payload);
                }
            }
            PushKind::Disconnection => lost.notify_one(),
            _ => {}
        }
    }

    /// A pub/sub message: the end of another instance's load, or an invalidation.
    fn heard_message(&self, channel: &str, payload: &str) {
        if channel == self.channels.loads {
            self.locals.loads.ended(payload);
        } else if channel == self.channels.invalidate {
            self.locals
                .apply(payload, self.config.key_prefix.as_deref());
        }
    }
}

/// Keeps a connection up: sleeps while the breaker is closed, reconnects with capped
/// exponential backoff while it is open. A connection lost within a second of being made
/// (`connected`: when the one in use was) does not reset the backoff (see [`lasted`]),
/// unless it was left for the master the sentinels name.
async fn supervise(inner: Arc<Inner>, mut connected: Option<Instant>) {
    let (first, longest) = (inner.config.backoff_min, inner.config.backoff_max);
    let mut backoff = first;
    loop {
        if inner.conn.load().is_some() {
            match &inner.sentinels {
                None => inner.wake.notified().await,
                Some(sentinels) => tokio::select! {
                    () = inner.wake.notified() => {}
                    () = sentinels.may_have_moved() => {
                        if inner.check_master(sentinels).await {
                            // Left on purpose for the master the sentinels name: connect
                            // to it at once, however young the connection was.
                            connected = None;
                            backoff = first;
                        }
                    }
                },
            }
            continue;
        }
        if let Some(since) = connected.take() {
            if lasted(since) {
                backoff = first;
            } else {
                // Cut off as soon as it was made (clients killed by a script, a proxy):
                // wait before the next, as after a refusal, so such a server is not
                // answered by a reconnection per failed call.
                inner.pause(backoff).await;
                backoff = (backoff * 2).min(longest);
            }
        }
        match inner.connect().await {
            Ok(mut conn) => {
                if inner.reached(&mut conn).await {
                    // The address leads elsewhere now (a DNS name or a virtual IP moved
                    // by a failover) while the listener's connection may still hear the
                    // old server: the levels start over (what they hold came from there)
                    // before any call reaches the new one, and the listener reconnects
                    // too, the levels bypassed until it hears the server the calls go to.
                    match inner.listener_id.load(Ordering::Acquire) {
                        0 => inner.locals.forget_all(),
                        // Away until it reconnects: the levels emptied and bypassed.
                        id => inner.locals.heard(id, false),
                    }
                    inner.target.send_modify(|_| {});
                }
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                // The outage ends before a call can use the connection: a call failing
                // at once must find it over, or its `went_down` would be lost to the
                // `came_back` after it (the breaker open, health saying up).
                inner.outage.came_back(&inner.url);
                inner.conn.store(Some(Arc::new(conn)));
                connected = Some(Instant::now());
            }
            Err(error) => {
                inner.outage.reconnect_failed(&inner.url, error);
                inner
                    .outage
                    .still_down(&inner.url, inner.config.summary_interval);
                inner.pause(backoff).await;
                backoff = (backoff * 2).min(longest);
            }
        }
    }
}

impl Inner {
    /// The supervisor's wait before its next connection attempt: `backoff`, jittered; with
    /// sentinels, a new master announced ends it (it is there now).
    async fn pause(&self, backoff: Duration) {
        let pause = tokio::time::sleep(jittered(backoff));
        match &self.sentinels {
            None => pause.await,
            Some(sentinels) => tokio::select! {
                () = pause => {}
                () = sentinels.announced() => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server's reply `line` (`-CODE text`) becomes.
    fn server_error(line: &str) -> RedisError {
        redis::parse_redis_value(format!("{line}\r\n").as_bytes())
            .expect("a RESP error line")
            .extract_error()
            .expect_err("an error reply")
    }

    #[test]
    fn an_mgets_reply_maps_to_its_keys_only_when_it_has_one_value_per_key() {
        let reply = |resp: &str| redis::parse_redis_value(resp.as_bytes()).expect("RESP");
        let values: Vec<_> = mget_values(reply("*3\r\n$1\r\na\r\n$-1\r\n$2\r\nbc\r\n"), 3)
            .expect("one value or nil per key")
            .collect();
        assert_eq!(values, [Some(b"a".to_vec()), None, Some(b"bc".to_vec())]);
        for (resp, keys) in [
            // One value short, one too many: no value can be trusted to be its key's.
            ("*2\r\n$1\r\na\r\n$-1\r\n", 3),
            ("*2\r\n$1\r\na\r\n$-1\r\n", 1),
            // Not an MGET's reply.
            (":1\r\n", 1),
            ("*2\r\n:1\r\n$1\r\na\r\n", 2),
        ] {
            assert!(
                mget_values(reply(resp), keys).is_err(),
                "{resp:?} taken for {keys} keys' values"
            );
        }
    }

    #[test]
    fn passing_refusals_of_tracking_are_retried_and_lasting_ones_fall_back() {
        for line in [
            "-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "-LOADING Redis is loading the dataset in memory",
            "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "-TRYAGAIN Multiple keys request during rehashing of slot",
            "-CLUSTERDOWN The cluster is down",
        ] {
            assert!(
                !tracking_refused(&server_error(line)),
                "taken as lasting: {line}"
            );
        }
        for line in [
            "-NOPERM User default has no permissions to run the 'client|tracking' command",
            "-ERR unknown subcommand 'TRACKING'. Try CLIENT HELP.",
            "-ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'",
        ] {
            assert!(
                tracking_refused(&server_error(line)),
                "taken as passing: {line}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_wait() {
        for _ in 0..1000 {
            let j = jittered(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j <= Duration::from_millis(100),
                "{j:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
