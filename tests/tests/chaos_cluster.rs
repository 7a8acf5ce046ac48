//! The chaos soak on a three-master Redis Cluster (`cache_tests::cluster`): half a minute
//! of the same mixed load as `chaos.rs` while one master is frozen (SIGSTOP) and resumed
//! and another is killed (SIGKILL) and restarted, each twice, in a seeded order. The same
//! checks hold (see `chaos_common/mod.rs`); the recovery probe writes and reads one key
//! on every master, so it proves the whole cluster is served again.
//!
//! In its own test binary, alone, for the same reasons as `chaos.rs`.
//! `CHAOS_SEED=<u64>` replays a schedule.

mod chaos_common;

use std::fmt;
use std::time::Duration;

use cache_tests::cluster::RedisCluster;
use chaos_common::{ChaosManager, Injector, Planned, Rng, Soak, URL_OPTIONS, chaos_seed};

/// The faults one master suffers; the others keep serving their slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGSTOP, then SIGCONT after the hold.
    Pause(usize),
    /// SIGKILL, then a restart after the hold: the master comes back empty, with its
    /// identity and slots (its `nodes.conf` is kept).
    KillRestart(usize),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Pause(node) => write!(f, "SIGSTOP + SIGCONT of master {node}"),
            Fault::KillRestart(node) => write!(f, "kill -9 + restart of master {node}"),
        }
    }
}

/// Each fault this many times.
const PER_KIND: usize = 2;

/// The schedule: one master paused and another killed, each [`PER_KIND`] times, in a
/// seeded order with seeded gaps and outage lengths; about 20 s of faults and gaps.
fn schedule(rng: &mut Rng) -> Vec<Planned<Fault>> {
    let paused = rng.below(3);
    let killed = (paused + 1 + rng.below(2)) % 3;
    let mut kinds = Vec::new();
    for _ in 0..PER_KIND {
        kinds.extend([Fault::Pause(paused), Fault::KillRestart(killed)]);
    }
    rng.shuffle(&mut kinds);
    kinds
        .into_iter()
        .map(|kind| Planned {
            kind,
            gap: rng.millis(2500, 4000),
            hold: match kind {
                Fault::Pause(_) => rng.millis(800, 1500),
                Fault::KillRestart(_) => rng.millis(500, 1500),
            },
        })
        .collect()
}

/// Injects faults into the cluster's masters, with blocking calls only.
struct Cluster {
    /// Three masters, no replicas, `cluster-require-full-coverage no`.
    cluster: RedisCluster,
}

impl Cluster {
    /// A raw synchronous connection to master `node`, with deadlines on reads and writes.
    fn raw(&self, node: usize) -> redis::RedisResult<redis::Connection> {
        let url = format!("redis://127.0.0.1:{}/0", self.cluster.nodes()[node].port());
        let conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(conn)
    }
}

impl Injector for Cluster {
    type Kind = Fault;

    fn begin(&mut self, kind: Fault) -> String {
        match kind {
            Fault::Pause(node) => {
                self.cluster.nodes()[node].pause();
                format!("paused port {}", self.cluster.nodes()[node].port())
            }
            Fault::KillRestart(node) => {
                self.cluster.node_mut(node).kill();
                format!("killed port {}", self.cluster.nodes()[node].port())
            }
        }
    }

    fn end(&mut self, kind: Fault) {
        match kind {
            Fault::Pause(node) => self.cluster.nodes()[node].resume(),
            Fault::KillRestart(node) => self.cluster.node_mut(node).restart(),
        }
    }

    fn pids(&mut self) -> Vec<u32> {
        (0..self.cluster.nodes().len())
            .filter_map(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query(&mut self.raw(node).ok()?)
                    .ok()?;
                info.lines()
                    .find_map(|line| line.strip_prefix("process_id:"))
                    .and_then(|pid| pid.trim().parse().ok())
            })
            .collect()
    }

    fn reads(&mut self) -> u64 {
        (0..self.cluster.nodes().len())
            .filter_map(|node| {
                redis::cmd("INFO")
                    .arg("commandstats")
                    .query::<String>(&mut self.raw(node).ok()?)
                    .ok()
            })
            .map(|stats| chaos_common::reads_in(&stats))
            .sum()
    }
}

/// One probe key per master, in master order: the first ids whose probe-cache key
/// hashes to a slot of that master.
fn probe_keys(cluster: &RedisCluster) -> Vec<i64> {
    // The harness's lookup is async; a runtime of its own, gone before the soak starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime");
    let names = ChaosManager::new();
    let mut keys: Vec<Option<i64>> = vec![None; cluster.nodes().len()];
    for id in 1..1000 {
        let owner = runtime.block_on(cluster.owner_of(&names.probe().redis_key(&id)));
        keys[owner].get_or_insert(id);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter()
        .map(|k| k.expect("every master owns one of 1000 probe keys"))
        .collect()
}

/// About 25 s of load through 4 faults; every check of `chaos_common` must hold.
#[test]
fn cluster_soak_with_a_master_paused_and_one_killed_keeps_every_promise() {
    let seed = chaos_seed();
    let cluster = RedisCluster::new();
    let url = format!("{}?{URL_OPTIONS}", cluster.url());
    let probe_keys = probe_keys(&cluster);
    let mut rng = Rng::new(seed, 0);
    chaos_common::run(Soak {
        name: "cluster",
        url,
        seed,
        schedule: schedule(&mut rng),
        injector: Cluster { cluster },
        warmup: Duration::from_secs(3),
        tail: Duration::from_secs(3),
        // A restarted master refuses its slots with CLUSTERDOWN for about 2 s
        // (CLUSTER_WRITABLE_DELAY in Redis) before it serves them: inside the bound.
        recovery_limit: Duration::from_secs(5),
        probe_keys,
        min_per_kind: 1,
    });
}
