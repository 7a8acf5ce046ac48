//! A throwaway Redis Sentinel deployment on loopback: a master, one replica and three
//! sentinels monitoring them as `mymaster` (quorum 2, down after 1 s), every process on a
//! free `127.0.0.1` port and killed on drop. Every wait has a deadline.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::server::{
    answers_ping, forget_child, free_port, percent_encode, read_log, remember_child,
    unique_temp_dir,
};
use crate::tls::TestPki;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";
/// How long the sentinels wait before they call an unanswering master down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// How long the deployment may take to be ready: sentinels need about 2 s to find each
/// other and the replica.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of a [`SentinelGroup`]; from [`SentinelGroup::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "call `start()` to run the deployment"]
pub struct SentinelGroupBuilder {
    password: Option<String>,
    sentinel_password: Option<String>,
    tls: bool,
    debug_commands: bool,
}

impl SentinelGroupBuilder {
    /// The master and the replica accept `DEBUG` (`--enable-debug-command yes`), to put
    /// them in states tests need (a reload, for one that is still loading its data).
    pub fn debug_commands(mut self) -> Self {
        self.debug_commands = true;
        self
    }

    /// Every node and sentinel also serves TLS with a certificate of a [`TestPki`] CA,
    /// the sentinels monitor and announce the TLS ports, and replication runs over TLS;
    /// [`url`](SentinelGroup::url) is then `rediss+sentinel://` to the sentinels' TLS
    /// ports. The plaintext ports stay open for the harness's own checks.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The master and the replica require `password` (and replicate with it).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The sentinels require `password` of their clients (and of each other).
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// Starts the master, the replica and three sentinels, and waits until every
    /// sentinel knows the other two and the replica, and the replica is in sync.
    ///
    /// Panics when that takes more than 20 s.
    pub fn start(self) -> SentinelGroup {
        let pki = self.tls.then(TestPki::generate);
        let data_node = |extra: &[String]| {
            let mut builder = RedisServer::builder();
            if let Some(pki) = &pki {
                builder = pki.serve_tls(builder).arg("--tls-replication").arg("yes");
            }
            if let Some(password) = &self.password {
                builder = builder.password(password).arg("--masterauth").arg(password);
            }
            if self.debug_commands {
                builder = builder.arg("--enable-debug-command").arg("yes");
            }
            for arg in extra {
                builder = builder.arg(arg);
            }
            builder.start()
        };
        let master = data_node(&[]);
        // The sentinels and the replica reach the master where it is named: its TLS port
        // with TLS.
        let master_named = master.tls_port().unwrap_or(master.port());
        let replica = data_node(&[
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_named.to_string(),
        ]);
        let tls_ports = master.tls_port().zip(replica.tls_port());
        let sentinels = (0..3)
            .map(|_| {
                Sentinel::start(
                    master_named,
                    self.password.as_deref(),
                    self.sentinel_password.as_deref(),
                    pki.as_ref(),
                )
            })
            .collect();
        let group = SentinelGroup {
            master,
            replica,
            sentinels,
            password: self.password,
            sentinel_password: self.sentinel_password,
            tls_ports,
            pki,
        };
        group.wait_ready();
        group
    }
}

/// A master, a replica and three sentinels on loopback; see the module docs.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The master at start; after a failover, the old master.
    pub master: RedisServer,
    /// The replica at start; promoted by a failover.
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    password: Option<String>,
    sentinel_password: Option<String>,
    /// With TLS: the master's and the replica's TLS ports, which the sentinels name.
    tls_ports: Option<(u16, u16)>,
    pki: Option<TestPki>,
}

impl SentinelGroup {
    /// The port the sentinels name for the initial master: its TLS port with TLS.
    pub fn master_named_port(&self) -> u16 {
        self.tls_ports.map_or(self.master.port(), |p| p.0)
    }

    /// The port the sentinels name for the replica once promoted.
    pub fn replica_named_port(&self) -> u16 {
        self.tls_ports.map_or(self.replica.port(), |p| p.1)
    }

    /// The certificates, with TLS.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// Starts a deployment without passwords.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Options: passwords of the data nodes and of the sentinels.
    pub fn builder() -> SentinelGroupBuilder {
        SentinelGroupBuilder::default()
    }

    /// The sentinels' ports clients use: their TLS ports with TLS.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .map(|s| s.tls_port.unwrap_or(s.port))
            .collect()
    }

    /// `redis+sentinel://[:password@]127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/mymaster/0`,
    /// with `?sentinel_password=` when the sentinels require one.
    pub fn url(&self) -> String {
        let userinfo = match &self.password {
            Some(password) => format!(":{}@", percent_encode(password)),
            None => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut options = Vec::new();
        if let Some(password) = &self.sentinel_password {
            options.push(format!("sentinel_password={}", percent_encode(password)));
        }
        if let Some(pki) = &self.pki {
            options.push(format!("ca_file={}", pki.ca_file().display()));
        }
        let query = if options.is_empty() {
            String::new()
        } else {
            format!("?{}", options.join("&"))
        };
        let scheme = if self.pki.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!(
            "{scheme}://{userinfo}{}/{MASTER_NAME}/0{query}",
            hosts.join(",")
        )
    }

    /// The master's port as a sentinel that answers names it now, if one does.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply: Option<(String, u16)> = s
                .command(
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(MASTER_NAME),
                )
                .ok()?;
            reply.map(|(_, port)| port)
        })
    }

    /// Waits until every running sentinel names the server on `port` as the master.
    ///
    /// Panics after `limit`.
    pub fn wait_for_master(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let named = self
                .sentinels
                .iter()
                .filter(|s| s.process.is_some())
                .all(|s| {
                    s.command::<Option<(String, u16)>>(
                        redis::cmd("SENTINEL")
                            .arg("GET-MASTER-ADDR-BY-NAME")
                            .arg(MASTER_NAME),
                    )
                    .ok()
                    .flatten()
                    .is_some_and(|(_, p)| p == port)
                });
            if named {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not name port {port} as the master within {limit:?}; logs:\n{}",
                self.sentinel_logs()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Makes every sentinel monitor the server on `port` as the master (`SENTINEL
    /// REMOVE` + `MONITOR`), with a down-after of a minute so they leave it alone
    /// meanwhile: to see what a client does when the sentinels name a replica.
    pub fn monitor(&self, port: u16) {
        for sentinel in &self.sentinels {
            let run = |cmd: &mut redis::Cmd| {
                sentinel
                    .command::<()>(cmd)
                    .unwrap_or_else(|e| panic!("sentinel {}: {e}", sentinel.port))
            };
            run(redis::cmd("SENTINEL").arg("REMOVE").arg(MASTER_NAME));
            run(redis::cmd("SENTINEL")
                .arg("MONITOR")
                .arg(MASTER_NAME)
                .arg("127.0.0.1")
                .arg(port)
                .arg(2));
            run(redis::cmd("SENTINEL")
                .arg("SET")
                .arg(MASTER_NAME)
                .arg("down-after-milliseconds")
                .arg(60_000));
            if let Some(password) = &self.password {
                run(redis::cmd("SENTINEL")
                    .arg("SET")
                    .arg(MASTER_NAME)
                    .arg("auth-pass")
                    .arg(password));
            }
        }
    }

    /// Kills every sentinel (SIGKILL).
    pub fn kill_sentinels(&mut self) {
        for sentinel in &mut self.sentinels {
            sentinel.kill();
        }
    }

    /// The sentinels' logs, for a failure message.
    pub fn sentinel_logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel {} ---\n{}", s.port, read_log(&s.log())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self.sentinels.iter().all(|s| {
                s.command::<Vec<String>>(redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))
                    .ok()
                    .is_some_and(|fields| {
                        let field = |name: &str| {
                            fields
                                .iter()
                                .position(|f| f == name)
                                .and_then(|i| fields.get(i + 1))
                                .cloned()
                                .unwrap_or_default()
                        };
                        field("num-other-sentinels") == "2"
                            && field("num-slaves") == "1"
                            && field("flags") == "master"
                    })
            }) && self.replica_in_sync();
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel deployment was not ready within {READY_TIMEOUT:?}; logs:\n{}",
                self.sentinel_logs()
            );
            sleep(Duration::from_millis(100));
        }
    }

    fn replica_in_sync(&self) -> bool {
        let url = self.replica.url();
        let info = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut c)
            });
        info.is_ok_and(|info| info.contains("master_link_status:up"))
    }
}

/// One `redis-server --sentinel` process with its configuration file in a directory of
/// its own (sentinels rewrite it).
#[derive(Debug)]
struct Sentinel {
    process: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: PathBuf,
    password: Option<String>,
}

impl Sentinel {
    /// Starts a sentinel on ports chosen anew on every attempt: a port reported free can
    /// be taken by another process before the sentinel binds it, and the sentinel then
    /// exits (as a data node's or a cluster bus's port can).
    fn start(
        master_port: u16,
        auth_pass: Option<&str>,
        password: Option<&str>,
        pki: Option<&TestPki>,
    ) -> Self {
        const ATTEMPTS: usize = 5;
        let mut logs = Vec::new();
        for _ in 0..ATTEMPTS {
            let ports = (free_port(), pki.map(|_| free_port()));
            match Self::try_start(ports, master_port, auth_pass, password, pki) {
                Ok(sentinel) => return sentinel,
                Err(log) => logs.push(log),
            }
        }
        panic!(
            "no sentinel came up in {ATTEMPTS} attempts; their logs:\n{}",
            logs.join("\n---\n")
        )
    }

    /// One attempt on `(port, tls_port)`: `Err` with the sentinel's log when it exited
    /// before answering (a port taken, say).
    fn try_start(
        (port, tls_port): (u16, Option<u16>),
        master_port: u16,
        auth_pass: Option<&str>,
        password: Option<&str>,
        pki: Option<&TestPki>,
    ) -> Result<Self, String> {
        let dir = unique_temp_dir();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display(),
            log = dir.join("sentinel.log").display(),
            down = DOWN_AFTER.as_millis(),
        );
        if let Some(auth_pass) = auth_pass {
            conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {auth_pass}\n"));
        }
        if let Some(password) = password {
            conf.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        if let (Some(pki), Some(tls_port)) = (pki, tls_port) {
            // Sentinels talk TLS to the nodes and to each other, and tell each other
            // their TLS port.
            conf.push_str(&format!(
                "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\nsentinel announce-port {tls_port}\n",
                pki.cert_file().display(),
                pki.key_file().display(),
                pki.ca_file().display(),
            ));
        }
        let conf_path = dir.join("sentinel.conf");
        fs::write(&conf_path, conf).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf_path)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server --sentinel");
        remember_child(child.id());
        let mut sentinel = Sentinel {
            process: Some(child),
            port,
            tls_port,
            dir,
            password: password.map(str::to_owned),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(port) {
            let exited = sentinel
                .process
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                // Dropped: reaped, forgotten by the watchdog, its directory removed.
                return Err(read_log(&sentinel.log()));
            }
            assert!(
                Instant::now() < deadline,
                "sentinel on port {port} did not come up within 10 s; its log:\n{}",
                read_log(&sentinel.log())
            );
            sleep(Duration::from_millis(10));
        }
        Ok(sentinel)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sentinel.log")
    }

    /// One command on a connection of its own, within 1 s.
    fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let url = match &self.password {
            Some(password) => format!(
                "redis://:{}@127.0.0.1:{}",
                percent_encode(password),
                self.port
            ),
            None => format!("redis://127.0.0.1:{}", self.port),
        };
        let mut conn =
            redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        cmd.query(&mut conn)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            forget_child(child.id());
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    #[test]
    fn a_sentinel_whose_port_is_taken_is_an_attempt_to_retry_not_a_panic() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let port = taken.local_addr().expect("its address").port();
        let master = free_port(); // Nothing there: the sentinel starts all the same.
        let log = Sentinel::try_start((port, None), master, None, None, None)
            .expect_err("a sentinel bound a port another socket holds");
        assert!(log.contains("Address already in use"), "{log}");

        let sentinel = Sentinel::start(master, None, None, None);
        assert!(answers_ping(sentinel.port));
    }
}
