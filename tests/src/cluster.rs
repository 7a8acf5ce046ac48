//! A throwaway Redis Cluster: masters on loopback, made with `redis-cli --cluster create`.
//!
//! Each master is a [`RedisServer`] with `--cluster-enabled yes`, its own `nodes.conf` in
//! its own directory, and a cluster bus port chosen free (`--cluster-port`) with its port
//! on every attempt to start it ([`RedisServerBuilder::cluster_bus`](crate::RedisServerBuilder::cluster_bus)),
//! rather than the default port + 10000, which can land above 65535 for ephemeral ports,
//! or a port fixed before the attempts, which a client's connection can take meanwhile
//! (seen in CI: five attempts in a row failed on one taken bus port). By default
//! there are no replicas ([`RedisClusterBuilder::replicas`] adds one per master, joined
//! with `CLUSTER MEET` and `CLUSTER REPLICATE`), and `cluster-require-full-coverage no`
//! keeps the other masters serving while one is down, as a cache deployment should be
//! configured. Dropping the [`RedisCluster`] kills every node.

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::RedisServer;
use crate::server::percent_encode;
use crate::tls::TestPki;

/// How long the cluster may take to reach `cluster_state:ok` on every node.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a [`RedisCluster`] to start; from [`RedisCluster::builder`].
#[derive(Debug, Default)]
#[must_use = "call `start()` to run the cluster"]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas: bool,
    node_timeout: Option<Duration>,
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

    /// Gives every master a replica, which takes over when its master fails.
    pub fn replicas(mut self) -> Self {
        self.replicas = true;
        self
    }

    /// `cluster-node-timeout` (5 s unless set): how long a node may be unreachable before
    /// the others count it as failed and its replica takes over.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// Starts the masters, joins them and waits until every node reports
    /// `cluster_state:ok`; with [`replicas`](Self::replicas), also until every replica
    /// is in sync with its master.
    ///
    /// Panics when a node does not start or the cluster does not form within 30 s.
    pub fn start(self) -> RedisCluster {
        let pki = self.tls.then(TestPki::generate);
        let count = if self.replicas {
            2 * self.masters
        } else {
            self.masters
        };
        let node_timeout = self.node_timeout.unwrap_or(Duration::from_secs(5));
        let mut nodes = Vec::with_capacity(count);
        let mut tls_ports = Vec::new();
        let mut bus_ports = Vec::new();
        for _ in 0..count {
            let mut builder = RedisServer::builder()
                .cluster_bus()
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg("nodes.conf")
                .arg("--cluster-node-timeout")
                .arg(node_timeout.as_millis().to_string())
                .arg("--cluster-require-full-coverage")
                .arg("no");
            if let Some(password) = &self.password {
                builder = builder
                    .password(password.clone())
                    .arg("--masterauth")
                    .arg(password.clone());
            }
            if let Some(pki) = &pki {
                builder = pki
                    .serve_tls(builder)
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
            }
            let node = builder.start();
            bus_ports.push(node.cluster_bus_port().expect("a cluster bus port"));
            if pki.is_some() {
                tls_ports.push(node.tls_port().expect("a TLS port"));
            }
            nodes.push(node);
        }
        let replicas = nodes.split_off(self.masters);
        // Clients are pointed at the masters only.
        tls_ports.truncate(self.masters);
        let cluster = RedisCluster {
            nodes,
            replicas,
            bus_ports,
            tls_ports,
            pki,
            password: self.password,
        };
        cluster.create();
        cluster.wait_until_ok(
            &cluster
                .nodes
                .iter()
                .map(RedisServer::port)
                .collect::<Vec<_>>(),
        );
        if !cluster.replicas.is_empty() {
            cluster.attach_replicas();
        }
        cluster
    }
}

/// A Redis Cluster of masters on `127.0.0.1`, every node killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `replicas[i]` replicates `nodes[i]` (until a failover swaps their roles).
    replicas: Vec<RedisServer>,
    /// The cluster bus port of each node, masters then replicas.
    bus_ports: Vec<u16>,
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

    /// The replica of master `index`, with [`RedisClusterBuilder::replicas`].
    pub fn replica(&self, index: usize) -> &RedisServer {
        &self.replicas[index]
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

    /// `redis-cli -p PORT ARGS...` (with the password), its standard output.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-p").arg(port.to_string());
        if let Some(password) = &self.password {
            cmd.arg("-a").arg(password).arg("--no-auth-warning");
        }
        let output = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Joins each replica to the cluster, makes it replicate its master, and waits until
    /// every node knows every other and each replica's link to its master is up.
    fn attach_replicas(&self) {
        // The bus ports are not port + 10000, so MEET must name them.
        let seed = self.nodes[0].port().to_string();
        let seed_bus = self.bus_ports[0].to_string();
        for replica in &self.replicas {
            let reply = self.cli(
                replica.port(),
                &["CLUSTER", "MEET", "127.0.0.1", &seed, &seed_bus],
            );
            assert_eq!(reply, "OK", "CLUSTER MEET from {}", replica.port());
        }
        let everyone: Vec<u16> = self
            .nodes
            .iter()
            .chain(&self.replicas)
            .map(RedisServer::port)
            .collect();
        self.wait_until_ok(&everyone);
        let deadline = Instant::now() + FORM_TIMEOUT;
        for (master, replica) in self.nodes.iter().zip(&self.replicas) {
            let id = self.cli(master.port(), &["CLUSTER", "MYID"]);
            // Asked once it is accepted: asking again restarts the sync.
            loop {
                let reply = self.cli(replica.port(), &["CLUSTER", "REPLICATE", &id]);
                if reply == "OK" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} refused to replicate {}: {reply}",
                    replica.port(),
                    master.port()
                );
                sleep(Duration::from_millis(50));
            }
        }
        for (master, replica) in self.nodes.iter().zip(&self.replicas) {
            loop {
                let info = self.cli(replica.port(), &["INFO", "replication"]);
                if info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} did not sync with master {} within {FORM_TIMEOUT:?}:\n{info}\nits log:\n{}",
                    replica.port(),
                    master.port(),
                    replica.log()
                );
                sleep(Duration::from_millis(50));
            }
        }
        self.wait_until_ok(&everyone);
    }

    /// Polls `CLUSTER INFO` on the nodes at every one of `ports` until each reports
    /// `cluster_state:ok` and knows all of them.
    fn wait_until_ok(&self, ports: &[u16]) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let count = ports.len();
        for &port in ports {
            loop {
                let last = self.cli(port, &["CLUSTER", "INFO"]);
                let known = format!("cluster_known_nodes:{count}");
                if last.contains("cluster_state:ok") && last.contains(&known) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not reach cluster_state:ok within {FORM_TIMEOUT:?}; node {port} says:\n{last}"
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
