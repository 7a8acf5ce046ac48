//! The chaos soak on one `redis-server`: about a minute of mixed load from 32 tasks on a
//! two-worker runtime while a seeded schedule kills and restarts the server, freezes it,
//! kills the library's connections, refuses its writes under `maxmemory`, and flushes it.
//! What is checked is described in `chaos_common/mod.rs`.
//!
//! In its own test binary, alone: it reads this process's resident memory, and its
//! timer lateness would measure other tests' load. `CHAOS_SEED=<u64>` replays a schedule.

mod chaos_common;

use std::fmt;
use std::time::Duration;

use cache_tests::RedisServer;
use chaos_common::{Injector, Planned, Rng, Soak, URL_OPTIONS, chaos_seed};

/// The faults a single server suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a restart on the same port after the hold: empty, as after a crash.
    KillRestart,
    /// SIGSTOP, then SIGCONT after the hold: a hung server whose sockets stay open.
    Pause,
    /// `CLIENT KILL` of every connection but the injector's own: the library's command
    /// and pub/sub connections drop, the server stays up.
    ClientKill,
    /// `maxmemory 1` under `noeviction` for the hold, then lifted: every write refused
    /// with OOM while reads work.
    MaxMemory,
    /// `FLUSHALL`: every entry gone at once, nothing announced to the first levels.
    FlushAll,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillRestart => "kill -9 + restart",
            Fault::Pause => "SIGSTOP + SIGCONT",
            Fault::ClientKill => "CLIENT KILL",
            Fault::MaxMemory => "maxmemory (noeviction)",
            Fault::FlushAll => "FLUSHALL",
        })
    }
}

/// Each kind this many times: the issue asks for at least two.
const PER_KIND: usize = 3;

/// The schedule: each kind [`PER_KIND`] times in a seeded order, with seeded calm gaps
/// and outage lengths. About 45 s of faults and gaps, plus the recoveries.
fn schedule(rng: &mut Rng) -> Vec<Planned<Fault>> {
    let mut kinds = Vec::new();
    for _ in 0..PER_KIND {
        kinds.extend([
            Fault::KillRestart,
            Fault::Pause,
            Fault::ClientKill,
            Fault::MaxMemory,
            Fault::FlushAll,
        ]);
    }
    rng.shuffle(&mut kinds);
    kinds
        .into_iter()
        .map(|kind| Planned {
            kind,
            gap: rng.millis(2000, 3500),
            hold: match kind {
                Fault::KillRestart => rng.millis(300, 1500),
                Fault::Pause => rng.millis(400, 1500),
                Fault::MaxMemory => rng.millis(800, 2000),
                Fault::ClientKill | Fault::FlushAll => Duration::ZERO,
            },
        })
        .collect()
}

/// Injects faults into one server, with blocking calls only.
struct Standalone {
    /// The server, started with `--maxmemory-policy noeviction`.
    server: RedisServer,
}

impl Standalone {
    /// A raw synchronous connection of the injector's own, with deadlines on every read
    /// and write so a frozen server cannot hang the injector.
    fn raw(&self) -> redis::Connection {
        let client = redis::Client::open(self.server.url()).expect("the harness URL parses");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("the injector connects to redis");
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("set a read timeout");
        conn.set_write_timeout(Some(Duration::from_secs(2)))
            .expect("set a write timeout");
        conn
    }

    /// Runs one command on a fresh raw connection (the previous one may have died with
    /// a killed server); a failure is a broken soak, so it panics.
    fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.raw())
            .unwrap_or_else(|e| panic!("injector command failed: {e}"))
    }
}

impl Injector for Standalone {
    type Kind = Fault;

    fn begin(&mut self, kind: Fault) -> String {
        match kind {
            Fault::KillRestart => {
                self.server.kill();
                "killed".to_owned()
            }
            Fault::Pause => {
                self.server.pause();
                "paused".to_owned()
            }
            Fault::ClientKill => {
                let mut raw = self.raw();
                let own: u64 = redis::cmd("CLIENT")
                    .arg("ID")
                    .query(&mut raw)
                    .expect("CLIENT ID");
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query(&mut raw)
                    .expect("CLIENT LIST");
                let mut killed = Vec::new();
                for line in list.lines() {
                    let id: Option<u64> = line
                        .strip_prefix("id=")
                        .and_then(|rest| rest.split(' ').next())
                        .and_then(|id| id.parse().ok());
                    let Some(id) = id.filter(|id| *id != own) else {
                        continue;
                    };
                    let flags = line.split(' ').find_map(|f| f.strip_prefix("flags="));
                    // A listener tracks keys (`t`) or is subscribed (`P`).
                    let kind = if flags.is_some_and(|f| f.contains('t') || f.contains('P')) {
                        "listener"
                    } else {
                        "command"
                    };
                    // The connection may have gone by itself meanwhile: not an error.
                    let _: redis::RedisResult<redis::Value> = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(id)
                        .query(&mut raw);
                    killed.push(format!("{id} ({kind})"));
                }
                format!("killed connections {}", killed.join(", "))
            }
            Fault::MaxMemory => {
                self.command::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"));
                "maxmemory 1".to_owned()
            }
            Fault::FlushAll => {
                let keys: u64 = self.command(&redis::cmd("DBSIZE"));
                self.command::<()>(&redis::cmd("FLUSHALL"));
                format!("flushed {keys} keys")
            }
        }
    }

    fn end(&mut self, kind: Fault) {
        match kind {
            Fault::KillRestart => self.server.restart(),
            Fault::Pause => self.server.resume(),
            Fault::MaxMemory => {
                self.command::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"));
            }
            Fault::ClientKill | Fault::FlushAll => {}
        }
    }

    fn pids(&mut self) -> Vec<u32> {
        let info: String = self.command(redis::cmd("INFO").arg("server"));
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .into_iter()
            .collect()
    }

    fn reads(&mut self) -> u64 {
        let stats: String = self.command(redis::cmd("INFO").arg("commandstats"));
        chaos_common::reads_in(&stats)
    }
}

/// About 60 s of load through 15 faults; every check of `chaos_common` must hold.
#[test]
fn standalone_soak_under_kills_pauses_client_kills_oom_and_flushes_keeps_every_promise() {
    let seed = chaos_seed();
    let server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("noeviction")
        .start();
    let url = format!("{}?{URL_OPTIONS}", server.url());
    let mut rng = Rng::new(seed, 0);
    chaos_common::run(Soak {
        name: "standalone",
        url,
        seed,
        schedule: schedule(&mut rng),
        injector: Standalone { server },
        warmup: Duration::from_secs(3),
        tail: Duration::from_secs(3),
        recovery_limit: Duration::from_secs(5),
        probe_keys: vec![1],
        min_per_kind: PER_KIND,
    });
}
