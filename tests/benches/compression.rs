//! What compressing cached values costs and saves, and why `compress = true` uses LZ4
//! from `COMPRESS_ABOVE` bytes of body on. Three parts, printed as markdown tables:
//!
//! 1. **Compressor choice**: for values of about 100 B, 1 KB, 10 KB and 100 KB of bincode
//!    body, LZ4 (`lz4_flex::block`, what the library uses) against zstd levels 1 and 3
//!    (`zstd::bulk`, with a reused context and, for level 1, a new context per call):
//!    compressed bytes, ratio, and time per compress and per decompress; bincode encode
//!    and decode of the same value for scale.
//! 2. **Threshold**: LZ4 at bodies of about 128 B to 4 KiB: bytes saved per entry
//!    against the time spent compressing and decompressing them.
//! 3. **Through the library**, against a real `redis-server` on loopback that the bench
//!    starts itself: `set` and `get` of a 10 KB and a 100 KB value, and `mget` of 100
//!    entries of about 2 KB and 10 KB, with a `compress = true` cache and a plain one,
//!    plus what each entry takes in Redis (`STRLEN`, `MEMORY USAGE`).
//!
//! The values are a `Vec` of user-profile records (id, username, display name, email,
//! country, timestamps, roles, a small settings map, follower count, sometimes a short
//! bio) made by a seeded generator from lists of names, domains, locales and words, so
//! every run measures the same bytes. Text fields repeat across records as they do in
//! real data (domains, roles, settings keys); ids and timestamps do not.
//!
//! Times in parts 1 and 2 are wall time, the median over batches of at least 50 µs of
//! back-to-back calls on one thread (a batch's time divided by its calls), so a batch
//! preempted by another process on this shared machine falls off the median. The CPU
//! column is the thread's user + system time over all batches of a measurement divided
//! by the calls: a mean, from `/proc/thread-self/stat`, which counts in 10 ms ticks
//! (about ±4% over a 250 ms measurement). Part 3 runs the two caches' calls
//! alternately, one call each in turn, so both see the same machine; its rates are calls
//! divided by the time spent in that cache's own calls.
//!
//! Run: `cargo bench -p cache-tests --bench compression` (about 45 s after the build). A
//! watchdog aborts the process if the run takes more than 3 minutes.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cache_manager::codec::{COMPRESS_ABOVE, COMPRESSED_TAG, FRAME_LEN, FRAME_TAG};
use cache_manager::{Cache, cache_registry};
use cache_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// How long each measurement of parts 1 and 2 runs, after its warm-up.
const MICRO_BUDGET: Duration = Duration::from_millis(250);
/// The shortest batch of back-to-back calls: long enough that reading the clock is noise.
const BATCH_AT_LEAST: Duration = Duration::from_micros(50);
/// How long each of `set` and `get` runs per value size, both caches in turn.
const SET_GET_BUDGET: Duration = Duration::from_secs(2);
/// How long `mget` runs per entry size, both caches in turn (so about half each).
const MGET_BUDGET: Duration = Duration::from_secs(6);
/// Any single call to Redis slower than this fails the bench: something hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// The whole run must end within this, or the watchdog aborts the process.
const WATCHDOG: Duration = Duration::from_secs(180);

/// Body sizes of part 1, the compressor choice.
const CHOICE_SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];
/// Body sizes of part 2, around the threshold.
const THRESHOLD_SIZES: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];

/// A user profile as a service would cache it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    username: String,
    display_name: String,
    email: String,
    country: String,
    created_at: i64,
    last_seen: Option<i64>,
    roles: Vec<String>,
    settings: BTreeMap<String, String>,
    followers: u32,
    verified: bool,
    bio: Option<String>,
}

/// Profiles compressed above the threshold, as `compress = true` stores them.
#[derive(Cache)]
#[cache(namespace = "bench:compression:packed", key = u32, value = Vec<Profile>, compress = true)]
struct Packed;

/// The same values stored as they are.
#[derive(Cache)]
#[cache(namespace = "bench:compression:plain", key = u32, value = Vec<Profile>)]
struct Plain;

cache_registry! {
    /// Both caches, on one connection.
    struct Caches {
        packed: Packed,
        plain: Plain,
    }
}

/// First names of the generated users.
const FIRST: [&str; 24] = [
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Edsger",
    "Radia",
    "Donald",
    "Sophie",
    "John",
    "Hedy",
    "Tim",
    "Katherine",
    "Niklaus",
    "Lynn",
    "Guido",
    "Anita",
    "Bjarne",
    "Jean",
    "Yukihiro",
];
/// Last names of the generated users.
const LAST: [&str; 24] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Knuth",
    "Wilson",
    "McCarthy",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Wirth",
    "Conway",
    "van Rossum",
    "Borg",
    "Stroustrup",
    "Sammet",
    "Matsumoto",
];
/// Email domains, a few of which most users share.
const DOMAINS: [&str; 8] = [
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "proton.me",
    "icloud.com",
    "example.org",
    "acme-corp.io",
    "fastmail.com",
];
/// Country, language and time zone, which go together.
const PLACES: [(&str, &str, &str); 8] = [
    ("GB", "en-GB", "Europe/London"),
    ("US", "en-US", "America/New_York"),
    ("DE", "de-DE", "Europe/Berlin"),
    ("FR", "fr-FR", "Europe/Paris"),
    ("JP", "ja-JP", "Asia/Tokyo"),
    ("BR", "pt-BR", "America/Sao_Paulo"),
    ("IN", "en-IN", "Asia/Kolkata"),
    ("ES", "es-ES", "Europe/Madrid"),
];
/// Roles; every user is a viewer, some are more.
const ROLES: [&str; 5] = ["viewer", "editor", "admin", "billing", "support"];
/// The `theme` setting's values.
const THEMES: [&str; 3] = ["light", "dark", "system"];
/// Words of the short bios.
const WORDS: [&str; 32] = [
    "backend",
    "engineer",
    "coffee",
    "distributed",
    "systems",
    "climbing",
    "rust",
    "music",
    "open",
    "source",
    "maintainer",
    "photography",
    "data",
    "platform",
    "team",
    "lead",
    "writing",
    "about",
    "databases",
    "and",
    "cats",
    "runner",
    "designer",
    "product",
    "caching",
    "latency",
    "curious",
    "learner",
    "mentor",
    "speaker",
    "builder",
    "home",
];

/// SplitMix64: a seeded generator, so every run measures the same values.
struct SplitMix(u64);

impl SplitMix {
    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of `items`.
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One profile with the field values a real user table holds.
fn profile(rng: &mut SplitMix) -> Profile {
    let first = rng.pick(&FIRST);
    let last = rng.pick(&LAST);
    let number = rng.below(1000);
    let (country, language, zone) = PLACES[rng.below(PLACES.len() as u64) as usize];
    let created_at = 1_420_000_000 + rng.below(330_000_000) as i64;
    let mut roles = vec!["viewer".to_owned()];
    for _ in 0..rng.below(3) {
        let role = rng.pick(&ROLES[1..]).to_owned();
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let settings = BTreeMap::from([
        ("lang".to_owned(), language.to_owned()),
        ("tz".to_owned(), zone.to_owned()),
        ("theme".to_owned(), rng.pick(&THEMES).to_owned()),
    ]);
    // A quarter of users wrote a bio.
    let bio = (rng.below(4) == 0).then(|| {
        let words: Vec<&str> = (0..4 + rng.below(8)).map(|_| rng.pick(&WORDS)).collect();
        words.join(" ")
    });
    let lower = |s: &str| s.to_lowercase().replace([' ', '-'], "");
    Profile {
        id: 1_000_000 + rng.below(4_000_000_000),
        username: format!("{}{}{number}", lower(&first[..1]), lower(last)),
        display_name: format!("{first} {last}"),
        email: format!(
            "{}.{}{number}@{}",
            lower(first),
            lower(last),
            rng.pick(&DOMAINS)
        ),
        country: country.to_owned(),
        created_at,
        last_seen: (rng.below(10) != 0).then(|| created_at + rng.below(300_000_000) as i64),
        roles,
        settings,
        followers: rng.below(5000) as u32,
        verified: rng.below(5) == 0,
        bio,
    }
}

/// bincode 2 with the `standard` config, as the library encodes a body.
fn encode(value: &[Profile]) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("profiles encode")
}

/// Reads back what [`encode`] wrote.
fn decode(body: &[u8]) -> Vec<Profile> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .expect("profiles decode")
        .0
}

/// The profiles, from generator `seed`, whose bincode body is closest to `target` bytes
/// (at least one record).
fn profiles_of(target: usize, seed: u64) -> Vec<Profile> {
    let mut rng = SplitMix(seed);
    let mut records = vec![profile(&mut rng)];
    let mut size = encode(&records).len();
    loop {
        let next = profile(&mut rng);
        // A record adds its own bytes; the Vec's length prefix grows by at most 2.
        let grown = size + encode(std::slice::from_ref(&next)).len() - 1;
        if grown.abs_diff(target) >= size.abs_diff(target) {
            return records;
        }
        records.push(next);
        size = encode(&records).len();
    }
}

/// One value under test: its records and their bincode body.
struct Sample {
    records: Vec<Profile>,
    body: Vec<u8>,
}

impl Sample {
    fn new(target: usize, seed: u64) -> Self {
        let records = profiles_of(target, seed);
        let body = encode(&records);
        Sample { records, body }
    }

    /// `1 234 B (9 rec.)`: the body's size and how many records made it.
    fn label(&self) -> String {
        format!(
            "{} B ({} rec.)",
            grouped(self.body.len()),
            self.records.len()
        )
    }
}

/// CPU time (user + system) the calling thread has used so far, from
/// `/proc/thread-self/stat`; `None` where there is no such file.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // `/proc` counts in USER_HZ, which is 100 on every Linux architecture.
    Some(Duration::from_millis(ticks * 10))
}

/// Time per call of one operation.
#[derive(Clone, Copy)]
struct Timing {
    /// Median over batches of wall time per call.
    wall: Duration,
    /// Mean CPU time per call over all batches, where the thread's CPU time is readable.
    cpu: Option<Duration>,
}

/// Times `op` on this thread: a warm-up that also sizes the batches, then batches of
/// back-to-back calls for [`MICRO_BUDGET`].
fn measure(mut op: impl FnMut()) -> Timing {
    // The warm-up fills the caches and the allocator's free lists as steady use would.
    let warm = Instant::now();
    let mut calls = 0u32;
    while warm.elapsed() < Duration::from_millis(20) {
        op();
        calls += 1;
    }
    let per_call = warm.elapsed() / calls;
    let batch = (BATCH_AT_LEAST.as_nanos() / per_call.as_nanos().max(1)).max(1) as u32;
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let mut per_batch = Vec::new();
    let mut total = 0u64;
    while started.elapsed() < MICRO_BUDGET || per_batch.len() < 5 {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        per_batch.push(t.elapsed() / batch);
        total += u64::from(batch);
    }
    let cpu = thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| (after - before).div_f64(total as f64));
    per_batch.sort_unstable();
    Timing {
        wall: per_batch[per_batch.len() / 2],
        cpu,
    }
}

/// A time in µs, with as many decimals as its size deserves.
fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// [`micros`], or a dash where the CPU time is not readable.
fn micros_or_dash(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), micros)
}

/// `123 456`: digits in groups of three, as the README writes sizes.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Compresses a body.
type Pack = Box<dyn FnMut(&[u8]) -> Vec<u8>>;
/// Decompresses a body, given its length before compression.
type Unpack = Box<dyn FnMut(&[u8], usize) -> Vec<u8>>;

/// A compressor under comparison: how it packs a body, and how it unpacks it again given
/// the body's length (which the entry's header stores).
struct Method {
    name: &'static str,
    pack: Pack,
    unpack: Unpack,
}

/// LZ4 as the library uses it, and zstd as it could be used instead.
fn methods() -> Vec<Method> {
    // Reused contexts are zstd at its best: a library would keep one per thread.
    let zstd_reused = |level: i32| {
        let mut compressor = zstd::bulk::Compressor::new(level).expect("zstd compressor");
        let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompressor");
        (
            Box::new(move |body: &[u8]| compressor.compress(body).expect("zstd compresses"))
                as Pack,
            Box::new(move |packed: &[u8], len: usize| {
                decompressor
                    .decompress(packed, len)
                    .expect("zstd decompresses")
            }) as Unpack,
        )
    };
    let (pack1, unpack1) = zstd_reused(1);
    let (pack3, unpack3) = zstd_reused(3);
    vec![
        Method {
            name: "lz4_flex block",
            pack: Box::new(lz4_flex::block::compress),
            unpack: Box::new(|packed, len| {
                lz4_flex::block::decompress(packed, len).expect("lz4 decompresses")
            }),
        },
        Method {
            name: "zstd 1 (reused context)",
            pack: pack1,
            unpack: unpack1,
        },
        Method {
            name: "zstd 3 (reused context)",
            pack: pack3,
            unpack: unpack3,
        },
        // The one-line use, `zstd::bulk::compress`, sets up a context on every call.
        Method {
            name: "zstd 1 (new context per call)",
            pack: Box::new(|body| zstd::bulk::compress(body, 1).expect("zstd compresses")),
            unpack: Box::new(|packed, len| {
                zstd::bulk::decompress(packed, len).expect("zstd decompresses")
            }),
        },
    ]
}

/// What one compressor did with one body.
struct Packing {
    packed_len: usize,
    compress: Timing,
    decompress: Timing,
}

/// Packs `body` with `method`, checks that it unpacks to the same bytes, and times both.
fn pack_and_time(method: &mut Method, body: &[u8]) -> Packing {
    let packed = (method.pack)(body);
    assert_eq!(
        (method.unpack)(&packed, body.len()),
        body,
        "{} round-trips",
        method.name
    );
    let compress = measure(|| {
        black_box((method.pack)(black_box(body)));
    });
    let decompress = measure(|| {
        black_box((method.unpack)(black_box(&packed), body.len()));
    });
    Packing {
        packed_len: packed.len(),
        compress,
        decompress,
    }
}

/// bincode encode and decode of a sample's records.
fn bincode_timings(sample: &Sample) -> (Timing, Timing) {
    let encode_time = measure(|| {
        black_box(encode(black_box(&sample.records)));
    });
    let decode_time = measure(|| {
        black_box(decode(black_box(&sample.body)));
    });
    (encode_time, decode_time)
}

/// Part 1: LZ4 against zstd at four sizes.
fn compressor_choice() {
    println!("## Compressor choice\n");
    println!(
        "| body | method | output B | ratio | compress µs | CPU µs | decompress µs | CPU µs |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut methods = methods();
    for (i, &size) in CHOICE_SIZES.iter().enumerate() {
        let sample = Sample::new(size, 1 + i as u64);
        let (encode_time, decode_time) = bincode_timings(&sample);
        println!(
            "| {} | bincode encode / decode (for scale) | {} | - | {} | {} | {} | {} |",
            sample.label(),
            grouped(sample.body.len()),
            micros(encode_time.wall),
            micros_or_dash(encode_time.cpu),
            micros(decode_time.wall),
            micros_or_dash(decode_time.cpu),
        );
        for method in &mut methods {
            let packing = pack_and_time(method, &sample.body);
            println!(
                "| | {} | {} | {:.2} | {} | {} | {} | {} |",
                method.name,
                grouped(packing.packed_len),
                sample.body.len() as f64 / packing.packed_len as f64,
                micros(packing.compress.wall),
                micros_or_dash(packing.compress.cpu),
                micros(packing.decompress.wall),
                micros_or_dash(packing.decompress.cpu),
            );
        }
    }
    println!(
        "\nTimes: median wall time per call over batches of ≥ 50 µs; CPU: the thread's mean \
         CPU time per call (10 ms ticks over ~250 ms). Ratio: body ÷ output."
    );
}

/// Part 2: what LZ4 saves per entry, in bytes and in Redis's memory, and at what cost,
/// around the threshold. Entries are written to Redis with `raw` (on `runtime`) only to
/// read their `MEMORY USAGE`, outside the timed loops.
fn threshold(runtime: &tokio::runtime::Runtime, raw: &mut MultiplexedConnection) {
    println!("\n## Threshold (lz4_flex block)\n");
    println!(
        "| body | entry plain → compressed B | saved B | saved % | Redis MEMORY USAGE plain → \
         compressed B | compress µs | decompress µs | bincode enc + dec µs | ns per byte saved \
         | pays on links below |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut lz4 = methods().remove(0);
    for (i, &size) in THRESHOLD_SIZES.iter().enumerate() {
        let sample = Sample::new(size, 100 + i as u64);
        let (encode_time, decode_time) = bincode_timings(&sample);
        let packing = pack_and_time(&mut lz4, &sample.body);
        // The entries as `encode_entry` writes them: the tag, a fingerprint and the body,
        // or the tag, a fingerprint, the body's length and the LZ4 block.
        let mut plain = vec![FRAME_TAG, 0, 0, 0, 0];
        plain.extend_from_slice(&sample.body);
        let mut packed = vec![COMPRESSED_TAG, 0, 0, 0, 0];
        packed.extend_from_slice(&(sample.body.len() as u32).to_le_bytes());
        packed.extend_from_slice(&lz4_flex::block::compress(&sample.body));
        assert_eq!(packed.len(), FRAME_LEN + 4 + packing.packed_len);
        let memory = runtime.block_on(async {
            let mut usage = [0; 2];
            for (slot, (which, entry)) in [("plain", &plain), ("packed", &packed)]
                .into_iter()
                .enumerate()
            {
                let key = format!("bench:compression:threshold:{i}:{which}");
                deadline(
                    "SET",
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(entry.as_slice())
                        .query_async::<()>(&mut *raw),
                )
                .await
                .expect("SET");
                usage[slot] = stored(raw, &[key]).await.1;
            }
            usage
        });
        let saved = plain.len() as i64 - packed.len() as i64;
        let spent = packing.compress.wall + packing.decompress.wall;
        let (per_byte, link) = if saved > 0 {
            // Compressing pays in transfer time when sending the saved bytes takes longer
            // than compressing and decompressing them: below `saved bits / spent` bit/s.
            let bits_per_second = saved as f64 * 8.0 / spent.as_secs_f64();
            (
                format!("{:.1}", spent.as_secs_f64() * 1e9 / saved as f64),
                if bits_per_second < 1e9 {
                    format!("{:.0} Mbit/s", bits_per_second / 1e6)
                } else {
                    format!("{:.1} Gbit/s", bits_per_second / 1e9)
                },
            )
        } else {
            ("-".to_owned(), "never".to_owned())
        };
        println!(
            "| {} | {} → {} | {} | {:.0}% | {} → {} | {} | {} | {} | {} | {} |",
            sample.label(),
            grouped(plain.len()),
            grouped(packed.len()),
            saved,
            saved as f64 / plain.len() as f64 * 100.0,
            grouped(memory[0] as usize),
            grouped(memory[1] as usize),
            micros(packing.compress.wall),
            micros(packing.decompress.wall),
            micros(encode_time.wall + decode_time.wall),
            per_byte,
            link,
        );
    }
    println!(
        "\nEntry sizes include the {FRAME_LEN}-byte header (+4 for the length of a compressed \
         body); MEMORY USAGE adds the key and Redis's per-key overhead, in the allocator's size \
         classes. \"Pays on links below\": the link speed under which sending the saved bytes \
         takes longer than compressing and decompressing them (one write, one read). The \
         library compresses bodies of {COMPRESS_ABOVE} B or more."
    );
}

/// Runs `call` within [`CALL_DEADLINE`], or fails the bench saying `what` hung.
async fn deadline<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {CALL_DEADLINE:?}"))
}

/// The Redis key of `key` in the plain cache (`side` 0) or the compressed one, as the
/// library spells it (namespace, and whatever prefix or layout it adds).
fn redis_key(caches: &Caches, side: usize, key: u32) -> String {
    if side == 0 {
        caches.plain().redis_key(&key)
    } else {
        caches.packed().redis_key(&key)
    }
}

/// The bytes Redis holds for `keys`: their `STRLEN`s and their `MEMORY USAGE`s, summed.
async fn stored(raw: &mut MultiplexedConnection, keys: &[String]) -> (u64, u64) {
    let (mut strlen, mut usage) = (0, 0);
    for key in keys {
        let len: u64 = deadline(
            "STRLEN",
            redis::cmd("STRLEN").arg(key).query_async(&mut *raw),
        )
        .await
        .expect("STRLEN");
        assert!(len > 0, "{key} holds the entry");
        strlen += len;
        let bytes: u64 = deadline(
            "MEMORY USAGE",
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut *raw),
        )
        .await
        .expect("MEMORY USAGE");
        usage += bytes;
    }
    (strlen, usage)
}

/// The `p` quantile of `sorted`, nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latencies of one cache's calls: p50, p99 and calls per second of time in calls.
fn summary(mut latencies: Vec<Duration>) -> (Duration, Duration, f64) {
    latencies.sort_unstable();
    let busy: Duration = latencies.iter().sum();
    (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len() as f64 / busy.as_secs_f64(),
    )
}

/// Part 3: `set`, `get` and `mget` through the library, compressed and not.
async fn through_redis(caches: &Caches, raw: &mut MultiplexedConnection) {
    println!("\n## Through the library (redis-server on loopback, sequential calls)\n");
    println!(
        "| value | cache | STRLEN B | MEMORY USAGE B | set p50 µs | set p99 µs | get p50 µs \
         | get p99 µs | set + get p50 µs |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (key, size) in [(1u32, 10_000), (2, 100_000)] {
        let sample = Sample::new(size, 200 + u64::from(key));
        let value = &sample.records;
        let mut sets = [Vec::new(), Vec::new()];
        let started = Instant::now();
        while started.elapsed() < SET_GET_BUDGET {
            for (side, latencies) in sets.iter_mut().enumerate() {
                let t = Instant::now();
                let wrote = if side == 0 {
                    deadline("set", caches.plain().set(&key, value)).await
                } else {
                    deadline("set", caches.packed().set(&key, value)).await
                };
                latencies.push(t.elapsed());
                assert!(wrote.expect("the value encodes"), "set reached Redis");
            }
        }
        assert_eq!(caches.plain().get(&key).await.as_ref(), Some(value));
        assert_eq!(caches.packed().get(&key).await.as_ref(), Some(value));
        let mut gets = [Vec::new(), Vec::new()];
        let started = Instant::now();
        while started.elapsed() < SET_GET_BUDGET {
            for (side, latencies) in gets.iter_mut().enumerate() {
                let t = Instant::now();
                let got = if side == 0 {
                    deadline("get", caches.plain().get(&key)).await
                } else {
                    deadline("get", caches.packed().get(&key)).await
                };
                latencies.push(t.elapsed());
                // A miss would be a degraded call, not the read under test.
                assert!(black_box(got).is_some(), "get found the value");
            }
        }
        for (side, name) in [(0, "plain"), (1, "compress = true")] {
            let (strlen, usage) = stored(raw, &[redis_key(caches, side, key)]).await;
            let (set50, set99, _) = summary(std::mem::take(&mut sets[side]));
            let (get50, get99, _) = summary(std::mem::take(&mut gets[side]));
            println!(
                "| {} | {name} | {} | {} | {} | {} | {} | {} | {} |",
                sample.label(),
                grouped(strlen as usize),
                grouped(usage as usize),
                micros(set50),
                micros(set99),
                micros(get50),
                micros(get99),
                micros(set50 + get50),
            );
        }
    }

    println!(
        "\n| mget of 100 entries | cache | STRLEN B (all 100) | MEMORY USAGE B (all 100) \
         | p50 µs | p99 µs | mgets/s |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (first, size) in [(1000u32, 2_000), (2000, 10_000)] {
        let keys: Vec<u32> = (first..first + 100).collect();
        // Every entry holds other users, as entries of a real cache do.
        let entries: HashMap<u32, Vec<Profile>> = keys
            .iter()
            .map(|&k| (k, Sample::new(size, u64::from(k)).records))
            .collect();
        let body: usize = entries.values().map(|v| encode(v).len()).sum::<usize>() / 100;
        assert!(
            deadline("mset", caches.plain().mset(&entries))
                .await
                .unwrap()
        );
        assert!(
            deadline("mset", caches.packed().mset(&entries))
                .await
                .unwrap()
        );
        let mut latencies = [Vec::new(), Vec::new()];
        let started = Instant::now();
        while started.elapsed() < MGET_BUDGET {
            for (side, latencies) in latencies.iter_mut().enumerate() {
                let t = Instant::now();
                let got = if side == 0 {
                    deadline("mget", caches.plain().mget(&keys)).await
                } else {
                    deadline("mget", caches.packed().mget(&keys)).await
                };
                latencies.push(t.elapsed());
                let got = got.expect("100 keys are within the batch limit");
                assert!(
                    got.len() == 100 && got.values().all(Option::is_some),
                    "mget found every entry"
                );
            }
        }
        for (side, name) in [(0, "plain"), (1, "compress = true")] {
            let redis_keys: Vec<String> =
                keys.iter().map(|&k| redis_key(caches, side, k)).collect();
            let (strlen, usage) = stored(raw, &redis_keys).await;
            let (p50, p99, rate) = summary(std::mem::take(&mut latencies[side]));
            println!(
                "| ~{} B body each | {name} | {} | {} | {} | {} | {rate:.0} |",
                grouped(body),
                grouped(strlen as usize),
                grouped(usage as usize),
                micros(p50),
                micros(p99),
            );
        }
    }
    println!(
        "\nThe two caches' calls alternate, one each in turn; mgets/s is calls ÷ time spent in \
         that cache's calls. STRLEN is the entry as stored; MEMORY USAGE adds Redis's \
         per-key overhead and allocator rounding."
    );
}

/// The version of `package` in the workspace's `Cargo.lock`, which this bench was built
/// against.
fn locked_version(package: &str) -> &'static str {
    let lock = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"));
    let needle = format!("name = \"{package}\"\nversion = \"");
    lock.split_once(needle.as_str())
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("?", |(version, _)| version)
}

/// The `model name` of the first CPU, where `/proc/cpuinfo` says it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Aborts the process after `limit` with a message: a hung bench must not hang CI.
/// `abort` runs no destructors, so it first asks the bench's `redis-server` (on `port`)
/// to shut down, lest it outlive the bench.
fn start_watchdog(port: u16, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("compression bench: still running after {limit:?}; something hangs, aborting");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(b"SHUTDOWN NOSAVE\r\n");
        }
        std::process::abort();
    });
}

fn main() {
    let run = Instant::now();
    let server = RedisServer::new();
    start_watchdog(server.port(), WATCHDOG);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (caches, mut raw, redis_version) = runtime.block_on(async {
        let caches = Caches::new();
        deadline("connect", caches.connect(&server.url()))
            .await
            .expect("connect");
        let mut raw = server.raw().await;
        let info: String = deadline(
            "INFO",
            redis::cmd("INFO").arg("server").query_async(&mut raw),
        )
        .await
        .expect("INFO");
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        (caches, raw, version)
    });

    println!("# Compression\n");
    println!("Command: `cargo bench -p cache-tests --bench compression`\n");
    println!(
        "Configuration: redis-server {redis_version} on loopback; lz4_flex {} (safe-encode, \
         safe-decode); zstd crate {} (libzstd {}); bincode {} (standard config); \
         COMPRESS_ABOVE = {COMPRESS_ABOVE} B; {} ({} cores available, shared with other work).\n",
        locked_version("lz4_flex"),
        locked_version("zstd"),
        zstd::zstd_safe::version_string(),
        locked_version("bincode"),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "Values: a `Vec` of user-profile records (id, username, display name, email, \
         country, created/last-seen timestamps, 1-3 roles, a 3-entry settings map of \
         language/time zone/theme, follower count, verified flag, a short bio for a quarter \
         of users), from a seeded generator; each record is about 100-170 B of bincode.\n"
    );

    // Parts 1 and 2 run on a thread of their own, whose CPU time `measure` reads; the
    // runtime's workers are idle meanwhile. Not on the main thread: there glibc's
    // allocator gives freed memory back to the kernel between calls (it trims the main
    // heap), which made decoding 100 KB half as slow again as on the threads a service
    // decodes on.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                compressor_choice();
                threshold(&runtime, &mut raw);
            })
            .join()
            .expect("parts 1 and 2 ran");
    });
    runtime.block_on(through_redis(&caches, &mut raw));
    println!("\nRun took {:.0} s.", run.elapsed().as_secs_f64());
}
