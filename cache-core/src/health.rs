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
    /// `"redis"`, `"memory"` or `"none"`.
    pub backend: &'static str,
    /// The URL connected to, with any password replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
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
}

impl Health {
    pub(crate) fn disconnected() -> Self {
        Health {
            status: HealthStatus::Disconnected,
            healthy: false,
            breaker: Breaker::Open,
            backend: "none",
            url: None,
            latency_ms: None,
            error: None,
            down_for_ms: None,
            degraded_calls: 0,
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
}
