//! `cachectl`: operator commands for the Redis behind the caches.
//!
//! ```sh
//! cachectl --url redis://127.0.0.1:6379/0 health
//! cachectl stats                      # per-namespace keys, sampled memory, TTL spread
//! cachectl clear user:profile         # asks first; --yes to skip (required without a TTY)
//! ```
//!
//! The URL comes from `--url` or `REDIS_URL`; a password from the URL, or from
//! `CACHECTL_PASSWORD` or `REDISCLI_AUTH` when the URL has none. It is never printed.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cache_core::admin::{SCAN_COUNT, Server, Servers};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How long connecting may take before a server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "cachectl",
    version,
    about = "Operator commands for the Redis behind the caches"
)]
struct Cli {
    /// The Redis URL, as the caches use it: redis://[:password@]host[:port][/db],
    /// rediss://..., redis+cluster://host:port,..., or
    /// redis+sentinel://[:password@]host:port,.../MASTER_NAME[/db].
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-namespace key counts, sampled memory use and TTL spread, from SCAN.
    Stats {
        /// Keys per namespace whose MEMORY USAGE is sampled.
        #[arg(long, default_value_t = 50)]
        sample: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Removes every key of a namespace ("{namespace}:*") with SCAN + UNLINK.
    Clear {
        /// The namespace, e.g. user:profile.
        namespace: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Pings the server and reports its version, memory and key count.
    Health {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What went wrong, with the exit code it maps to. Never contains the password.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

/// The servers behind the URL.
struct Target {
    servers: Servers,
}

impl Target {
    fn parse(raw: &str) -> Result<Self, Failure> {
        let password = ["CACHECTL_PASSWORD", "REDISCLI_AUTH"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|p| !p.is_empty()));
        let servers =
            Servers::parse(raw, password.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
        Ok(Target { servers })
    }

    /// The URL as printed: password shown as `***`.
    fn shown(&self) -> &str {
        self.servers.url()
    }

    /// Every server holding keys: the one server, the master the sentinels name, or
    /// each master of a cluster.
    async fn connect(&self) -> Result<Vec<Server>, Failure> {
        self.servers
            .connect(CONNECT_TIMEOUT, COMMAND_TIMEOUT)
            .await
            .map_err(|message| Failure { code: 1, message })
    }
}

/// A command of `server` that failed, password scrubbed.
fn failed(server: &Server, error: &redis::RedisError) -> Failure {
    Failure {
        code: 1,
        message: format!("{}: {}", server.address, server.scrub(&error.to_string())),
    }
}

/// Runs `cmd` on `server`.
async fn query<T: redis::FromRedisValue>(
    server: &mut Server,
    cmd: &redis::Cmd,
) -> Result<T, Failure> {
    match cmd.query_async(&mut server.connection).await {
        Ok(value) => Ok(value),
        Err(e) => Err(failed(server, &e)),
    }
}

/// The namespace of a key under `prefix`, as the key layout tells it: exact for
/// hash-tagged and bincode keys, the text before the last `:` otherwise (see
/// `cache_core::keyspace::namespace_of`).
fn namespace_of<'k>(key: &'k str, prefix: Option<&str>) -> &'k str {
    let key = prefix
        .and_then(|p| key.strip_prefix(p)?.strip_prefix(':'))
        .unwrap_or(key);
    cache_core::keyspace::namespace_of(key).unwrap_or("(none)")
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} keys ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.set_message(what.to_owned());
    bar
}

/// TTL spread of one namespace, in milliseconds.
#[derive(Debug, Default, Serialize)]
struct TtlSpread {
    min_ms: Option<i64>,
    max_ms: Option<i64>,
    /// Keys without an expiry (never expire: a bug for a cache).
    without_ttl: u64,
    under_1m: u64,
    under_10m: u64,
    under_1h: u64,
    under_1d: u64,
    longer: u64,
}

impl TtlSpread {
    fn add(&mut self, pttl: i64) {
        if pttl < 0 {
            // -1: no expiry; -2: expired between SCAN and PTTL (gone).
            if pttl == -1 {
                self.without_ttl += 1;
            }
            return;
        }
        self.min_ms = Some(self.min_ms.map_or(pttl, |m| m.min(pttl)));
        self.max_ms = Some(self.max_ms.map_or(pttl, |m| m.max(pttl)));
        let slot = match pttl {
            0..60_000 => &mut self.under_1m,
            60_000..600_000 => &mut self.under_10m,
            600_000..3_600_000 => &mut self.under_1h,
            3_600_000..86_400_000 => &mut self.under_1d,
            _ => &mut self.longer,
        };
        *slot += 1;
    }
}

#[derive(Debug, Default, Serialize)]
struct NamespaceStats {
    namespace: String,
    keys: u64,
    /// Keys whose MEMORY USAGE was read.
    sampled: u64,
    sampled_bytes: u64,
    /// `sampled_bytes / sampled * keys`.
    estimated_bytes: u64,
    ttl: TtlSpread,
}

#[derive(Debug, Serialize)]
struct StatsReport {
    url: String,
    /// The servers scanned: the one server, or every master of a cluster.
    servers: Vec<String>,
    keys_scanned: u64,
    namespaces: Vec<NamespaceStats>,
}

async fn stats(target: &Target, sample: usize, json: bool) -> Result<(), Failure> {
    let prefix = target.servers.prefix();
    let mut servers = target.connect().await?;
    let mut total = 0;
    for server in &mut servers {
        total += query::<u64>(server, &redis::cmd("DBSIZE")).await?;
    }
    let bar = progress(Some(total), "scanning");
    let mut by_ns: BTreeMap<String, NamespaceStats> = BTreeMap::new();
    let mut scanned = 0;
    for server in &mut servers {
        let mut cursor: u64 = 0;
        loop {
            // Under a prefix, only its keys: another environment's are not ours to count.
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            if let Some(prefix) = prefix {
                scan.arg("MATCH").arg(format!("{prefix}:*"));
            }
            let (next, keys): (u64, Vec<String>) = query(server, &scan).await?;
            // One round trip per page: the PTTL of every key, MEMORY USAGE of the sample.
            let mut pipe = redis::pipe();
            let mut sampled = Vec::with_capacity(keys.len());
            for key in &keys {
                pipe.cmd("PTTL").arg(key);
                let entry = by_ns
                    .entry(namespace_of(key, prefix).to_owned())
                    .or_default();
                let take = (entry.sampled as usize) < sample;
                if take {
                    entry.sampled += 1;
                    pipe.cmd("MEMORY").arg("USAGE").arg(key);
                }
                sampled.push(take);
            }
            let replies: Vec<Option<i64>> = if keys.is_empty() {
                Vec::new()
            } else {
                match pipe.query_async(&mut server.connection).await {
                    Ok(replies) => replies,
                    Err(e) => return Err(failed(server, &e)),
                }
            };
            let mut replies = replies.into_iter();
            for (key, take) in keys.iter().zip(sampled) {
                let entry = by_ns
                    .get_mut(namespace_of(key, prefix))
                    .expect("entry made above");
                entry.keys += 1;
                entry.ttl.add(replies.next().flatten().unwrap_or(-2));
                if take {
                    entry.sampled_bytes += replies.next().flatten().unwrap_or(0).max(0) as u64;
                }
            }
            scanned += keys.len() as u64;
            bar.inc(keys.len() as u64);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    bar.finish_and_clear();
    let namespaces: Vec<NamespaceStats> = by_ns
        .into_iter()
        .map(|(namespace, mut s)| {
            s.namespace = namespace;
            s.estimated_bytes = (s.sampled_bytes * s.keys)
                .checked_div(s.sampled)
                .unwrap_or(0);
            s
        })
        .filter(|s| s.keys > 0)
        .collect();
    let report = StatsReport {
        url: target.shown().to_owned(),
        servers: servers.iter().map(|s| s.address.clone()).collect(),
        keys_scanned: scanned,
        namespaces,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data")
        );
        return Ok(());
    }
    println!(
        "{} ({} keys scanned on {} server(s))",
        report.url,
        report.keys_scanned,
        report.servers.len()
    );
    println!(
        "{:<32} {:>9} {:>12} {:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "namespace",
        "keys",
        "memory~",
        "ttl min",
        "ttl max",
        "no ttl",
        "<1m",
        "<10m",
        "<1h",
        "<1d",
        ">=1d"
    );
    for s in &report.namespaces {
        println!(
            "{:<32} {:>9} {:>12} {:>10} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6}",
            s.namespace,
            s.keys,
            human_bytes(s.estimated_bytes),
            s.ttl.min_ms.map_or("-".into(), human_ms),
            s.ttl.max_ms.map_or("-".into(), human_ms),
            s.ttl.without_ttl,
            s.ttl.under_1m,
            s.ttl.under_10m,
            s.ttl.under_1h,
            s.ttl.under_1d,
            s.ttl.longer,
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

async fn clear(target: &Target, namespace: &str, yes: bool) -> Result<(), Failure> {
    // The library's grammar: no glob characters, so the patterns match this namespace only.
    let patterns = cache_core::admin::clear_patterns(namespace, target.servers.prefix())
        .map_err(|e| Failure::usage(e.to_string()))?
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Failure::usage(
                "refusing to clear without confirmation: stdin is not a terminal; pass --yes",
            ));
        }
        eprint!(
            "Remove every key matching {patterns} from {}? [y/N] ",
            target.shown()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Failure::usage(format!("no answer: {e}")))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(Failure {
                code: 1,
                message: "aborted: nothing removed".into(),
            });
        }
    }
    let mut servers = target.connect().await?;
    let bar = progress(None, &format!("clearing {namespace}"));
    let mut removed = 0;
    for server in &mut servers {
        let before = removed;
        let cleared = server
            .clear(namespace, &mut |n| {
                bar.set_message(format!("clearing {namespace}: {} removed", before + n));
                bar.tick();
            })
            .await;
        match cleared {
            Ok(n) => removed += n,
            Err((n, reason)) => {
                bar.finish_and_clear();
                return Err(Failure {
                    code: 1,
                    message: format!(
                        "{}: {reason} (removed {} keys before it failed)",
                        server.address,
                        removed + n
                    ),
                });
            }
        }
    }
    bar.finish_and_clear();
    println!("removed {removed} keys matching {patterns}");
    Ok(())
}

#[derive(Serialize)]
struct NodeReport {
    address: String,
    ping_ms: f64,
    version: String,
    role: String,
    used_memory: String,
    keys: u64,
}

#[derive(Serialize)]
struct HealthReport {
    url: String,
    healthy: bool,
    /// The slowest server's round trip.
    ping_ms: f64,
    version: String,
    role: String,
    used_memory: String,
    /// Keys on every server together.
    keys: u64,
    /// Each server: the one server, or every master of a cluster.
    nodes: Vec<NodeReport>,
}

fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

async fn node_health(server: &mut Server) -> Result<NodeReport, Failure> {
    let started = Instant::now();
    let pong: String = query(server, &redis::cmd("PING")).await?;
    let ping = started.elapsed();
    if pong != "PONG" {
        return Err(Failure {
            code: 1,
            message: format!("{}: answered PING with {pong:?}", server.address),
        });
    }
    let info: String = query(server, &redis::cmd("INFO")).await?;
    let keys: u64 = query(server, &redis::cmd("DBSIZE")).await?;
    Ok(NodeReport {
        address: server.address.clone(),
        ping_ms: ping.as_secs_f64() * 1000.0,
        version: info_field(&info, "redis_version"),
        role: info_field(&info, "role"),
        used_memory: info_field(&info, "used_memory_human"),
        keys,
    })
}

async fn health(target: &Target, json: bool) -> Result<(), Failure> {
    let mut nodes = Vec::new();
    for server in &mut target.connect().await? {
        nodes.push(node_health(server).await?);
    }
    let slowest = nodes
        .iter()
        .max_by(|a, b| a.ping_ms.total_cmp(&b.ping_ms))
        .expect("connect returns at least one server");
    let report = HealthReport {
        url: target.shown().to_owned(),
        healthy: true,
        ping_ms: slowest.ping_ms,
        version: slowest.version.clone(),
        role: slowest.role.clone(),
        used_memory: slowest.used_memory.clone(),
        keys: nodes.iter().map(|n| n.keys).sum(),
        nodes,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data")
        );
    } else {
        for node in &report.nodes {
            println!(
                "healthy: {} answered PING in {:.2} ms; redis {} ({}), {} keys, {} used",
                node.address, node.ping_ms, node.version, node.role, node.keys, node.used_memory
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cachectl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = Target::parse(&cli.url).and_then(|target| {
        runtime.block_on(async {
            match &cli.command {
                Command::Stats { sample, json } => stats(&target, *sample, *json).await,
                Command::Clear { namespace, yes } => clear(&target, namespace, *yes).await,
                Command::Health { json } => health(&target, *json).await.map_err(|f| Failure {
                    message: format!("unhealthy: {}", f.message),
                    ..f
                }),
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("cachectl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
