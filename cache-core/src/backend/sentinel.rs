//! `redis+sentinel://`: the master Redis Sentinel names, followed across failovers.
//!
//! The connection itself is a [`RedisBackend`](super::redis::RedisBackend) like any
//! other (breaker, deadlines, coalescing, listener); what this module adds is where it
//! goes. Before every connection attempt its supervisor asks the sentinels
//! ([`Sentinels::locate`]) and connects to the address most of them name, and only if that
//! server's `ROLE` says master ([`verify_master`]): a reconnection never goes back to a
//! demoted master, and a replica is never written to. It moves to another master when
//!
//! - a sentinel announces `+switch-master` for the master name (pub/sub, [`watch`]);
//! - a reply says the server is no longer a master (`READONLY`), the connection is lost,
//!   or the breaker opens (the usual reconnection, which asks the sentinels first);
//! - a periodic check ([`RECHECK_EVERY`]) finds the sentinels naming another master, in
//!   case an announcement was missed.
//!
//! redis-rs's `sentinel` feature is not used: it finds the master with `SENTINEL
//! MASTERS` through connections without deadlines, caches one connection per sentinel
//! behind `&mut self`, does not say which sentinels answered, and does not follow
//! `+switch-master`; the three commands needed are written here instead.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::redis::{ask_once, jittered, lasted};
use crate::config::{CacheConfig, NodeAddr, NodeTemplate, RedisSettings, SentinelSettings};
use crate::health::SentinelHealth;

/// How often the sentinels are asked whether the master moved, besides announcements:
/// an announcement is lost while no subscription to a sentinel is up.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// The channel on which sentinels announce a failover's new master.
const SWITCH_CHANNEL: &str = "+switch-master";

/// The sentinels of one URL, the switches followed, and how to reach the master they name.
pub(crate) struct Sentinels {
    addrs: Vec<NodeAddr>,
    /// How to connect to a sentinel.
    template: NodeTemplate,
    /// How to connect to the master a sentinel names.
    nodes: NodeTemplate,
    master_name: String,
    config: CacheConfig,
    /// Woken by a `+switch-master` for this master, and when a subscription starts (an
    /// announcement may have been missed before).
    switched: Notify,
    switches: Mutex<Switches>,
}

/// The switches from one master to another followed since `connect`.
#[derive(Default)]
struct Switches {
    last: Option<SystemTime>,
    count: u64,
}

/// What one sentinel said of the master: its address, no such master, or no answer.
type Answer = Result<Option<NodeAddr>, String>;

impl Sentinels {
    pub(crate) fn new(settings: SentinelSettings) -> Self {
        Sentinels {
            addrs: settings.sentinels,
            template: settings.sentinel_nodes,
            nodes: settings.nodes,
            master_name: settings.master_name,
            config: settings.config,
            switched: Notify::new(),
            switches: Mutex::default(),
        }
    }

    fn switches(&self) -> std::sync::MutexGuard<'_, Switches> {
        self.switches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How to connect to the master at `addr`.
    pub(crate) fn settings(&self, addr: &NodeAddr) -> Result<RedisSettings, String> {
        self.nodes.settings(addr, &self.config)
    }

    /// Records that the connection moved from one master to another, now.
    pub(crate) fn record_switch(&self) {
        let mut switches = self.switches();
        switches.last = Some(SystemTime::now());
        switches.count += 1;
    }

    /// Waits until the master may have moved: an announcement, or the periodic check.
    pub(crate) async fn may_have_moved(&self) {
        tokio::select! {
            () = self.switched.notified() => {}
            () = tokio::time::sleep(RECHECK_EVERY) => {}
        }
    }

    /// Waits for an announcement only (a reconnection backoff it cuts short).
    pub(crate) async fn announced(&self) {
        self.switched.notified().await;
    }

    /// Asks every sentinel at once where the master is, each within the connect timeout.
    /// `Ok`: the addresses named, the most named first (during a failover sentinels may
    /// disagree for a moment; the connection checks `ROLE` on each in turn). `Err`: no
    /// sentinel answered, or none knows the master name, said plainly.
    pub(crate) async fn locate(&self) -> Result<Vec<NodeAddr>, String> {
        let ranked = self.locate_ranked().await?;
        Ok(ranked.into_iter().map(|(addr, _)| addr).collect())
    }

    /// [`locate`](Self::locate) with how many sentinels named each address.
    pub(crate) async fn locate_ranked(&self) -> Result<Vec<(NodeAddr, usize)>, String> {
        let answers = self.ask_all().await;
        let named = rank(answers.iter().filter_map(|(_, a)| a.as_ref().ok()?.clone()));
        if !named.is_empty() {
            return Ok(named);
        }
        let answered: Vec<String> = answers
            .iter()
            .filter(|(_, a)| a.is_ok())
            .map(|(s, _)| s.to_string())
            .collect();
        if !answered.is_empty() {
            return Err(format!(
                "no sentinel knows a master named `{}` (asked {}); check the master name of the URL against `sentinel monitor` in the sentinels' configuration",
                self.master_name,
                answered.join(", ")
            ));
        }
        let failures: Vec<String> = answers
            .iter()
            .filter_map(|(s, a)| a.as_ref().err().map(|e| format!("{s}: {e}")))
            .collect();
        Err(format!("no sentinel answered ({})", failures.join("; ")))
    }

    /// Every sentinel's answer, in the URL's order.
    async fn ask_all(&self) -> Vec<(NodeAddr, Answer)> {
        let answers = join_all(self.addrs.iter().map(|s| self.ask(s))).await;
        self.addrs.iter().cloned().zip(answers).collect()
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on a connection of its own to `sentinel`.
    async fn ask(&self, sentinel: &NodeAddr) -> Answer {
        let settings = self.template.settings(sentinel, &self.config)?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master_name);
        let found: Option<(String, u16)> =
            ask_once(&settings, &cmd, self.config.connect_timeout).await?;
        Ok(found.map(|(host, port)| NodeAddr::new(&host, port)))
    }

    /// What health shows: the master followed (`master`), which sentinels answer now,
    /// the last switch.
    pub(crate) async fn health(&self, master: Option<&NodeAddr>) -> SentinelHealth {
        let answers = self.ask_all().await;
        let switches = self.switches();
        let mut answered = Vec::new();
        let mut unreachable = Vec::new();
        for (sentinel, answer) in answers {
            match answer {
                Ok(_) => answered.push(sentinel.to_string()),
                Err(e) => unreachable.push(format!("{sentinel}: {e}")),
            }
        }
        SentinelHealth {
            master_name: self.master_name.clone(),
            master: master.map(NodeAddr::to_string),
            answered,
            unreachable,
            last_switch_unix_ms: switches
                .last
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64),
            switches: switches.count,
        }
    }
}

/// The addresses the sentinels named, each with how many named it, the most named first;
/// on a tie, in the order of the URL's sentinels (the first to name it).
fn rank(named: impl Iterator<Item = NodeAddr>) -> Vec<(NodeAddr, usize)> {
    let mut ranked: Vec<(NodeAddr, usize)> = Vec::new();
    for addr in named {
        match ranked.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, votes)) => *votes += 1,
            None => ranked.push((addr, 1)),
        }
    }
    // Stable: a tie keeps the order of first naming.
    ranked.sort_by_key(|(_, votes)| std::cmp::Reverse(*votes));
    ranked
}

/// The master to leave `current` for, when more sentinels name it than name `current`:
/// while they disagree evenly (a sentinel with a stale view, a failover half announced)
/// the connection stays where it is, instead of leaving a working master for one that
/// may refuse it and coming back, again at every check.
pub(crate) fn moved_from<'a>(
    ranked: &'a [(NodeAddr, usize)],
    current: &NodeAddr,
) -> Option<&'a NodeAddr> {
    let (top, votes) = ranked.first()?;
    let current_votes = ranked
        .iter()
        .find(|(addr, _)| addr == current)
        .map_or(0, |(_, votes)| *votes);
    (top != current && *votes > current_votes).then_some(top)
}

/// Fails unless the server behind `conn` says it is a master: a sentinel's answer may be
/// a moment old, and a restarted old master believes it still is one only until the
/// sentinels demote it, which `ROLE` on this very connection would then show.
pub(crate) async fn verify_master(conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
    let role: redis::Role = redis::cmd("ROLE").query_async(conn).await?;
    Ok(matches!(role, redis::Role::Primary { .. }))
}

/// Subscribes to `+switch-master` on every sentinel, each resubscribing with backoff
/// when its connection ends, and wakes [`Sentinels::may_have_moved`] on an announcement
/// for this master or a new subscription. Runs until aborted.
pub(crate) async fn watch(sentinels: std::sync::Arc<Sentinels>) {
    join_all(sentinels.addrs.iter().map(|s| watch_one(&sentinels, s))).await;
}

async fn watch_one(sentinels: &Sentinels, sentinel: &NodeAddr) {
    let config = &sentinels.config;
    let (first, longest) = (config.backoff_min, config.backoff_max);
    let mut backoff = first;
    loop {
        let subscribed = async {
            let settings = sentinels.template.settings(sentinel, config).ok()?;
            let mut pubsub = settings.client.get_async_pubsub().await.ok()?;
            pubsub.subscribe(SWITCH_CHANNEL).await.ok()?;
            Some(pubsub)
        };
        if let Ok(Some(pubsub)) = tokio::time::timeout(config.connect_timeout, subscribed).await {
            let since = tokio::time::Instant::now();
            // Not subscribed until now: a switch may have gone unheard.
            sentinels.switched.notify_one();
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                // `<master name> <old ip> <old port> <new ip> <new port>`
                let fields: Vec<&str> = payload.split(' ').collect();
                if fields.first() == Some(&sentinels.master_name.as_str()) {
                    tracing::info!(
                        backend = "redis-sentinel",
                        sentinel = %sentinel,
                        master_name = %sentinels.master_name,
                        from = %fields.get(1..3).map(|f| f.join(":")).unwrap_or_default(),
                        to = %fields.get(3..5).map(|f| f.join(":")).unwrap_or_default(),
                        "a sentinel announced a new master"
                    );
                    sentinels.switched.notify_one();
                }
            }
            // A subscription that lasted: resubscribe after the shortest wait. One cut off
            // at once (clients killed by a script) counts as a failed attempt, so such a
            // sentinel is not answered by a new subscription each time.
            if lasted(since) {
                backoff = first;
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(longest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> NodeAddr {
        NodeAddr::new("127.0.0.1", port)
    }

    #[test]
    fn the_most_named_master_comes_first_and_a_tie_keeps_the_order_of_naming() {
        let ranked = rank([at(2), at(1), at(1), at(3)].into_iter());
        assert_eq!(ranked, vec![(at(1), 2), (at(2), 1), (at(3), 1)]);
        let tie = rank([at(2), at(1)].into_iter());
        assert_eq!(tie, vec![(at(2), 1), (at(1), 1)]);
        assert!(rank(std::iter::empty()).is_empty());
    }

    #[test]
    fn the_connection_leaves_its_master_only_when_more_sentinels_name_another() {
        // Most name another: leave.
        assert_eq!(
            moved_from(&rank([at(2), at(2), at(1)].into_iter()), &at(1)),
            Some(&at(2))
        );
        // None names the current one any more: leave.
        assert_eq!(moved_from(&rank([at(2)].into_iter()), &at(1)), Some(&at(2)));
        // A tie, the other named first: stay.
        assert_eq!(moved_from(&rank([at(2), at(1)].into_iter()), &at(1)), None);
        assert_eq!(
            moved_from(&rank([at(2), at(2), at(1), at(1)].into_iter()), &at(1)),
            None
        );
        // Most name the current one: stay.
        assert_eq!(
            moved_from(&rank([at(1), at(2), at(1)].into_iter()), &at(1)),
            None
        );
        assert_eq!(moved_from(&[], &at(1)), None);
    }
}
