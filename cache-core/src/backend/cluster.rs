//! `redis+cluster://`: a Redis Cluster, one guarded connection per master.
//!
//! Each master gets its own [`RedisBackend`]: a multiplexed connection behind its own
//! circuit breaker, with its own supervisor that reconnects and probes with `PING`. So a
//! paused or killed master opens its breaker only; calls for the slots of the other
//! masters go on untouched, and recovery is automatic per node.
//!
//! redis-rs's `cluster_async::ClusterConnection` is not used: it routes every request
//! through one task that stops serving all nodes while it rebuilds the slot map (which it
//! does on the first error of any node), fails a whole multi-slot `MGET` when one node
//! does not answer, and does not expose the slot map, so a batch could not be sent as
//! one round trip per node.
//!
//! Routing: the slot of a key is computed here (CRC16 of the key or of its `{hash tag}`,
//! as Redis does), and a map from slot to master, learned with `CLUSTER SLOTS`, names its
//! node. A batch (`mget`, `mset`, multi-key delete) is split by node, and each node gets
//! one pipeline, one round trip, holding one command per slot (`MGET`/`DEL`) or per entry
//! (`SET ... EX`); the pipelines to different nodes run concurrently, each bounded by the
//! response timeout, and the replies are put back in key order.
//!
//! The slot map is refreshed by a background task: at once when a reply says it changed
//! (`MOVED`, `ASK`, `CLUSTERDOWN`), every second while a master is unreachable (it may
//! have failed over to a replica), and every 30 s otherwise. A key whose reply was a
//! redirection degrades for that call; the next call goes to the new owner.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use redis::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Unavailable;
use super::redis::{RedisBackend, jittered, set_command};
use crate::config::{CacheConfig, ClusterSettings, NodeAddr, NodeTemplate};
use crate::health::{Health, NodeHealth};
use crate::local::LocalLevels;

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// Marks a slot no master serves.
const UNASSIGNED: u16 = u16::MAX;
/// Slot map refresh interval while every master answers.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Slot map refresh interval while a master is unreachable: a replica may take over.
const REFRESH_WHILE_DEGRADED: Duration = Duration::from_secs(1);

pub(crate) struct ClusterBackend {
    inner: Arc<Cluster>,
    supervisor: tokio::task::JoinHandle<()>,
}

struct Cluster {
    seeds: Vec<NodeAddr>,
    template: NodeTemplate,
    config: CacheConfig,
    url: String,
    topology: ArcSwap<Topology>,
    /// Woken by node connections whose replies say the slot map changed.
    changed: Arc<Notify>,
    /// Calls that degraded because no known master serves their slot.
    unrouted: AtomicU64,
    /// Whether the slot map could not be learned: logged once per outage.
    down: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The first levels; one master's connection listens for their invalidations (pub/sub
    /// messages reach every node of a cluster).
    locals: Arc<LocalLevels>,
}

/// Which master serves each slot.
struct Topology {
    /// Index into `nodes` per slot, `UNASSIGNED` where no master serves it.
    slots: Box<[u16]>,
    nodes: Vec<Node>,
}

struct Node {
    addr: NodeAddr,
    link: Arc<RedisBackend>,
    slots: u32,
}

impl Topology {
    fn empty() -> Self {
        Topology {
            slots: vec![UNASSIGNED; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }

    fn node_of(&self, key: &str) -> Option<&Node> {
        self.nodes
            .get(usize::from(self.slots[usize::from(slot(key.as_bytes()))]))
    }

    /// Groups key indices by the node serving them, and by slot within a node; keys no
    /// master serves are returned apart.
    fn group<'k>(&self, keys: impl Iterator<Item = &'k str>) -> (Vec<NodeBatch<'_>>, Vec<usize>) {
        let mut batches: Vec<NodeBatch<'_>> = Vec::new();
        let mut unrouted = Vec::new();
        for (index, key) in keys.enumerate() {
            let slot = slot(key.as_bytes());
            let Some(node) = self.nodes.get(usize::from(self.slots[usize::from(slot)])) else {
                unrouted.push(index);
                continue;
            };
            let batch = match batches.iter_mut().position(|b| std::ptr::eq(b.node, node)) {
                Some(i) => &mut batches[i],
                None => {
                    batches.push(NodeBatch {
                        node,
                        slots: Vec::new(),
                    });
                    batches.last_mut().expect("just pushed")
                }
            };
            match batch.slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, indices)) => indices.push(index),
                None => batch.slots.push((slot, vec![index])),
            }
        }
        (batches, unrouted)
    }
}

/// The keys of one call that one node serves, by slot.
struct NodeBatch<'t> {
    node: &'t Node,
    slots: Vec<(u16, Vec<usize>)>,
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl ClusterBackend {
    /// Learns the slot map and connects to every master, or starts degraded when no node
    /// answers; either way a background task keeps the map current from now on.
    pub(crate) async fn start(settings: ClusterSettings, locals: Arc<LocalLevels>) -> Self {
        let inner = Arc::new(Cluster {
            seeds: settings.seeds,
            template: settings.nodes,
            config: settings.config,
            url: settings.redacted,
            topology: ArcSwap::from_pointee(Topology::empty()),
            changed: Arc::new(Notify::new()),
            unrouted: AtomicU64::new(0),
            down: AtomicBool::new(false),
            last_error: Mutex::new(None),
            locals,
        });
        match inner.refresh().await {
            Ok(()) => tracing::info!(
                backend = "redis-cluster",
                url = %inner.url,
                masters = inner.topology.load().nodes.len(),
                "cache connected"
            ),
            Err(error) => inner.went_down(error),
        }
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        ClusterBackend { inner, supervisor }
    }

    /// The connection to the master serving `key`, or `Down` when none does.
    fn link_for(&self, key: &str) -> Result<Arc<RedisBackend>, Unavailable> {
        let topology = self.inner.topology.load();
        match topology.node_of(key) {
            Some(node) => Ok(Arc::clone(&node.link)),
            None => {
                self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
                Err(Unavailable::Down)
            }
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        self.link_for(key)?.get(key).await
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        announce: bool,
    ) -> Result<(), Unavailable> {
        self.link_for(key)?.set(key, value, ttl, announce).await
    }

    pub(crate) async fn del(&self, key: &str, announce: bool) -> Result<bool, Unavailable> {
        self.link_for(key)?.del(key, announce).await
    }

    pub(crate) async fn del_if_eq(&self, key: &str, expected: &[u8]) -> Result<bool, Unavailable> {
        self.link_for(key)?.del_if_eq(key, expected).await
    }

    /// One `MGET` per slot, one pipeline per node, the nodes concurrently; each key's
    /// value or, for keys of a node that failed, why.
    pub(crate) async fn mget(&self, keys: &[String]) -> Vec<Result<Option<Vec<u8>>, Unavailable>> {
        let topology = self.inner.topology.load_full();
        let (batches, unrouted) = topology.group(keys.iter().map(String::as_str));
        let mut out: Vec<Result<Option<Vec<u8>>, Unavailable>> = vec![Ok(None); keys.len()];
        self.count_unrouted(&unrouted, &mut out);
        let sent = batches.iter().map(|batch| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (_, indices) in &batch.slots {
                let cmd = pipe.cmd("MGET");
                for &i in indices {
                    cmd.arg(&keys[i]);
                }
            }
            let link = Arc::clone(&batch.node.link);
            async move { link.pipeline::<Vec<Value>>(&pipe).await }
        });
        for (batch, replies) in batches.iter().zip(join_all(sent).await) {
            let replies = match replies {
                Ok(replies) if replies.len() == batch.slots.len() => Ok(replies),
                Ok(_) => Err(Unavailable::Failed),
                Err(why) => Err(why),
            };
            let replies = match replies {
                Ok(replies) => replies,
                Err(why) => {
                    for (_, indices) in &batch.slots {
                        indices.iter().for_each(|&i| out[i] = Err(why));
                    }
                    continue;
                }
            };
            for ((_, indices), reply) in batch.slots.iter().zip(replies) {
                match reply {
                    Value::Array(values) if values.len() == indices.len() => {
                        for (&i, value) in indices.iter().zip(values) {
                            out[i] = match value {
                                Value::Nil => Ok(None),
                                Value::BulkString(bytes) => Ok(Some(bytes)),
                                _ => Err(Unavailable::Failed),
                            };
                        }
                    }
                    other => {
                        if let Err(error) = other.extract_error() {
                            batch.node.link.refused(&error);
                        }
                        indices
                            .iter()
                            .for_each(|&i| out[i] = Err(Unavailable::Failed));
                    }
                }
            }
        }
        out
    }

    /// One pipeline of `SET ... EX` per node, the nodes concurrently. `Ok` only when
    /// every entry was stored.
    pub(crate) async fn mset(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
        announce: bool,
    ) -> Result<(), Unavailable> {
        let topology = self.inner.topology.load_full();
        let (batches, unrouted) = topology.group(entries.iter().map(|(k, _)| k.as_str()));
        let mut outcome = Ok(());
        if !unrouted.is_empty() {
            self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
            outcome = Err(Unavailable::Down);
        }
        let sent = batches.iter().map(|batch| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in batch.slots.iter().flat_map(|(_, indices)| indices) {
                let (key, value) = &entries[i];
                pipe.add_command(set_command(key, value, ttl));
            }
            if announce {
                // Ignored replies: only the SETs' come back.
                for &i in batch.slots.iter().flat_map(|(_, indices)| indices) {
                    batch.node.link.announce(&mut pipe, &entries[i].0);
                }
            }
            let link = Arc::clone(&batch.node.link);
            async move { link.pipeline::<Vec<Value>>(&pipe).await }
        });
        for (batch, replies) in batches.iter().zip(join_all(sent).await) {
            let failed = match replies {
                Ok(replies) => replies.into_iter().try_for_each(|reply| {
                    reply.extract_error().map(drop).map_err(|error| {
                        batch.node.link.refused(&error);
                        Unavailable::Failed
                    })
                }),
                Err(why) => Err(why),
            };
            outcome = outcome.and(failed);
        }
        outcome
    }

    /// Clears `{prefix}:*` on every master concurrently (`SCAN` + `UNLINK` on each), then
    /// tells other instances once: pub/sub reaches every node.
    pub(crate) async fn clear(&self, prefix: &str, announce: bool) -> (u64, Option<Unavailable>) {
        let topology = self.inner.topology.load_full();
        let Some(first) = topology.nodes.first() else {
            self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
            return (0, Some(Unavailable::Down));
        };
        let cleared = join_all(
            topology
                .nodes
                .iter()
                .map(|node| node.link.clear(prefix, false)),
        )
        .await;
        let mut removed = 0;
        let mut failure = None;
        for (n, why) in cleared {
            removed += n;
            failure = failure.or(why);
        }
        if announce {
            let mut pipe = redis::pipe();
            first.link.announce(&mut pipe, &format!("{prefix}:*"));
            if let Err(why) = first.link.pipeline::<()>(&pipe).await {
                failure = failure.or(Some(why));
            }
        }
        (removed, failure)
    }

    /// One `DEL` per slot, one pipeline per node, the nodes concurrently: how many
    /// entries were removed, and why some keys could not be, if any.
    pub(crate) async fn del_many(
        &self,
        keys: &[String],
        announce: bool,
    ) -> (u64, Option<Unavailable>) {
        let topology = self.inner.topology.load_full();
        let (batches, unrouted) = topology.group(keys.iter().map(String::as_str));
        let mut failure = None;
        if !unrouted.is_empty() {
            self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
            failure = Some(Unavailable::Down);
        }
        let sent = batches.iter().map(|batch| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (_, indices) in &batch.slots {
                let cmd = pipe.cmd("DEL");
                for &i in indices {
                    cmd.arg(&keys[i]);
                }
            }
            if announce {
                for &i in batch.slots.iter().flat_map(|(_, indices)| indices) {
                    batch.node.link.announce(&mut pipe, &keys[i]);
                }
            }
            let link = Arc::clone(&batch.node.link);
            async move { link.pipeline::<Vec<Value>>(&pipe).await }
        });
        let mut removed = 0;
        for (batch, replies) in batches.iter().zip(join_all(sent).await) {
            match replies {
                Ok(replies) => {
                    for reply in replies {
                        match reply {
                            Value::Int(n) => removed += n.max(0) as u64,
                            other => {
                                if let Err(error) = other.extract_error() {
                                    batch.node.link.refused(&error);
                                }
                                failure.get_or_insert(Unavailable::Failed);
                            }
                        }
                    }
                }
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
        (removed, failure)
    }

    fn count_unrouted(&self, unrouted: &[usize], out: &mut [Result<Option<Vec<u8>>, Unavailable>]) {
        if !unrouted.is_empty() {
            self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
            unrouted
                .iter()
                .for_each(|&i| out[i] = Err(Unavailable::Down));
        }
    }

    /// Pings every master concurrently. Healthy when every slot has a master and every
    /// master answers; `nodes` says which do.
    pub(crate) async fn health(&self) -> Health {
        let inner = &self.inner;
        let topology = inner.topology.load_full();
        let reports = join_all(topology.nodes.iter().map(|n| n.link.health())).await;
        let nodes: Vec<NodeHealth> = topology
            .nodes
            .iter()
            .zip(reports)
            .map(|(node, report)| {
                NodeHealth::from_report(node.addr.to_string(), node.slots, report)
            })
            .collect();
        let uncovered = topology.slots.iter().filter(|&&n| n == UNASSIGNED).count();
        let cluster_error = if nodes.is_empty() {
            Some(
                inner
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "the slot map is not known yet".to_owned()),
            )
        } else if uncovered > 0 {
            Some(format!("{uncovered} of {SLOTS} slots have no master"))
        } else {
            None
        };
        Health::cluster(
            &inner.url,
            nodes,
            cluster_error,
            inner.unrouted.load(Ordering::Relaxed),
        )
    }
}

impl Cluster {
    /// Learns the slot map from the first node that answers `CLUSTER SLOTS`: the masters
    /// already connected, then the URL's nodes. Connects to masters it did not know.
    async fn refresh(&self) -> Result<(), String> {
        let (ranges, asked) = self.fetch_slots().await?;
        let current = self.topology.load_full();
        let mut addrs: Vec<NodeAddr> = Vec::new();
        let mut slots = vec![UNASSIGNED; SLOTS].into_boxed_slice();
        for (start, end, host, port) in ranges {
            let addr = match host.as_str() {
                // An empty host is the node that was asked.
                "" => NodeAddr {
                    host: asked.host.clone(),
                    port,
                },
                // An unknown endpoint: these slots stay unassigned.
                "?" => continue,
                host => NodeAddr::new(host, port),
            };
            let index = match addrs.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    addrs.push(addr);
                    addrs.len() - 1
                }
            };
            for slot in usize::from(start)..=usize::from(end).min(SLOTS - 1) {
                slots[slot] = index as u16;
            }
        }
        if addrs.is_empty() {
            return Err(format!("{asked} answered that no master serves any slot"));
        }
        let unchanged = current.slots == slots
            && current.nodes.len() == addrs.len()
            && current.nodes.iter().zip(&addrs).all(|(n, a)| n.addr == *a);
        if unchanged {
            return Ok(());
        }

        // Connections to masters already known are kept; new ones connect concurrently.
        // One master listens for the first levels' invalidations: a kept one that already
        // does, or else the first new one.
        let kept = |addr: &NodeAddr| current.nodes.iter().find(|n| n.addr == *addr);
        let listening = addrs.iter().filter_map(kept).any(|n| n.link.listens());
        let listener = (!listening)
            .then(|| addrs.iter().find(|a| kept(a).is_none()))
            .flatten();
        let links = join_all(addrs.iter().map(|addr| async move {
            if let Some(node) = kept(addr) {
                return Ok(Arc::clone(&node.link));
            }
            let settings = self.template.settings(addr, &self.config)?;
            let listen = listener == Some(addr);
            Ok::<_, String>(Arc::new(
                RedisBackend::start_node(
                    settings,
                    Arc::clone(&self.changed),
                    Arc::clone(&self.locals),
                    listen,
                )
                .await,
            ))
        }))
        .await;
        let mut nodes = Vec::with_capacity(addrs.len());
        for (addr, link) in addrs.into_iter().zip(links) {
            nodes.push(Node {
                addr,
                link: link?,
                slots: 0,
            });
        }
        for &index in slots.iter().filter(|&&i| i != UNASSIGNED) {
            nodes[usize::from(index)].slots += 1;
        }
        if !current.nodes.is_empty() {
            tracing::info!(
                backend = "redis-cluster",
                url = %self.url,
                masters = %nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>().join(","),
                "redis cluster slot map changed"
            );
        }
        self.topology.store(Arc::new(Topology { slots, nodes }));
        Ok(())
    }

    /// `CLUSTER SLOTS` as `(first slot, last slot, master host, master port)`, and the
    /// node that answered.
    async fn fetch_slots(&self) -> Result<(Vec<(u16, u16, String, u16)>, NodeAddr), String> {
        let mut errors = Vec::new();
        let current = self.topology.load_full();
        for node in current.nodes.iter().filter(|n| n.link.is_up()) {
            match node
                .link
                .query::<Value>(redis::cmd("CLUSTER").arg("SLOTS"))
                .await
            {
                Ok(reply) => match parse_slots(reply) {
                    Ok(ranges) => return Ok((ranges, node.addr.clone())),
                    Err(e) => errors.push(format!("{}: {e}", node.addr)),
                },
                Err(why) => errors.push(format!("{}: {why:?}", node.addr)),
            }
        }
        for seed in &self.seeds {
            match self.ask_seed(seed).await {
                Ok(ranges) => return Ok((ranges, seed.clone())),
                Err(e) => errors.push(format!("{seed}: {e}")),
            }
        }
        Err(format!(
            "no node answered CLUSTER SLOTS ({})",
            errors.join("; ")
        ))
    }

    /// `CLUSTER SLOTS` on a connection of its own to `seed`, within the connect timeout.
    async fn ask_seed(&self, seed: &NodeAddr) -> Result<Vec<(u16, u16, String, u16)>, String> {
        let settings = self.template.settings(seed, &self.config)?;
        let secret = settings.secret;
        let scrub = |text: String| match &secret {
            Some(s) => s.scrub(text),
            None => text,
        };
        let redis_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.connect_timeout));
        let attempt = async {
            let mut conn = settings
                .client
                .get_multiplexed_async_connection_with_config(&redis_config)
                .await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(reply)) => parse_slots(reply),
            Ok(Err(e)) => Err(scrub(e.to_string())),
            Err(_) => Err(format!(
                "no answer within the connect timeout ({:?})",
                self.config.connect_timeout
            )),
        }
    }

    fn all_up(&self) -> bool {
        let topology = self.topology.load();
        !topology.nodes.is_empty() && topology.nodes.iter().all(|n| n.link.is_up())
    }

    /// Records that the slot map cannot be learned; logs only on the transition.
    fn went_down(&self, error: String) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(
                backend = "redis-cluster",
                url = %self.url,
                error = %error,
                "redis cluster unavailable: cache reads miss and writes return false until a node answers"
            );
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    fn came_back(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(
                backend = "redis-cluster",
                url = %self.url,
                masters = self.topology.load().nodes.len(),
                "redis cluster slot map learned"
            );
        }
    }
}

/// Keeps the slot map current: on a hint from a node, and periodically.
async fn supervise(inner: Arc<Cluster>) {
    let (first, longest) = (inner.config.backoff_min, inner.config.backoff_max);
    let mut backoff = first;
    let mut last_refresh = Instant::now();
    loop {
        if inner.down.load(Ordering::Acquire) {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(longest);
        } else {
            backoff = first;
            let every = if inner.all_up() {
                REFRESH_EVERY
            } else {
                REFRESH_WHILE_DEGRADED
            };
            tokio::select! {
                _ = inner.changed.notified() => {}
                _ = tokio::time::sleep_until(last_refresh + every) => {}
            }
            // A burst of redirections asks for one refresh, not one each.
            tokio::time::sleep_until(last_refresh + first).await;
        }
        last_refresh = Instant::now();
        match inner.refresh().await {
            Ok(()) => inner.came_back(),
            Err(error) => inner.went_down(error),
        }
    }
}

/// Parses a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
fn parse_slots(reply: Value) -> Result<Vec<(u16, u16, String, u16)>, String> {
    let malformed = || "malformed CLUSTER SLOTS reply".to_owned();
    let Value::Array(ranges) = reply else {
        return Err(malformed());
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(items) = range else {
            return Err(malformed());
        };
        let (Some(first), Some(last), Some(Value::Array(master))) = (
            items.first().and_then(int),
            items.get(1).and_then(int),
            items.get(2),
        ) else {
            return Err(malformed());
        };
        let host = match master.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => return Err(malformed()),
        };
        let port = master.get(1).and_then(int).ok_or_else(malformed)?;
        out.push((first, last, host, port));
    }
    Ok(out)
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
const CRC16: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The hash slot of `key`: only the part between the first `{` and the next `}` counts
/// when it is not empty, so keys sharing such a tag share a slot.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            let close = tag.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &tag[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Values of `CLUSTER KEYSLOT` on a real server.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % 16384);
        // Only the first `{` opens a tag.
        assert_eq!(slot(b"a{b}{c}"), slot(b"b"));
        assert_eq!(slot(b"{user:profile}:7"), slot(b"user:profile"));
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(
            parse_slots(reply).unwrap(),
            vec![
                (0, 5460, "10.0.0.1".to_owned(), 7000),
                (5461, 16383, String::new(), 7001)
            ]
        );
        assert!(parse_slots(Value::Int(1)).is_err());
        assert!(parse_slots(Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(NodeAddr::new("::1", 7000).to_string(), "[::1]:7000");
        assert_eq!(NodeAddr::new("[::1]", 7000).to_string(), "[::1]:7000");
        assert_eq!(NodeAddr::new("10.0.0.1", 7000).to_string(), "10.0.0.1:7000");
    }
}
