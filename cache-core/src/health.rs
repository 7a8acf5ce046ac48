//! What `health()` reports, shaped for a health endpoint.

use std::time::Duration;

use serde::Serialize;

/// The state of a manager's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthStatus {
    /// The backend answers; caches work.
    Connected,
    /// A backend was asked for but does not answer; caches degrade and the manager keeps
    /// reconnecting in the background.
    Degraded,
    /// Not connected (before `connect`, after `disconnect`); caches degrade.
    Disconnected,
}

/// The circuit breaker in front of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Breaker {
    /// Calls go to the backend.
    Closed,
    /// Calls degrade at once, without network; a background task probes and reconnects.
    Open,
}

/// The manager's health, serializable as JSON:
/// `{"status":"connected","healthy":true,"breaker":"closed",...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Connection state.
    pub status: HealthStatus,
    /// `true` when caches are served by the backend.
    pub healthy: bool,
    /// The circuit breaker's state.
    pub breaker: Breaker,
    /// `"redis"`, `"redis-sentinel"`, `"redis-cluster"`, `"memory"` or `"none"`.
    pub backend: &'static str,
    /// The URL connected to, with any password replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The prefix every key of the manager is under (`prefix=`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Round trip of a `PING`, in milliseconds, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The last error while degraded (password removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the backend has been unavailable, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_for_ms: Option<u64>,
    /// Cache calls that degraded because the backend was unavailable, since `connect`.
    pub degraded_calls: u64,
    /// In a Redis Cluster, every master of the slot map: each one's own health. Empty
    /// (and not serialized) otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeHealth>,
    /// With `redis+sentinel://`: the master followed, the sentinels that answered, the
    /// last switch. `None` (and not serialized) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelHealth>,
}

/// What the sentinels of a `redis+sentinel://` URL say, as [`Health::sentinel`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SentinelHealth {
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// `host:port` of the master connected to, as the sentinels name it; `None` until
    /// one was found.
    pub master: Option<String>,
    /// The sentinels that answered just now (`host:port`).
    pub answered: Vec<String>,
    /// The sentinels that did not, each with why (password removed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    /// When the manager last followed the master to another server (a failover), in
    /// milliseconds since the Unix epoch; `None` before the first switch.
    pub last_switch_unix_ms: Option<u64>,
    /// How many times it did since `connect`.
    pub switches: u64,
}

/// The health of one master of a Redis Cluster, as [`Health::nodes`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port` as the cluster announces it.
    pub address: String,
    /// How many of the 16384 hash slots it serves.
    pub slots: u32,
    /// `true` when it answered a `PING` just now.
    pub healthy: bool,
    /// The breaker in front of this node: open while it is unreachable.
    pub breaker: Breaker,
    /// Round trip of the `PING`, in milliseconds, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The last error while unreachable (password removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it has been unreachable, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_for_ms: Option<u64>,
    /// Calls routed to it that degraded, since `connect`.
    pub degraded_calls: u64,
}

impl NodeHealth {
    /// One node's row, from the health report of its own connection.
    pub(crate) fn from_report(address: String, slots: u32, report: Health) -> Self {
        NodeHealth {
            address,
            slots,
            healthy: report.healthy,
            breaker: report.breaker,
            latency_ms: report.latency_ms,
            error: report.error,
            down_for_ms: report.down_for_ms,
            degraded_calls: report.degraded_calls,
        }
    }
}

impl Health {
    pub(crate) fn disconnected() -> Self {
        Health {
            status: HealthStatus::Disconnected,
            healthy: false,
            breaker: Breaker::Open,
            backend: "none",
            url: None,
            key_prefix: None,
            latency_ms: None,
            error: None,
            down_for_ms: None,
            degraded_calls: 0,
            nodes: Vec::new(),
            sentinel: None,
        }
    }

    pub(crate) fn memory() -> Self {
        Health {
            status: HealthStatus::Connected,
            healthy: true,
            breaker: Breaker::Closed,
            backend: "memory",
            url: Some("memory://".to_owned()),
            ..Health::disconnected()
        }
    }

    pub(crate) fn redis_up(url: &str, rtt: Duration, degraded_calls: u64) -> Self {
        Health {
            status: HealthStatus::Connected,
            healthy: true,
            breaker: Breaker::Closed,
            backend: "redis",
            url: Some(url.to_owned()),
            latency_ms: Some(rtt.as_secs_f64() * 1e3),
            degraded_calls,
            ..Health::disconnected()
        }
    }

    pub(crate) fn redis_down(
        url: &str,
        breaker: Breaker,
        error: String,
        down_for: Option<Duration>,
        degraded_calls: u64,
    ) -> Self {
        Health {
            status: HealthStatus::Degraded,
            healthy: false,
            breaker,
            backend: "redis",
            url: Some(url.to_owned()),
            error: Some(error),
            down_for_ms: down_for.map(|d| d.as_millis() as u64),
            degraded_calls,
            ..Health::disconnected()
        }
    }

    /// A cluster is healthy when every slot has a master and every master answers. Its
    /// latency is the slowest master's, its error the first problem found, its breaker
    /// open while any master's is, and its degraded calls those of every node plus the
    /// calls no master could serve (`unrouted`).
    pub(crate) fn cluster(
        url: &str,
        nodes: Vec<NodeHealth>,
        cluster_error: Option<String>,
        unrouted: u64,
    ) -> Self {
        let healthy = cluster_error.is_none() && nodes.iter().all(|n| n.healthy);
        let error = cluster_error.or_else(|| {
            nodes.iter().find(|n| !n.healthy).map(|n| {
                format!(
                    "{}: {}",
                    n.address,
                    n.error.as_deref().unwrap_or("no reply")
                )
            })
        });
        Health {
            status: if healthy {
                HealthStatus::Connected
            } else {
                HealthStatus::Degraded
            },
            healthy,
            breaker: if !nodes.is_empty() && nodes.iter().all(|n| n.breaker == Breaker::Closed) {
                Breaker::Closed
            } else {
                Breaker::Open
            },
            backend: "redis-cluster",
            url: Some(url.to_owned()),
            key_prefix: None,
            latency_ms: nodes.iter().filter_map(|n| n.latency_ms).reduce(f64::max),
            error,
            down_for_ms: nodes.iter().filter_map(|n| n.down_for_ms).max(),
            degraded_calls: unrouted + nodes.iter().map(|n| n.degraded_calls).sum::<u64>(),
            nodes,
            sentinel: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16, healthy: bool, latency_ms: Option<f64>, degraded: u64) -> NodeHealth {
        NodeHealth {
            address: format!("127.0.0.1:{port}"),
            slots: 16384 / 4,
            healthy,
            breaker: if healthy {
                Breaker::Closed
            } else {
                Breaker::Open
            },
            latency_ms,
            error: (!healthy).then(|| "connection refused".to_owned()),
            down_for_ms: (!healthy).then_some(port as u64),
            degraded_calls: degraded,
        }
    }

    #[test]
    fn a_cluster_is_healthy_only_with_every_master_and_reports_the_slowest_and_the_sum() {
        let all = vec![
            node(7000, true, Some(0.2), 3),
            node(7001, true, Some(1.5), 4),
            node(7002, true, Some(0.7), 0),
        ];
        let health = Health::cluster("redis+cluster://127.0.0.1:7000", all, None, 2);
        assert!(health.healthy);
        assert_eq!(health.status, HealthStatus::Connected);
        assert_eq!(health.breaker, Breaker::Closed);
        assert_eq!(health.latency_ms, Some(1.5), "the slowest master's latency");
        assert_eq!(
            health.degraded_calls,
            3 + 4 + 2,
            "every master's, plus unrouted calls"
        );
        assert_eq!(health.error, None);

        let one_down = vec![
            node(7000, true, Some(0.2), 1),
            node(7001, false, None, 5),
            node(7002, false, None, 6),
        ];
        let health = Health::cluster("redis+cluster://127.0.0.1:7000", one_down, None, 0);
        assert!(!health.healthy);
        assert_eq!(health.status, HealthStatus::Degraded);
        assert_eq!(
            health.breaker,
            Breaker::Open,
            "any master's open breaker shows"
        );
        assert_eq!(health.latency_ms, Some(0.2));
        assert_eq!(health.degraded_calls, 12);
        assert_eq!(health.down_for_ms, Some(7002), "the longest outage");
        assert_eq!(
            health.error.as_deref(),
            Some("127.0.0.1:7001: connection refused"),
            "the first master down is named"
        );

        // Every master answering is not enough while slots have no master.
        let covered = vec![node(7000, true, Some(0.2), 0)];
        let uncovered = Some("4096 of 16384 slots have no master".to_owned());
        let health = Health::cluster("redis+cluster://127.0.0.1:7000", covered, uncovered, 0);
        assert!(!health.healthy);
        assert_eq!(
            health.error.as_deref(),
            Some("4096 of 16384 slots have no master")
        );
        // No master known at all: the breaker is open.
        let health = Health::cluster("redis+cluster://127.0.0.1:7000", Vec::new(), None, 0);
        assert_eq!(health.breaker, Breaker::Open);
    }
}
