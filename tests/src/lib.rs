//! Test harness of the cache framework: a throwaway `redis-server` per test.
//!
//! Modelled on redis-rs's `redis-test/src/server.rs`: each [`RedisServer`] runs its own
//! `redis-server` process on a free loopback port, with persistence off and its own
//! temporary directory, and is killed when dropped. Tests drive the cache through
//! [`RedisServer::url`] and inspect what it wrote with [`RedisServer::raw`] and the
//! [`wire`] helpers. A [`RoundTripProxy`] in front of a server counts the library's round
//! trips; [`LogCapture`] records what it logs.

pub mod cluster;
pub mod tls;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer its first `PING` before the harness gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when another process grabs the chosen one first.
const BIND_ATTEMPTS: u32 = 5;
/// What a missing `redis-server` binary panics with.
const NOT_INSTALLED: &str = "redis-server not found on PATH; install it (Debian: apt-get install redis-server) or run .ci/run, which installs it";

/// Options of a [`RedisServer`] to start; from [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "call `start()` to run the server"]
pub struct RedisServerBuilder {
    password: Option<String>,
    args: Vec<String>,
}

impl RedisServerBuilder {
    /// Requires clients to authenticate with `password` (`--requirepass`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Appends one raw `redis-server` command-line argument, e.g. `"--maxmemory"`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// Panics when `redis-server` is not installed or does not come up within 10 s.
    pub fn start(self) -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port();
            // Dropping a server that failed to start removes its directory with it.
            let mut server = RedisServer {
                process: None,
                port,
                dir: unique_temp_dir(),
                password: self.password.clone(),
                args: self.args.clone(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Another process took the port between our probe and redis's bind.
                Err(Startup::Exited(log)) => last_log = log,
                Err(Startup::TimedOut(log)) => panic!(
                    "redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}; its log:\n{log}"
                ),
            }
        }
        panic!("redis-server exited at startup {BIND_ATTEMPTS} times; last log:\n{last_log}");
    }
}

/// A `redis-server` process on `127.0.0.1`, killed (SIGKILL) and reaped on drop.
///
/// It runs with `--save "" --appendonly no`, so [`kill`](Self::kill) followed by
/// [`restart`](Self::restart) comes back empty, on the same port.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<Child>,
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    args: Vec<String>,
}

enum Startup {
    Exited(String),
    TimedOut(String),
}

impl RedisServer {
    /// Starts a server without a password; see [`builder`](Self::builder) for options.
    pub fn new() -> Self {
        Self::builder().start()
    }

    /// Starts a server that requires `password`.
    pub fn with_password(password: &str) -> Self {
        Self::builder().password(password).start()
    }

    /// Options for a server: password, extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The loopback port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password the server requires, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `redis://[:password@]127.0.0.1:{port}/0`, with the password percent-encoded.
    pub fn url(&self) -> String {
        self.url_on_port(self.port)
    }

    /// [`url`](Self::url) with another port: for a [`RoundTripProxy`] in front of the server.
    pub fn url_on_port(&self, port: u16) -> String {
        match &self.password {
            Some(password) => format!("redis://:{}@127.0.0.1:{port}/0", percent_encode(password)),
            None => format!("redis://127.0.0.1:{port}/0"),
        }
    }

    /// A fresh authenticated connection of its own, to inspect and plant raw entries.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("the harness URL parses");
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("raw connection to redis on port {}: {e}", self.port))
    }

    /// Kills the server (SIGKILL) and waits for it to exit; [`restart`](Self::restart)
    /// brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again, empty, on the same port.
    ///
    /// Panics when it does not answer `PING` within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn_and_wait() {
            Ok(()) => {}
            Err(Startup::Exited(log) | Startup::TimedOut(log)) => panic!(
                "redis-server did not come back on port {}; its log:\n{log}",
                self.port
            ),
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a process frozen by [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.process.as_ref().expect("the server is not running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run `kill`");
        assert!(status.success(), "kill {signal} {} failed", child.id());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), Startup> {
        let log = self.log_path();
        // A fresh log per attempt, so a startup failure shows this attempt's reason.
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            cmd.arg("--requirepass").arg(password);
        }
        cmd.args(&self.args);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let child = self.process.insert(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                self.process = None;
                return Err(Startup::Exited(read_log(&log)));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Startup::TimedOut(read_log(&log)));
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Default for RedisServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether something on `port` answers an inline `PING` like Redis: `+PONG`, or
/// `-NOAUTH` from a server that requires a password.
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}

/// A port the kernel just reported free on loopback. Racy by nature: the caller retries
/// when the server fails to bind it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "cache-tests-redis-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// Percent-encodes everything but unreserved URL characters, for a password in a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Raw Redis commands for checking what the cache put on the wire.
///
/// Each helper panics on a Redis error: the raw connection talks to a test's own server,
/// so an error is a broken test, not a behaviour under test.
pub mod wire {
    use std::collections::BTreeMap;

    use redis::aio::MultiplexedConnection;

    async fn run<T: redis::FromRedisValue>(conn: &MultiplexedConnection, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut conn.clone())
            .await
            .unwrap_or_else(|e| panic!("raw command failed: {e}"))
    }

    /// `GET key`: the stored bytes.
    pub async fn get(conn: &MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
        run(conn, redis::cmd("GET").arg(key)).await
    }

    /// `SET key bytes`, without expiry: plants an entry as another service would.
    pub async fn set(conn: &MultiplexedConnection, key: &str, bytes: &[u8]) {
        run::<()>(conn, redis::cmd("SET").arg(key).arg(bytes)).await
    }

    /// `EXISTS key`.
    pub async fn exists(conn: &MultiplexedConnection, key: &str) -> bool {
        run::<u64>(conn, redis::cmd("EXISTS").arg(key)).await == 1
    }

    /// `TTL key` in seconds (-2 missing, -1 no expiry).
    pub async fn ttl(conn: &MultiplexedConnection, key: &str) -> i64 {
        run(conn, redis::cmd("TTL").arg(key)).await
    }

    /// `PTTL key` in milliseconds (-2 missing, -1 no expiry).
    pub async fn pttl(conn: &MultiplexedConnection, key: &str) -> i64 {
        run(conn, redis::cmd("PTTL").arg(key)).await
    }

    /// `DBSIZE`: how many keys the database holds.
    pub async fn dbsize(conn: &MultiplexedConnection) -> u64 {
        run(conn, &redis::cmd("DBSIZE")).await
    }

    /// `KEYS *`, sorted.
    pub async fn keys(conn: &MultiplexedConnection) -> Vec<String> {
        let mut keys: Vec<String> = run(conn, redis::cmd("KEYS").arg("*")).await;
        keys.sort();
        keys
    }

    /// `CONFIG RESETSTAT`: zeroes the counters [`command_calls`] reads.
    pub async fn reset_stats(conn: &MultiplexedConnection) {
        run::<()>(conn, redis::cmd("CONFIG").arg("RESETSTAT")).await
    }

    /// Calls per command since the last [`reset_stats`], from `INFO commandstats`:
    /// `{"mget": 1, "set": 10, "config|resetstat": 1, ...}`.
    pub async fn command_calls(conn: &MultiplexedConnection) -> BTreeMap<String, u64> {
        let info: String = run(conn, redis::cmd("INFO").arg("commandstats")).await;
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    /// One field of `INFO`, e.g. `total_connections_received`.
    pub async fn info_field(conn: &MultiplexedConnection, field: &str) -> String {
        let info: String = run(conn, &redis::cmd("INFO")).await;
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("INFO has no field `{field}`"))
            .trim()
            .to_owned()
    }

    /// The clients connected to the server, one `CLIENT LIST` line each.
    pub async fn clients(conn: &MultiplexedConnection) -> Vec<String> {
        let list: String = run(conn, redis::cmd("CLIENT").arg("LIST")).await;
        list.lines().map(str::to_owned).collect()
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(conn: &MultiplexedConnection, name: &str, value: &str) {
        run::<()>(conn, redis::cmd("CONFIG").arg("SET").arg(name).arg(value)).await
    }
}

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

/// A loopback TCP proxy that counts round trips: client writes that follow a reply.
///
/// A pipeline of many commands sent at once is one round trip; the same commands sent
/// one after the other, each waiting for its reply, are as many round trips as commands.
pub struct RoundTripProxy {
    port: u16,
    counts: Arc<TurnCounts>,
    accept: tokio::task::JoinHandle<()>,
}

struct TurnCounts {
    round_trips: AtomicU64,
    /// Whether the server spoke last, so the client's next bytes start a new round trip.
    replied: AtomicBool,
}

impl RoundTripProxy {
    /// Listens on a free loopback port and forwards every connection to `target_port`.
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let counts = Arc::new(TurnCounts {
            round_trips: AtomicU64::new(0),
            replied: AtomicBool::new(true),
        });
        let accept = tokio::spawn(accept_loop(listener, target_port, Arc::clone(&counts)));
        RoundTripProxy {
            port,
            counts,
            accept,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Round trips since the start or the last [`reset`](Self::reset).
    pub fn round_trips(&self) -> u64 {
        self.counts.round_trips.load(Ordering::SeqCst)
    }

    /// Starts counting from zero.
    pub fn reset(&self) {
        self.counts.replied.store(true, Ordering::SeqCst);
        self.counts.round_trips.store(0, Ordering::SeqCst);
    }
}

impl Drop for RoundTripProxy {
    fn drop(&mut self) {
        // Dropping the accept loop's JoinSet aborts every forwarding task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, target: u16, counts: Arc<TurnCounts>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let counts = Arc::clone(&counts);
        connections.spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
            else {
                return;
            };
            tokio::select! {
                _ = pump(&client, &server, || {
                    if counts.replied.swap(false, Ordering::SeqCst) {
                        counts.round_trips.fetch_add(1, Ordering::SeqCst);
                    }
                }) => {}
                _ = pump(&server, &client, || counts.replied.store(true, Ordering::SeqCst)) => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side closes, calling `on_chunk` before forwarding
/// each chunk read.
async fn pump(
    from: &tokio::net::TcpStream,
    to: &tokio::net::TcpStream,
    on_chunk: impl Fn(),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        on_chunk();
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(written) => sent += written,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}
