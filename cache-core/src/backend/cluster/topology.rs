//! The slot map: which master serves each hash slot, learned with `CLUSTER SLOTS` and
//! kept current by a background task: soon after a reply says it changed (`MOVED`,
//! `CLUSTERDOWN`; not `ASK`, which a migration answers until it ends; see [`supervise`]
//! for how soon), every second while a master is unreachable (it may have failed over to
//! a replica), and every 30 s otherwise.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use tokio::time::Instant;

use super::slot::{SLOTS, slot};
use super::{Cluster, RedisBackend};
use crate::backend::redis::{ask_once, jittered};
use crate::config::{NodeAddr, RedisSettings};

/// Marks a slot no master serves.
pub(super) const UNASSIGNED: u16 = u16::MAX;
/// Slot map refresh interval while every master answers.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Slot map refresh interval while a master is unreachable: a replica may take over.
const REFRESH_WHILE_DEGRADED: Duration = Duration::from_secs(1);

/// Which master serves each slot.
pub(super) struct Topology {
    /// Index into `nodes` per slot, `UNASSIGNED` where no master serves it.
    pub(super) slots: Box<[u16]>,
    pub(super) nodes: Vec<Node>,
}

pub(super) struct Node {
    pub(super) addr: NodeAddr,
    pub(super) link: Arc<RedisBackend>,
    /// How many slots it serves.
    pub(super) slots: u32,
}

impl Topology {
    pub(super) fn empty() -> Self {
        Topology {
            slots: vec![UNASSIGNED; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }

    pub(super) fn node_of(&self, key: &str) -> Option<&Node> {
        self.nodes
            .get(usize::from(self.slots[usize::from(slot(key.as_bytes()))]))
    }
}

impl Cluster {
    /// Learns the slot map from the first node that answers `CLUSTER SLOTS`: the masters
    /// already connected, then the URL's nodes. Connects to masters it did not know.
    /// `Ok(true)` when the map changed.
    pub(super) async fn refresh(&self) -> Result<bool, String> {
        let (ranges, asked) = self.fetch_slots().await?;
        let current = self.topology.load_full();
        let mut addrs: Vec<NodeAddr> = Vec::new();
        let mut slots = vec![UNASSIGNED; SLOTS].into_boxed_slice();
        for (start, end, host, port) in ranges {
            // An unknown endpoint: these slots stay unassigned.
            let Some(addr) = master_addr(&host, port, &asked) else {
                continue;
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
            return Ok(false);
        }

        // Connections to masters already known are kept; new ones connect concurrently.
        // Every master tracks its keys for the first levels; one listens for pub/sub
        // messages (the ends of loads): a kept one that already does, or else the first
        // new one. When the one that listened left the cluster (a scale-in) and no master
        // is new, a kept one is connected anew to listen, where loads need it.
        let known = |addr: &NodeAddr| current.nodes.iter().find(|n| n.addr == *addr);
        let listening = addrs.iter().filter_map(known).any(|n| n.link.listens());
        let listener = if listening {
            None
        } else {
            addrs.iter().find(|a| known(a).is_none()).or_else(|| {
                // A master that is up, if one is: the listener starts hearing at once.
                let up = addrs
                    .iter()
                    .find(|a| known(a).is_some_and(|n| n.link.is_up()));
                up.or(addrs.first())
                    .filter(|_| self.locals.global_flights())
            })
        };
        let kept = |addr: &NodeAddr| known(addr).filter(|_| listener != Some(addr));
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
            // Keys whose slot moved may have changed on a master that did not know the
            // levels held them: the levels start over.
            self.locals.forget_all();
            tracing::info!(
                backend = "redis-cluster",
                url = %self.url,
                masters = %nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>().join(","),
                "redis cluster slot map changed"
            );
        }
        self.topology.store(Arc::new(Topology { slots, nodes }));
        Ok(true)
    }

    /// `CLUSTER SLOTS` as `(first slot, last slot, master host, master port)`, and the
    /// node that answered.
    async fn fetch_slots(&self) -> Result<(Vec<SlotRange>, NodeAddr), String> {
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
    async fn ask_seed(&self, seed: &NodeAddr) -> Result<Vec<SlotRange>, String> {
        let settings = self.template.settings(seed, &self.config)?;
        ask_slots(&settings, self.config.connect_timeout).await
    }

    fn all_up(&self) -> bool {
        let topology = self.topology.load();
        !topology.nodes.is_empty() && topology.nodes.iter().all(|n| n.link.is_up())
    }
}

/// Keeps the slot map current: on a hint from a node, and periodically.
///
/// Hints come with replies, so under traffic they come in bursts, and for as long as the
/// cause lasts: a cluster refusing keys with `CLUSTERDOWN` until a failover ends answers
/// every call with one. Refreshes a hint asks for are spaced by the shortest backoff, and
/// while they find the map unchanged the spacing doubles, up to the degraded refresh
/// interval (1 s), instead of one `CLUSTER SLOTS` per backoff (20 a second) for the whole
/// outage. A periodic refresh or a changed map sets the spacing back to the shortest, so a
/// `MOVED` after quiet times is followed at once.
pub(super) async fn supervise(inner: Arc<Cluster>) {
    let (first, longest) = (inner.config.backoff_min, inner.config.backoff_max);
    let mut backoff = first;
    let mut spacing = first;
    // Whether the coming refresh was asked for by a hint, not the clock.
    let mut hinted = false;
    let mut last_refresh = Instant::now();
    loop {
        if inner.outage.is_down() {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(longest);
        } else {
            backoff = first;
            let every = if inner.all_up() {
                REFRESH_EVERY
            } else {
                REFRESH_WHILE_DEGRADED
            };
            hinted = tokio::select! {
                _ = inner.changed.notified() => true,
                _ = tokio::time::sleep_until(last_refresh + every) => false,
            };
            // A burst of hints asks for one refresh, not one each.
            tokio::time::sleep_until(last_refresh + spacing).await;
        }
        last_refresh = Instant::now();
        match inner.refresh().await {
            Ok(changed) => {
                spacing = if changed || !hinted {
                    first
                } else {
                    (spacing * 2).min(REFRESH_WHILE_DEGRADED.max(first))
                };
                inner.outage.came_back(&inner.url);
            }
            Err(error) => inner.outage.went_down(&inner.url, error),
        }
    }
}

/// A range of slots and its master as `CLUSTER SLOTS` names it: `(first slot, last
/// slot, host, port)`.
pub(crate) type SlotRange = (u16, u16, String, u16);

/// Asks the node of `settings` for `CLUSTER SLOTS` on a connection of its own, within
/// `timeout`; errors have the password scrubbed.
pub(crate) async fn ask_slots(
    settings: &RedisSettings,
    timeout: Duration,
) -> Result<Vec<SlotRange>, String> {
    ask_once::<Value>(settings, redis::cmd("CLUSTER").arg("SLOTS"), timeout)
        .await
        .and_then(parse_slots)
}

/// The master of a slot range: an empty host is the node that was `asked`; `?` is an
/// endpoint the cluster does not know (`None`).
pub(crate) fn master_addr(host: &str, port: u16, asked: &NodeAddr) -> Option<NodeAddr> {
    match host {
        "" => Some(NodeAddr {
            host: asked.host.clone(),
            port,
        }),
        "?" => None,
        host => Some(NodeAddr::new(host, port)),
    }
}

/// Parses a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
fn parse_slots(reply: Value) -> Result<Vec<SlotRange>, String> {
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
        // A slot past the last, or a range that ends before it starts: not Redis's.
        if first > last || usize::from(last) >= SLOTS {
            return Err(malformed());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let range = |first, last| {
            Value::Array(vec![Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                node("10.0.0.1", 7000),
            ])])
        };
        assert!(
            parse_slots(range(0, 16384)).is_err(),
            "a slot past the last"
        );
        assert!(
            parse_slots(range(10, 9)).is_err(),
            "a range ending before it starts"
        );
        assert!(parse_slots(range(16383, 16383)).is_ok());
        // A host sent as a simple string (a proxy, RESP3 servers that do) reads the same.
        let simple = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![
                Value::SimpleString("10.0.0.9".to_owned()),
                Value::Int(7009),
            ]),
        ])]);
        assert_eq!(
            parse_slots(simple).unwrap(),
            vec![(0, 16383, "10.0.0.9".to_owned(), 7009)]
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(NodeAddr::new("::1", 7000).to_string(), "[::1]:7000");
        assert_eq!(NodeAddr::new("[::1]", 7000).to_string(), "[::1]:7000");
        assert_eq!(NodeAddr::new("10.0.0.1", 7000).to_string(), "10.0.0.1:7000");
    }
}
