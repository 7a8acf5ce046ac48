//! A throwaway `redis-server` per test, on a free loopback port, killed on drop.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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
    /// Options that take a port of their own (`--cluster-port`, `--tls-port`).
    port_options: Vec<&'static str>,
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

    /// Gives the server a cluster bus port of its own (`--cluster-port`) rather than
    /// port + 10000, which is above 65535 for a high ephemeral port. Read it with
    /// [`RedisServer::cluster_bus_port`].
    pub fn cluster_bus(self) -> Self {
        self.port_option("--cluster-port")
    }

    /// Passes `option` (`--tls-port`, `--cluster-port`) a free loopback port, chosen with
    /// the server's port on every attempt to start it: a port chosen once, before the
    /// attempts, can be taken by a client's connection meanwhile and then fails every
    /// attempt (seen in CI with a cluster bus port). Read it with
    /// [`RedisServer::port_of`].
    pub fn port_option(mut self, option: &'static str) -> Self {
        self.port_options.push(option);
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// Panics when `redis-server` is not installed or does not come up within 10 s.
    pub fn start(self) -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port();
            let mut args = self.args.clone();
            let mut taken = vec![port];
            let mut option_ports = Vec::new();
            for &option in &self.port_options {
                let chosen = free_port_besides(&taken);
                taken.push(chosen);
                args.extend([option.to_owned(), chosen.to_string()]);
                option_ports.push((option, chosen));
            }
            // Dropping a server that failed to start removes its directory with it.
            let mut server = RedisServer {
                process: None,
                port,
                option_ports,
                dir: unique_temp_dir(),
                password: self.password.clone(),
                args,
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
    /// The ports of [`RedisServerBuilder::port_option`], by option.
    option_ports: Vec<(&'static str, u16)>,
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

    /// The cluster bus port given by [`RedisServerBuilder::cluster_bus`]; it stays the
    /// same across restarts.
    pub fn cluster_bus_port(&self) -> Option<u16> {
        self.port_of("--cluster-port")
    }

    /// The TLS port (`--tls-port`, given by `TestPki::serve_tls`), if it serves TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.port_of("--tls-port")
    }

    /// The port given to `option` by [`RedisServerBuilder::port_option`]; it stays the
    /// same across restarts.
    pub fn port_of(&self, option: &str) -> Option<u16> {
        self.option_ports
            .iter()
            .find(|(o, _)| *o == option)
            .map(|&(_, port)| port)
    }

    /// The password the server requires, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `redis://[:password@]127.0.0.1:{port}/0`, with the password percent-encoded.
    pub fn url(&self) -> String {
        self.url_on_port(self.port)
    }

    /// [`url`](Self::url) with another port: for a [`RoundTripProxy`](crate::RoundTripProxy) in front of the server.
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

    /// The server's log so far, for a failure message.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Kills the server (SIGKILL) and waits for it to exit; [`restart`](Self::restart)
    /// brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            forget_child(child.id());
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
        remember_child(child.id());
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

/// The processes the harness started and has not reaped: what a [`Watchdog`] kills
/// before it ends a hung test.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn remember_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

pub(crate) fn forget_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&p| p != pid);
}

/// Ends a test that runs past its limit, from a thread of its own, so it fires even
/// when the test's runtime is stuck: it kills every server the harness started (no
/// process outlives the test binary) and aborts. Disarmed when dropped.
#[derive(Debug)]
#[must_use = "the watchdog is disarmed when dropped"]
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    /// Starts watching: `what` is named in the message if `limit` passes.
    pub fn start(what: &str, limit: Duration) -> Self {
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        let what = what.to_owned();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                eprintln!(
                    "watchdog: {what} still running after {limit:?}; killing its servers and aborting"
                );
                for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
                std::process::abort();
            }
        });
        Watchdog {
            disarm: Some(disarm),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(disarm) = self.disarm.take() {
            let _ = disarm.send(());
        }
    }
}

/// Whether something on `port` answers an inline `PING` like Redis: `+PONG`, or
/// `-NOAUTH` from a server that requires a password.
pub(crate) fn answers_ping(port: u16) -> bool {
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

/// A free loopback port other than those in `taken` (free too, until the server binds
/// them).
fn free_port_besides(taken: &[u16]) -> u16 {
    loop {
        let port = free_port();
        if !taken.contains(&port) {
            return port;
        }
    }
}

pub(crate) fn unique_temp_dir() -> PathBuf {
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

pub(crate) fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// Percent-encodes everything but unreserved URL characters, for a password in a URL.
pub(crate) fn percent_encode(text: &str) -> String {
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
