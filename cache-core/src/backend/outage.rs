//! What an outage of a backend looks like to the operator: one error line when it starts,
//! a summary per interval while it lasts, one info line when it ends, and at most one
//! warning per [`REFUSAL_LOG_EVERY`] for commands the server refused. Shared by a Redis
//! connection and by a Redis Cluster's slot map, so both log alike. It is also where
//! health reports read the last error and how long the outage has lasted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// At most one warning per this interval for commands the server refused (e.g. OOM).
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection attempt failed.
pub(crate) struct ConnectFailure {
    /// The error, password scrubbed.
    pub text: String,
    /// The server answered but refused us (authentication, permissions, database):
    /// retrying alone will not fix it.
    pub refused: bool,
}

/// Keeps logging to one line per transition: down, a summary per interval while down,
/// back.
pub(crate) struct Outage {
    /// The `backend` field of every line: `redis`, `redis-cluster`.
    backend: &'static str,
    /// What is unavailable, as the lines name it: `redis`, `redis cluster`.
    subject: &'static str,
    down: AtomicBool,
    degraded_total: AtomicU64,
    degraded_at_down: AtomicU64,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    since: Option<Instant>,
    last_error: Option<String>,
    /// The reason last logged at error level during this outage.
    logged_error: Option<String>,
    last_summary: Option<Instant>,
    last_refusal_log: Option<Instant>,
    refusals_unlogged: u64,
}

impl Outage {
    pub(crate) fn new(backend: &'static str, subject: &'static str) -> Self {
        Outage {
            backend,
            subject,
            down: AtomicBool::new(false),
            degraded_total: AtomicU64::new(0),
            degraded_at_down: AtomicU64::new(0),
            state: Mutex::new(OutageState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_degraded(&self) {
        self.degraded_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls degraded since this backend started.
    pub(crate) fn degraded_total(&self) -> u64 {
        self.degraded_total.load(Ordering::Relaxed)
    }

    fn degraded_since_down(&self) -> u64 {
        self.degraded_total() - self.degraded_at_down.load(Ordering::Relaxed)
    }

    /// The last error of the current outage, and how long it has lasted; `None`s while up.
    pub(crate) fn report(&self) -> (Option<String>, Option<Duration>) {
        let state = self.state();
        (state.last_error.clone(), state.since.map(|s| s.elapsed()))
    }

    /// Whether an outage is in progress.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Records that the backend cannot be used; logs only on the transition to down.
    pub(crate) fn went_down(&self, url: &str, error: String) {
        let mut state = self.state();
        if !self.down.swap(true, Ordering::AcqRel) {
            let now = Instant::now();
            state.since = Some(now);
            state.last_summary = Some(now);
            self.degraded_at_down
                .store(self.degraded_total(), Ordering::Relaxed);
            tracing::error!(
                backend = self.backend,
                url,
                error = %error,
                "{} unavailable: cache reads miss and writes return false until it is back",
                self.subject
            );
            state.logged_error = Some(error.clone());
        }
        state.last_error = Some(error);
    }

    /// A reconnection attempt failed. When the server answered but refused us (NOAUTH,
    /// NOPERM, a wrong database), that is logged at error level at once, once per
    /// reason: it will not fix itself, and the first line of the outage only said the
    /// socket dropped. Plain connection failures wait for the periodic summary.
    pub(crate) fn reconnect_failed(&self, url: &str, failure: ConnectFailure) {
        self.went_down(url, failure.text.clone());
        if !failure.refused {
            return;
        }
        let mut state = self.state();
        if state.logged_error.as_deref() != Some(failure.text.as_str()) {
            tracing::error!(
                backend = self.backend,
                url,
                error = %failure.text,
                degraded_calls = self.degraded_since_down(),
                "{} refuses the reconnection; cache calls keep degrading until this is fixed",
                self.subject
            );
            state.logged_error = Some(failure.text);
        }
    }

    /// Logs the periodic summary while down, at most once per `every`.
    pub(crate) fn still_down(&self, url: &str, every: Duration) {
        let mut state = self.state();
        let now = Instant::now();
        if state.last_summary.is_some_and(|t| now - t < every) {
            return;
        }
        state.last_summary = Some(now);
        let down_for = state.since.map(|s| now - s).unwrap_or_default();
        tracing::warn!(
            backend = self.backend,
            url,
            down_for_s = down_for.as_secs(),
            degraded_calls = self.degraded_since_down(),
            error = state.last_error.as_deref().unwrap_or(""),
            "{} still unavailable",
            self.subject
        );
    }

    /// Records that the backend works again; logs only on the transition to up.
    pub(crate) fn came_back(&self, url: &str) {
        if self.down.swap(false, Ordering::AcqRel) {
            let mut state = self.state();
            let down_for = state
                .since
                .take()
                .map(|s| Instant::now() - s)
                .unwrap_or_default();
            state.last_error = None;
            state.logged_error = None;
            tracing::info!(
                backend = self.backend,
                url,
                down_for_ms = down_for.as_millis() as u64,
                degraded_calls = self.degraded_since_down(),
                "{} restored",
                self.subject
            );
        }
    }

    /// A command the server refused while the connection is fine (OOM, NOPERM, ...):
    /// one warning per [`REFUSAL_LOG_EVERY`], with how many were not logged since.
    pub(crate) fn refused(&self, url: &str, error: String) {
        let mut state = self.state();
        let now = Instant::now();
        if state
            .last_refusal_log
            .is_some_and(|t| now - t < REFUSAL_LOG_EVERY)
        {
            state.refusals_unlogged += 1;
            return;
        }
        state.last_refusal_log = Some(now);
        let suppressed = std::mem::take(&mut state.refusals_unlogged);
        tracing::warn!(
            backend = self.backend,
            url,
            error = %error,
            suppressed,
            "{} refused a cache command; the call degraded",
            self.subject
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the thread's `tracing` events print, as text.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn at(&self, level: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains(level))
                .map(str::to_owned)
                .collect()
        }

        fn warnings(&self) -> Vec<String> {
            self.at("WARN")
        }

        /// Captures the thread's events until the guard is dropped.
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            (lines, tracing::subscriber::set_default(subscriber))
        }
    }

    const URL: &str = "redis://127.0.0.1:6379/0";
    const EVERY: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn an_outage_logs_once_per_transition_and_summarizes_while_it_lasts() {
        let (lines, _guard) = Lines::capture();
        let outage = Outage::new("redis", "redis");
        assert!(!outage.is_down());
        assert_eq!(outage.report(), (None, None));
        outage.count_degraded();
        outage.count_degraded();
        assert_eq!(outage.degraded_total(), 2);

        outage.went_down(URL, "Connection refused".to_owned());
        assert!(outage.is_down());
        assert_eq!(
            outage.report(),
            (Some("Connection refused".to_owned()), Some(Duration::ZERO))
        );
        for _ in 0..3 {
            outage.count_degraded();
        }
        assert_eq!(outage.degraded_total(), 5);
        assert_eq!(outage.degraded_since_down(), 3);
        // Going down again within the outage: no new line, the last error kept.
        outage.went_down(URL, "Broken pipe".to_owned());
        let errors = lines.at("ERROR");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("Connection refused"), "{}", errors[0]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            outage.report(),
            (Some("Broken pipe".to_owned()), Some(Duration::from_secs(1)))
        );

        // The summary: none within the interval, one when it has passed, then none again.
        outage.still_down(URL, EVERY);
        assert!(lines.warnings().is_empty(), "{:?}", lines.warnings());
        tokio::time::advance(EVERY - Duration::from_secs(1)).await;
        outage.still_down(URL, EVERY);
        outage.still_down(URL, EVERY);
        let warnings = lines.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for field in ["down_for_s=30", "degraded_calls=3", "Broken pipe"] {
            assert!(warnings[0].contains(field), "{field}: {}", warnings[0]);
        }

        outage.came_back(URL);
        outage.came_back(URL);
        assert!(!outage.is_down());
        assert_eq!(outage.report(), (None, None));
        let infos = lines.at("INFO");
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(infos[0].contains("restored") && infos[0].contains("degraded_calls=3"));

        // A second outage: its own error line, its own count of degraded calls.
        outage.went_down(URL, "Connection reset".to_owned());
        outage.count_degraded();
        tokio::time::advance(EVERY).await;
        outage.still_down(URL, EVERY);
        assert_eq!(lines.at("ERROR").len(), 2);
        let warnings = lines.warnings();
        assert!(warnings[1].contains("degraded_calls=1"), "{}", warnings[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_reconnection_is_an_error_once_per_reason() {
        let (lines, _guard) = Lines::capture();
        let outage = Outage::new("redis", "redis");
        let failure = |text: &str, refused| ConnectFailure {
            text: text.to_owned(),
            refused,
        };
        outage.went_down(URL, "Connection reset".to_owned());
        // A plain connection failure waits for the summary.
        outage.reconnect_failed(URL, failure("Connection refused", false));
        assert_eq!(lines.at("ERROR").len(), 1);
        assert_eq!(outage.report().0.as_deref(), Some("Connection refused"));
        // The server answered but refused us: said at once, once per reason.
        outage.reconnect_failed(URL, failure("NOAUTH Authentication required", true));
        outage.reconnect_failed(URL, failure("NOAUTH Authentication required", true));
        let errors = lines.at("ERROR");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[1].contains("refuses the reconnection") && errors[1].contains("NOAUTH"));
        outage.reconnect_failed(URL, failure("NOPERM this user has no permissions", true));
        assert_eq!(lines.at("ERROR").len(), 3);
        assert!(outage.is_down());
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_once_per_interval_with_the_count_left_out() {
        let (lines, _guard) = Lines::capture();
        let outage = Outage::new("redis", "redis");
        let url = URL;

        for _ in 0..5 {
            outage.refused(url, "OOM command not allowed".to_owned());
        }
        let warnings = lines.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("suppressed=0") && warnings[0].contains("OOM"));

        // Within the interval: still one line.
        tokio::time::advance(REFUSAL_LOG_EVERY - Duration::from_millis(1)).await;
        outage.refused(url, "OOM command not allowed".to_owned());
        assert_eq!(lines.warnings().len(), 1);

        // Past it: the next refusal is logged, counting the 5 left out.
        tokio::time::advance(Duration::from_millis(1)).await;
        outage.refused(url, "OOM command not allowed".to_owned());
        let warnings = lines.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[1].contains("suppressed=5"), "{}", warnings[1]);
    }
}
