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
    /// Connected was asked for but the backend does not answer; caches degrade and the
    /// manager keeps reconnecting in the background.
    Degraded,
    /// Not connected (before `connect`, after `disconnect`); caches degrade.
    Disconnected,
}

/// The manager's health, serializable as JSON: `{"status":"connected","healthy":true,...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Connection state.
    pub status: HealthStatus,
    /// `true` when caches are served by the backend.
    pub healthy: bool,
    /// `"redis"`, `"memory"` or `"none"`.
    pub backend: &'static str,
    /// The URL connected to, with any password replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Round trip of a `PING`, in milliseconds, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The last connection error while degraded (password removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Cache calls that degraded (missed or reported `false`) because the backend was
    /// unavailable, since this backend was connected.
    pub degraded_calls: u64,
}

impl Health {
    pub(crate) fn disconnected() -> Self {
        Health {
            status: HealthStatus::Disconnected,
            healthy: false,
            backend: "none",
            url: None,
            latency_ms: None,
            error: None,
            degraded_calls: 0,
        }
    }

    pub(crate) fn memory() -> Self {
        Health {
            status: HealthStatus::Connected,
            healthy: true,
            backend: "memory",
            url: Some("memory://".to_owned()),
            latency_ms: None,
            error: None,
            degraded_calls: 0,
        }
    }

    pub(crate) fn redis(url: &str, ping: Result<Duration, String>, degraded_calls: u64) -> Self {
        let (status, latency_ms, error) = match ping {
            Ok(rtt) => (HealthStatus::Connected, Some(rtt.as_secs_f64() * 1e3), None),
            Err(e) => (HealthStatus::Degraded, None, Some(e)),
        };
        Health {
            status,
            healthy: status == HealthStatus::Connected,
            backend: "redis",
            url: Some(url.to_owned()),
            latency_ms,
            error,
            degraded_calls,
        }
    }
}
