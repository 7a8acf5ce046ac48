//! A throwaway Redis Cluster: masters on loopback, made with `redis-cli --cluster create`.
//!
//! Each master is a [`RedisServer`] with `--cluster-enabled yes`, its own `nodes.conf` in
//! its own directory, and a cluster bus port chosen free (`--cluster-port`) rather than
//! the default port + 10000, which can land above 65535 for ephemeral ports. There are
//! no replicas, and `cluster-require-full-coverage no` keeps the other masters serving
//! while one is down, as a cache deployment should be configured. Dropping the
//! [`RedisCluster`] kills every node.

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::RedisServer;
use crate::server::{free_port, percent_encode};
use crate::tls::TestPki;

/// How long the cluster may take to reach `cluster_state:ok` on every node.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a [`RedisCluster`] to start; from [`RedisCluster::builder`].
#[derive(Debug, Default)]
#[must_use = "call `start()` to run the cluster"]
pub struct RedisClusterBuilder {
    masters: usize,
    password: Option<String>,
    tls: bool,
}

impl RedisClusterBuilder {
    /// Requires clients to authenticate with `password` on every node.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Serves TLS too, on a second port per node, with certificates of a fresh
    /// [`TestPki`]; nodes talk TLS among themselves (`tls-cluster yes`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the masters, joins them and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// Panics when a node does not start or the cluster does not form within 30 s.
    pub fn start(self) -> RedisCluster {
        let pki = self.tls.then(TestPki::generate);
        let mut nodes = Vec::with_capacity(self.masters);
        let mut tls_ports = Vec::new();
        for _ in 0..self.masters {
            let mut builder = RedisServer::builder()
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg("nodes.conf")
                .arg("--cluster-port")
                .arg(free_port().to_string())
                .arg("--cluster-node-timeout")
                .arg("5000")
                .arg("--cluster-require-full-coverage")
                .arg("no");
            if let Some(password) = &self.password {
                builder = builder
                    .password(password.clone())
                    .arg("--masterauth")
                    .arg(password.clone());
            }
            if let Some(pki) = &pki {
                let port = free_port();
                builder = pki
                    .serve_tls(builder, port)
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
                tls_ports.push(port);
            }
            nodes.push(builder.start());
        }
        let cluster = RedisCluster {
            nodes,
            tls_ports,
            pki,
            password: self.password,
        };
        cluster.create();
        cluster.wait_until_ok();
        cluster
    }
}

/// A Redis Cluster of masters on `127.0.0.1`, every node killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    tls_ports: Vec<u16>,
    pki: Option<TestPki>,
    password: Option<String>,
}

impl RedisCluster {
    /// Three masters, no password, no TLS.
    pub fn new() -> Self {
        Self::builder().start()
    }

    /// Options for a cluster of three masters.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder {
            masters: 3,
            ..RedisClusterBuilder::default()
        }
    }

    /// The masters, in the order of their ports in [`url`](Self::url).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One master, to kill or restart it.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// `redis+cluster://[:password@]127.0.0.1:p1,127.0.0.1:p2,...`, or with TLS
    /// `rediss+cluster://` and the TLS ports.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(password) => format!(":{}@", percent_encode(password)),
            None => String::new(),
        };
        let (scheme, ports): (&str, Vec<u16>) = match &self.pki {
            Some(_) => ("rediss+cluster", self.tls_ports.clone()),
            None => (
                "redis+cluster",
                self.nodes.iter().map(|n| n.port()).collect(),
            ),
        };
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("{scheme}://{auth}{}", hosts.join(","))
    }

    /// The certificates of a TLS cluster.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// A raw plaintext connection to master `index`, to inspect what it holds.
    pub async fn raw(&self, index: usize) -> MultiplexedConnection {
        self.nodes[index].raw().await
    }

    /// The index of the master that serves `key`, from `CLUSTER KEYSLOT` and
    /// `CLUSTER SLOTS`.
    pub async fn owner_of(&self, key: &str) -> usize {
        let conn = self.raw(0).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn.clone())
            .await
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn.clone())
            .await
            .expect("CLUSTER SLOTS");
        for range in ranges {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (redis::Value::Int(first), redis::Value::Int(last)) = (&items[0], &items[1]) else {
                continue;
            };
            if (*first..=*last).contains(&slot) {
                let redis::Value::Array(master) = &items[2] else {
                    break;
                };
                let redis::Value::Int(port) = master[1] else {
                    break;
                };
                let port = port as u16;
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .or_else(|| self.tls_ports.iter().position(|&p| p == port))
                    .expect("the slot's master is one of ours");
            }
        }
        panic!("no master serves the slot of {key}");
    }

    /// `redis-cli --cluster create` over the plaintext ports, one master per node.
    fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        if let Some(password) = &self.password {
            cmd.arg("-a").arg(password).arg("--no-auth-warning");
        }
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (it comes with redis-server: apt-get install redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Polls `CLUSTER INFO` on every node until each reports `cluster_state:ok` and
    /// knows every other node.
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        for node in &self.nodes {
            loop {
                let mut cmd = Command::new("redis-cli");
                cmd.arg("-p").arg(node.port().to_string());
                if let Some(password) = &self.password {
                    cmd.arg("-a").arg(password).arg("--no-auth-warning");
                }
                let output = cmd
                    .args(["CLUSTER", "INFO"])
                    .stdin(Stdio::null())
                    .output()
                    .expect("run redis-cli");
                let last = String::from_utf8_lossy(&output.stdout);
                let known = format!("cluster_known_nodes:{}", self.nodes.len());
                if last.contains("cluster_state:ok") && last.contains(&known) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok within {FORM_TIMEOUT:?}; node {} says:\n{last}",
                    node.port()
                );
                sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Default for RedisCluster {
    fn default() -> Self {
        Self::new()
    }
}
