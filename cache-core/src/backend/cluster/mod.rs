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
//! - [`slot`]: the slot of a key, CRC16 of the key or of its `{hash tag}`, as Redis does;
//! - [`topology`]: the map from slot to master, learned with `CLUSTER SLOTS` and kept
//!   current by a background task; a key whose reply was a redirection degrades for that
//!   call, the next call goes to the new owner;
//! - [`route`]: a batch (`mget`, `mset`, multi-key delete) split by node, each node one
//!   pipeline, one round trip, holding one command per slot (`MGET`/`DEL`) or per entry
//!   (`SET ... EX`); the pipelines to different nodes run concurrently, each bounded by
//!   the response timeout, and the replies are put back in key order.

mod route;
mod slot;
pub(crate) mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use redis::Value;
use tokio::sync::Notify;

#[cfg(test)]
pub(crate) use slot::slot;

use super::outage::Outage;
use super::redis::{RedisBackend, set_command};
use super::{FetchedTimed, Timed, Unavailable, Write, remaining_from_pttl};
use crate::config::{CacheConfig, ClusterSettings, NodeAddr, NodeTemplate};
use crate::health::{Health, NodeHealth};
use crate::local::LocalLevels;
use route::fan_out;
use slot::SLOTS;
use topology::{Topology, UNASSIGNED};

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
    /// Whether the slot map can be learned: logged once per outage, its last error in
    /// health.
    outage: Outage,
    /// The first levels: every master's listener tracks its keys for them, and one also
    /// hears pub/sub messages (they reach every node of a cluster).
    locals: Arc<LocalLevels>,
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
            outage: Outage::new("redis-cluster", "redis cluster"),
            locals,
        });
        match inner.refresh().await {
            Ok(_) => tracing::info!(
                backend = "redis-cluster",
                url = %inner.url,
                masters = inner.topology.load().nodes.len(),
                "cache connected"
            ),
            Err(error) => inner.outage.went_down(&inner.url, error),
        }
        let supervisor = tokio::spawn(topology::supervise(Arc::clone(&inner)));
        ClusterBackend { inner, supervisor }
    }

    /// The connection to the master serving `key`, or `Down` when none does.
    pub(crate) fn link(&self, key: &str) -> Result<Arc<RedisBackend>, Unavailable> {
        self.link_for(key)
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

    /// Counts a batch call some of whose keys no master serves: `Down` when there are.
    fn unrouted(&self, unrouted: &[usize]) -> Option<Unavailable> {
        if unrouted.is_empty() {
            return None;
        }
        self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
        Some(Unavailable::Down)
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
        if let Some(why) = self.unrouted(&unrouted) {
            unrouted.iter().for_each(|&i| out[i] = Err(why));
        }
        let replies = fan_out(&batches, |batch, pipe| {
            for (_, indices) in &batch.slots {
                let cmd = pipe.cmd("MGET");
                for &i in indices {
                    cmd.arg(&keys[i]);
                }
            }
        })
        .await;
        for (batch, replies) in batches.iter().zip(replies) {
            let replies = match replies {
                Ok(replies) if replies.len() == batch.slots.len() => replies,
                failed => {
                    let why = failed.err().unwrap_or(Unavailable::Failed);
                    batch.indices().for_each(|i| out[i] = Err(why));
                    continue;
                }
            };
            for ((_, indices), reply) in batch.slots.iter().zip(replies) {
                match batch.check(reply) {
                    Ok(Value::Array(values)) if values.len() == indices.len() => {
                        for (&i, value) in indices.iter().zip(values) {
                            out[i] = match value {
                                Value::Nil => Ok(None),
                                Value::BulkString(bytes) => Ok(Some(bytes)),
                                _ => Err(Unavailable::Failed),
                            };
                        }
                    }
                    _ => indices
                        .iter()
                        .for_each(|&i| out[i] = Err(Unavailable::Failed)),
                }
            }
        }
        out
    }

    /// `GET` and `PTTL` of `key` on its master, in one round trip.
    pub(crate) async fn get_timed(&self, key: &str) -> Result<Option<Timed>, Unavailable> {
        self.link_for(key)?.get_timed(key).await
    }

    pub(crate) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        self.link_for(key)?.set_nx(key, value, ttl).await
    }

    pub(crate) async fn expire_if_eq(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        self.link_for(key)?.expire_if_eq(key, expected, ttl).await
    }

    /// Publishes on any master: pub/sub messages reach every node of a cluster.
    pub(crate) async fn publish_load(&self, message: &str) -> Result<(), Unavailable> {
        let topology = self.inner.topology.load_full();
        let Some(node) = topology.nodes.iter().find(|n| n.link.is_up()) else {
            return Err(Unavailable::Down);
        };
        node.link.publish_load(message).await
    }

    /// [`mget`](Self::mget) with a `PTTL` per key in the same pipelines.
    pub(crate) async fn mget_timed(&self, keys: &[String]) -> Vec<FetchedTimed> {
        let topology = self.inner.topology.load_full();
        let (batches, unrouted) = topology.group(keys.iter().map(String::as_str));
        let mut out: Vec<FetchedTimed> = vec![Ok(None); keys.len()];
        if let Some(why) = self.unrouted(&unrouted) {
            unrouted.iter().for_each(|&i| out[i] = Err(why));
        }
        let replies = fan_out(&batches, |batch, pipe| {
            for (_, indices) in &batch.slots {
                let cmd = pipe.cmd("MGET");
                for &i in indices {
                    cmd.arg(&keys[i]);
                }
                for &i in indices {
                    pipe.cmd("PTTL").arg(&keys[i]);
                }
            }
        })
        .await;
        for (batch, replies) in batches.iter().zip(replies) {
            let expected = batch.slots.iter().map(|(_, i)| 1 + i.len()).sum::<usize>();
            let replies = match replies {
                Ok(replies) if replies.len() == expected => replies,
                failed => {
                    let why = failed.err().unwrap_or(Unavailable::Failed);
                    batch.indices().for_each(|i| out[i] = Err(why));
                    continue;
                }
            };
            let mut replies = replies.into_iter();
            for (_, indices) in &batch.slots {
                let values = replies.next().map(|r| batch.check(r));
                let pttls: Vec<Value> = replies.by_ref().take(indices.len()).collect();
                let Some(Ok(Value::Array(values))) = values else {
                    indices
                        .iter()
                        .for_each(|&i| out[i] = Err(Unavailable::Failed));
                    continue;
                };
                if values.len() != indices.len() {
                    indices
                        .iter()
                        .for_each(|&i| out[i] = Err(Unavailable::Failed));
                    continue;
                }
                for ((&i, value), pttl) in indices.iter().zip(values).zip(pttls) {
                    out[i] = match (value, batch.check(pttl)) {
                        (Value::Nil, _) => Ok(None),
                        (Value::BulkString(bytes), Ok(Value::Int(pttl))) => Ok(Some(Timed {
                            bytes,
                            remaining: remaining_from_pttl(pttl),
                        })),
                        _ => Err(Unavailable::Failed),
                    };
                }
            }
        }
        out
    }

    /// One pipeline of `SET ... EX` per node, the nodes concurrently. `Ok` only when
    /// every entry was stored.
    pub(crate) async fn mset(&self, entries: &[Write], announce: bool) -> Result<(), Unavailable> {
        let topology = self.inner.topology.load_full();
        let (batches, unrouted) = topology.group(entries.iter().map(|e| e.key.as_str()));
        let mut outcome = self.unrouted(&unrouted).map_or(Ok(()), Err);
        let replies = fan_out(&batches, |batch, pipe| {
            for i in batch.indices() {
                let entry = &entries[i];
                pipe.add_command(set_command(&entry.key, &entry.bytes, entry.ttl));
            }
            if announce {
                // Ignored replies: only the SETs' come back.
                for i in batch.indices() {
                    batch.node.link.announce(pipe, &entries[i].key);
                }
            }
        })
        .await;
        for (batch, replies) in batches.iter().zip(replies) {
            let stored = replies.and_then(|replies| {
                replies
                    .into_iter()
                    .try_for_each(|reply| batch.check(reply).map(drop))
            });
            outcome = outcome.and(stored);
        }
        outcome
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
        let mut failure = self.unrouted(&unrouted);
        let replies = fan_out(&batches, |batch, pipe| {
            for (_, indices) in &batch.slots {
                let cmd = pipe.cmd("DEL");
                for &i in indices {
                    cmd.arg(&keys[i]);
                }
            }
            if announce {
                for i in batch.indices() {
                    batch.node.link.announce(pipe, &keys[i]);
                }
            }
        })
        .await;
        let mut removed = 0;
        for (batch, replies) in batches.iter().zip(replies) {
            let replies = match replies {
                Ok(replies) => replies,
                Err(why) => {
                    failure.get_or_insert(why);
                    continue;
                }
            };
            for reply in replies {
                match batch.check(reply) {
                    Ok(Value::Int(n)) => removed += n.max(0) as u64,
                    _ => {
                        failure.get_or_insert(Unavailable::Failed);
                    }
                }
            }
        }
        (removed, failure)
    }

    /// Clears the keys matching `pattern` on every master concurrently (`SCAN` + `UNLINK`
    /// on each), then tells other instances once: pub/sub reaches every node.
    pub(crate) async fn clear(&self, pattern: &str, announce: bool) -> (u64, Option<Unavailable>) {
        let topology = self.inner.topology.load_full();
        let Some(first) = topology.nodes.first() else {
            self.inner.unrouted.fetch_add(1, Ordering::Relaxed);
            return (0, Some(Unavailable::Down));
        };
        let cleared = join_all(
            topology
                .nodes
                .iter()
                .map(|node| node.link.clear(pattern, false)),
        )
        .await;
        let mut removed = 0;
        let mut failure = None;
        for (n, why) in cleared {
            removed += n;
            failure = failure.or(why);
        }
        // Through a master that is up: pub/sub reaches every node from any of them.
        let announcer = topology
            .nodes
            .iter()
            .find(|n| n.link.is_up())
            .unwrap_or(first);
        if announce && announcer.link.announces() {
            let mut pipe = redis::pipe();
            announcer.link.announce(&mut pipe, pattern);
            if let Err(why) = announcer.link.pipeline::<()>(&pipe).await {
                failure = failure.or(Some(why));
            }
        }
        (removed, failure)
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
                    .outage
                    .report()
                    .0
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
