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

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Keys `SCAN` visits per call: large enough to be quick, small enough that one reply or
/// one `UNLINK` never holds the server for long.
const SCAN_COUNT: usize = 1000;
/// How long connecting may take before the server counts as unreachable.
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
    /// The Redis URL: redis://[:password@]host[:port][/db].
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

/// The target server: a client, the URL as printed, and the secret to scrub.
struct Target {
    client: redis::Client,
    shown: String,
    /// The password, decoded and as written in the URL: scrubbed from every message.
    secrets: Vec<String>,
}

impl Target {
    fn parse(raw: &str) -> Result<Self, Failure> {
        let mut url = url::Url::parse(raw)
            .map_err(|e| Failure::usage(format!("the URL does not parse: {e}")))?;
        if url.scheme() != "redis" && url.scheme() != "rediss" {
            return Err(Failure::usage(format!(
                "unsupported URL scheme {:?}: expected redis:// or rediss://",
                url.scheme()
            )));
        }
        if url.password().is_none() {
            let from_env = ["CACHECTL_PASSWORD", "REDISCLI_AUTH"]
                .iter()
                .find_map(|var| std::env::var(var).ok().filter(|p| !p.is_empty()));
            if let Some(password) = from_env {
                url.set_password(Some(&password))
                    .map_err(|()| Failure::usage("this URL cannot carry a password"))?;
            }
        }
        // The URL holds the password percent-encoded; scrub both forms.
        let secrets: Vec<String> = url
            .password()
            .map(|p| vec![percent_decode(p), p.to_owned()])
            .unwrap_or_default();
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            Failure::usage(format!(
                "the URL is not usable: {}",
                scrub(&e.to_string(), &secrets)
            ))
        })?;
        Ok(Target {
            client,
            shown: shown.to_string(),
            secrets,
        })
    }

    fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }

    fn connect(&self) -> Result<redis::Connection, Failure> {
        let conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| self.failed(&e))?;
        conn.set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(|e| self.failed(&e))?;
        conn.set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(|e| self.failed(&e))?;
        Ok(conn)
    }

    fn failed(&self, error: &redis::RedisError) -> Failure {
        Failure {
            code: 1,
            message: format!("{}: {}", self.shown, self.scrub(&error.to_string())),
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for s in secrets {
        if !s.is_empty() {
            text = text.replace(s, "***");
        }
    }
    text
}

/// The namespace of a key: everything before its last `:` (keys are
/// `"{namespace}:{key}"`; a key whose own text holds a `:` is counted one level deeper).
fn namespace_of(key: &str) -> &str {
    key.rsplit_once(':').map_or("(none)", |(ns, _)| ns)
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
    keys_scanned: u64,
    namespaces: Vec<NamespaceStats>,
}

fn stats(target: &Target, sample: usize, json: bool) -> Result<(), Failure> {
    let mut conn = target.connect()?;
    let total: u64 = redis::cmd("DBSIZE")
        .query(&mut conn)
        .map_err(|e| target.failed(&e))?;
    let bar = progress(Some(total), "scanning");
    let mut by_ns: BTreeMap<String, NamespaceStats> = BTreeMap::new();
    let mut cursor: u64 = 0;
    let mut scanned = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(&mut conn)
            .map_err(|e| target.failed(&e))?;
        // One round trip per page: the PTTL of every key, MEMORY USAGE of the sample.
        let mut pipe = redis::pipe();
        let mut sampled = Vec::with_capacity(keys.len());
        for key in &keys {
            pipe.cmd("PTTL").arg(key);
            let entry = by_ns.entry(namespace_of(key).to_owned()).or_default();
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
            pipe.query(&mut conn).map_err(|e| target.failed(&e))?
        };
        let mut replies = replies.into_iter();
        for (key, take) in keys.iter().zip(sampled) {
            let entry = by_ns.get_mut(namespace_of(key)).expect("entry made above");
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
        url: target.shown.clone(),
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
    println!("{} ({} keys scanned)", report.url, report.keys_scanned);
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

/// Rejects what would make `{namespace}:*` match more than one namespace.
fn check_namespace(namespace: &str) -> Result<(), Failure> {
    let bad = namespace.is_empty()
        || namespace.starts_with(':')
        || namespace.ends_with(':')
        || namespace.contains("::")
        || !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'));
    if bad {
        return Err(Failure::usage(format!(
            "{namespace:?} is not a namespace: use ASCII letters, digits and `: _ - .`, no glob characters, no empty `:` segment"
        )));
    }
    Ok(())
}

fn clear(target: &Target, namespace: &str, yes: bool) -> Result<(), Failure> {
    check_namespace(namespace)?;
    let pattern = format!("{namespace}:*");
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Failure::usage(
                "refusing to clear without confirmation: stdin is not a terminal; pass --yes",
            ));
        }
        eprint!(
            "Remove every key matching '{pattern}' from {}? [y/N] ",
            target.shown
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
    let mut conn = target.connect()?;
    let bar = progress(None, &format!("clearing {pattern}"));
    let mut cursor: u64 = 0;
    let mut removed: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(&mut conn)
            .map_err(|e| target.failed(&e))?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query(&mut conn)
                .map_err(|e| target.failed(&e))?;
            removed += n;
            bar.set_message(format!("clearing {pattern}: {removed} removed"));
            bar.tick();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    bar.finish_and_clear();
    println!("removed {removed} keys matching '{pattern}'");
    Ok(())
}

#[derive(Serialize)]
struct HealthReport {
    url: String,
    healthy: bool,
    ping_ms: f64,
    version: String,
    role: String,
    used_memory: String,
    keys: u64,
}

fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

fn health(target: &Target, json: bool) -> Result<(), Failure> {
    let mut conn = target.connect()?;
    let started = Instant::now();
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .map_err(|e| target.failed(&e))?;
    let ping = started.elapsed();
    let info: String = redis::cmd("INFO")
        .query(&mut conn)
        .map_err(|e| target.failed(&e))?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut conn)
        .map_err(|e| target.failed(&e))?;
    let report = HealthReport {
        url: target.shown.clone(),
        healthy: pong == "PONG",
        ping_ms: ping.as_secs_f64() * 1000.0,
        version: info_field(&info, "redis_version"),
        role: info_field(&info, "role"),
        used_memory: info_field(&info, "used_memory_human"),
        keys,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data")
        );
    } else {
        println!(
            "healthy: {} answered PING in {:.2} ms; redis {} ({}), {} keys, {} used",
            report.url,
            report.ping_ms,
            report.version,
            report.role,
            report.keys,
            report.used_memory
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Target::parse(&cli.url).and_then(|target| match &cli.command {
        Command::Stats { sample, json } => stats(&target, *sample, *json),
        Command::Clear { namespace, yes } => clear(&target, namespace, *yes),
        Command::Health { json } => health(&target, *json).map_err(|f| Failure {
            message: format!("unhealthy: {}", f.message),
            ..f
        }),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("cachectl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
