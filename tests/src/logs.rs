//! What the library logs, captured as text.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Records every `tracing` event of the current thread as plain text, while it lives.
///
/// The subscriber is the thread's default, so use it on a `current_thread` runtime:
/// tasks the library spawns then run, and log, on the same thread.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    /// Starts capturing every level, without colours, until dropped.
    pub fn start() -> Self {
        // tracing caches per call site whether any subscriber is interested. While a
        // capture is the only subscriber alive, a call site first hit on another test's
        // thread (no subscriber there) would be cached as "never", losing events here. A
        // second, process-wide dispatcher kept alive makes tracing ask each thread's
        // subscriber instead.
        static KEEP_INTEREST_PER_THREAD: std::sync::OnceLock<tracing::Dispatch> =
            std::sync::OnceLock::new();
        KEEP_INTEREST_PER_THREAD
            .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(SharedBuffer(Arc::clone(&buffer)))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        LogCapture {
            buffer,
            _guard: guard,
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        let bytes = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The lines logged so far at `level` (`"ERROR"`, `"WARN"`, `"INFO"`, ...).
    pub fn lines_at(&self, level: &str) -> Vec<String> {
        let marker = format!(" {level} ");
        self.text()
            .lines()
            .filter(|line| line.contains(&marker))
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedBuffer {
    type Writer = SharedBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
