//! `cachectl` run as a process against a real `redis-server`: health, stats, clear with
//! and without confirmation, and passwords taken from the URL or the environment and
//! never printed; then the URLs the caches use besides `redis://`: a three-master
//! cluster (every master reported, scanned and cleared), TLS with a private CA, a
//! hash-tagged cache's `{namespace}:*` keys, and a `redis+sentinel://` URL (the master
//! the sentinels name, before and after a failover).

use std::process::{Command, Output, Stdio};

use cache_tests::{RedisServer, free_port};
use serde_json::Value;

/// Runs `cachectl` with `args`, stdin not a terminal, no inherited Redis settings.
fn cachectl(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachectl"));
    cmd.arg("--url")
        .arg(url)
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDISCLI_AUTH")
        .env_remove("CACHECTL_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cachectl")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn conn(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Writes `n` keys `{namespace}:{i}`, with `ttl` seconds or none.
fn fill(conn: &mut redis::Connection, namespace: &str, n: usize, ttl: Option<u64>) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        let key = format!("{namespace}:{i}");
        match ttl {
            Some(ttl) => pipe
                .cmd("SET")
                .arg(key)
                .arg("value")
                .arg("EX")
                .arg(ttl)
                .ignore(),
            None => pipe.cmd("SET").arg(key).arg("value").ignore(),
        };
    }
    pipe.query::<()>(conn).unwrap();
}

fn count(conn: &mut redis::Connection, pattern: &str) -> usize {
    let mut n = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        n += keys.len();
        if next == 0 {
            return n;
        }
        cursor = next;
    }
}

#[test]
fn health_reports_a_reachable_server_and_fails_on_an_unreachable_one() {
    let server = RedisServer::new();
    let out = cachectl(&server.url(), &["health", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], true);
    assert!(report["version"].as_str().unwrap().contains('.'));

    let nobody = format!("redis://127.0.0.1:{}/0", free_port());
    let out = cachectl(&nobody, &["health"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unhealthy"), "{}", text(&out));
}

#[test]
fn passwords_from_the_url_or_the_environment_work_and_are_never_printed() {
    let password = "s3cret-Pa55";
    let server = RedisServer::with_password(password);
    let bare = format!("redis://127.0.0.1:{}/0", server.port());
    let with_password = server.url();
    assert!(
        with_password.contains(password),
        "the harness URL carries it"
    );

    let runs = [
        cachectl(&with_password, &["health"], &[]),
        cachectl(&bare, &["health"], &[("CACHECTL_PASSWORD", password)]),
        cachectl(&bare, &["health"], &[("REDISCLI_AUTH", password)]),
        cachectl(&with_password, &["stats"], &[]),
    ];
    for out in &runs {
        assert!(out.status.success(), "{}", text(out));
        assert!(
            !text(out).contains(password),
            "password printed: {}",
            text(out)
        );
    }
    assert!(text(&runs[0]).contains(":***@"), "{}", text(&runs[0]));

    // Without it, or with a wrong one: refused, and still nothing echoed.
    let out = cachectl(&bare, &["health"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let wrong = "wrong-Pa55word";
    let out = cachectl(&bare, &["health"], &[("CACHECTL_PASSWORD", wrong)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains(wrong), "{}", text(&out));
}

#[test]
fn stats_counts_keys_memory_and_ttl_spread_per_namespace() {
    let server = RedisServer::new();
    let mut c = conn(&server.url());
    fill(&mut c, "user:profile", 1500, Some(600));
    fill(&mut c, "session:token", 20, Some(30));
    fill(&mut c, "legacy", 3, None);

    let out = cachectl(&server.url(), &["stats", "--json", "--sample", "10"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["keys_scanned"], 1523);
    let ns = |name: &str| {
        report["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["namespace"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {report}"))
            .clone()
    };
    let profiles = ns("user:profile");
    assert_eq!(profiles["keys"], 1500);
    assert_eq!(profiles["sampled"], 10);
    assert!(profiles["estimated_bytes"].as_u64().unwrap() > 1500 * 10);
    assert_eq!(profiles["ttl"]["under_10m"], 1500);
    assert!(profiles["ttl"]["max_ms"].as_i64().unwrap() <= 600_000);
    let sessions = ns("session:token");
    assert_eq!(sessions["keys"], 20);
    assert_eq!(sessions["ttl"]["under_1m"], 20);
    let legacy = ns("legacy");
    assert_eq!(legacy["ttl"]["without_ttl"], 3);

    // The table form names every namespace.
    let out = cachectl(&server.url(), &["stats"], &[]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for name in ["user:profile", "session:token", "legacy"] {
        assert!(table.contains(name), "{table}");
    }
}

#[test]
fn clear_removes_one_namespace_only_after_confirmation() {
    let server = RedisServer::new();
    let mut c = conn(&server.url());
    fill(&mut c, "user:profile", 2500, Some(600));
    fill(&mut c, "user:profile_old", 10, Some(600));
    fill(&mut c, "session:token", 10, Some(600));

    // No terminal to ask on and no --yes: refused, nothing removed.
    let out = cachectl(&server.url(), &["clear", "user:profile"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    assert_eq!(count(&mut c, "user:profile:*"), 2500);

    // A glob in the namespace would reach other namespaces: refused.
    let out = cachectl(&server.url(), &["clear", "user*", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(count(&mut c, "*"), 2520);

    let out = cachectl(&server.url(), &["clear", "user:profile", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 2500 keys"), "{}", text(&out));
    assert_eq!(count(&mut c, "user:profile:*"), 0);
    assert_eq!(count(&mut c, "user:profile_old:*"), 10);
    assert_eq!(count(&mut c, "session:token:*"), 10);
}

#[derive(cache_manager::Cache)]
#[cache(namespace = "user:name", ttl = 600, key = u64, value = String, codec = "string", local = 100, local_ttl = 600)]
struct Names;

cache_manager::cache_registry! {
    struct Caches {
        names: Names,
    }
}

#[test]
fn clear_empties_first_levels_that_hear_by_pub_sub() {
    // A server without CLIENT TRACKING (refused by its ACL): the library's levels learn of
    // changes only from messages; Redis says nothing of cachectl's UNLINKs.
    let server = RedisServer::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let caches = runtime.block_on(async {
        cache_tests::wire::refuse_tracking(&server.raw().await).await;
        let caches = Caches::new();
        caches.connect(&server.url()).await.unwrap();
        let raw = server.raw().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cache_tests::wire::clients(&raw)
            .await
            .iter()
            .any(|l| l.contains(" flags=P "))
        {
            assert!(std::time::Instant::now() < deadline, "no pub/sub listener");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        caches.names().set(&1, &"Ada".to_owned()).await.unwrap();
        cache_tests::wire::assert_held(&raw, "user:name:1", "Ada", async || {
            caches.names().get(&1).await
        })
        .await;
        caches
    });

    let out = cachectl(&server.url(), &["clear", "user:name", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 1 key"), "{}", text(&out));

    runtime.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while caches.names().get(&1).await.is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the level served a value cachectl cleared for 2 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
}

#[test]
fn a_user_who_may_not_publish_still_clears_every_layout_and_is_told() {
    let server = RedisServer::new();
    let mut c = conn(&server.url());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("ops")
        .arg("on")
        .arg(">ops-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-publish")
        .query(&mut c)
        .unwrap();
    fill(&mut c, "user:name", 5, Some(600));
    fill(&mut c, "{user:name}", 5, Some(600));
    let url = format!("redis://ops:ops-pw@127.0.0.1:{}", server.port());
    let out = cachectl(&url, &["clear", "user:name", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not announced"), "{}", text(&out));
    assert_eq!(count(&mut c, "user:name:*"), 0);
    assert_eq!(
        count(&mut c, "{user:name}:*"),
        0,
        "the second layout was left"
    );
}

#[test]
fn clear_removes_a_hash_tagged_cache_and_leaves_its_neighbours() {
    let server = RedisServer::new();
    let mut c = conn(&server.url());
    fill(&mut c, "{team:member}", 300, Some(600));
    fill(&mut c, "team:member", 5, Some(600));
    fill(&mut c, "{team:member_old}", 7, Some(600));

    let out = cachectl(&server.url(), &["clear", "team:member", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 305 keys"), "{}", text(&out));
    assert_eq!(count(&mut c, "{team:member}:*"), 0);
    assert_eq!(count(&mut c, "team:member:*"), 0);
    assert_eq!(count(&mut c, "{team:member_old}:*"), 7);

    // Braces are not part of a namespace: they would make a tag end early.
    let out = cachectl(&server.url(), &["clear", "{team:member_old}", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(count(&mut c, "{team:member_old}:*"), 7);

    // Stats name a tagged cache by its namespace.
    let out = cachectl(&server.url(), &["stats", "--json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["namespaces"][0]["namespace"], "team:member_old");
    assert_eq!(report["namespaces"][0]["keys"], 7);
}

#[test]
fn every_master_of_a_cluster_is_reported_scanned_and_cleared() {
    use cache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::builder().password("Clu5ter-pw").start();
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    // 2000 keys, each written on the master that serves its slot.
    let mut masters: Vec<redis::Connection> =
        cluster.nodes().iter().map(|n| conn(&n.url())).collect();
    let ranges: Vec<(i64, i64, u16)> = slot_ranges(&mut masters[0]);
    let mut per_master = vec![0; masters.len()];
    for k in 0..2000 {
        let key = format!("user:profile:{k}");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut masters[0])
            .unwrap();
        let port = ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .unwrap()
            .2;
        let index = cluster
            .nodes()
            .iter()
            .position(|n| n.port() == port)
            .unwrap();
        redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .arg("EX")
            .arg(600)
            .query::<()>(&mut masters[index])
            .unwrap();
        per_master[index] += 1;
    }
    assert!(
        per_master.iter().all(|&n| n > 0),
        "keys on every master: {per_master:?}"
    );

    let out = cachectl(&url, &["health", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Clu5ter-pw"), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(report["keys"], 2000);
    assert_eq!(
        report["url"].as_str().unwrap(),
        url.replace("Clu5ter-pw", "***")
    );

    let out = cachectl(&url, &["stats", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["servers"].as_array().unwrap().len(), 3);
    assert_eq!(report["keys_scanned"], 2000);

    let out = cachectl(&url, &["clear", "user:profile", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 2000 keys"), "{}", text(&out));
    for node in cluster.nodes() {
        assert_eq!(count(&mut conn(&node.url()), "*"), 0);
    }
}

#[test]
fn the_master_the_sentinels_name_is_reported_and_cleared() {
    use cache_tests::sentinel::SentinelGroup;
    use std::time::Duration;

    let mut group = SentinelGroup::builder()
        .password("Sent1nel-data")
        .sentinel_password("Sent1nel-own")
        .start();
    let url = group.url();
    let mut master_conn = conn(&group.master.url());
    fill(&mut master_conn, "user:name", 30, Some(600));
    // The replica must hold the keys before the master is killed, or the promoted one
    // has nothing to clear (`WAIT` on the connection that wrote them).
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut master_conn)
        .unwrap();
    assert_eq!(replicas, 1, "the replica did not acknowledge the writes");

    let out = cachectl(&url, &["health", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    for secret in ["Sent1nel-data", "Sent1nel-own"] {
        assert!(!text(&out).contains(secret), "{}", text(&out));
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["role"], "master", "{report}");
    assert_eq!(report["keys"], 30, "{report}");
    let master = format!("127.0.0.1:{}", group.master.port());
    assert_eq!(report["nodes"][0]["address"], master.as_str(), "{report}");

    // After a failover, the promoted replica is the one reported and cleared.
    group.master.kill();
    let promoted = group.replica.port();
    group.wait_for_master(promoted, Duration::from_secs(30));
    let out = cachectl(&url, &["clear", "user:name", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 30 keys"), "{}", text(&out));
    assert_eq!(count(&mut conn(&group.replica.url()), "user:name:*"), 0);
    let out = cachectl(&url, &["health", "--json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["nodes"][0]["address"],
        format!("127.0.0.1:{promoted}").as_str(),
        "{report}"
    );
}

/// `CLUSTER SLOTS` as `(first slot, last slot, master port)`.
fn slot_ranges(c: &mut redis::Connection) -> Vec<(i64, i64, u16)> {
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => *n,
        other => panic!("CLUSTER SLOTS: {other:?}"),
    };
    let reply: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(c).unwrap();
    reply
        .iter()
        .map(|range| match range {
            redis::Value::Array(items) => match &items[2] {
                redis::Value::Array(master) => {
                    (int(&items[0]), int(&items[1]), int(&master[1]) as u16)
                }
                other => panic!("CLUSTER SLOTS: {other:?}"),
            },
            other => panic!("CLUSTER SLOTS: {other:?}"),
        })
        .collect()
}

#[test]
fn a_tls_server_is_reached_through_rediss_with_its_ca() {
    use cache_tests::tls::TlsRedisServer;

    let tls = TlsRedisServer::start();
    let mut c = conn(&tls.server.url());
    fill(&mut c, "user:profile", 12, Some(600));
    let ca = tls.pki().ca_file();
    let url = format!("{}?ca_file={}", tls.url(), ca.display());

    let out = cachectl(&url, &["health", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["keys"], 12);

    let out = cachectl(&url, &["clear", "user:profile", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&mut c, "user:profile:*"), 0);

    // A CA that did not sign the server's certificate: refused, with the reason.
    let other = format!(
        "{}?ca_file={}",
        tls.url(),
        tls.pki().unrelated_ca_file().display()
    );
    let out = cachectl(&other, &["health"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unhealthy"), "{}", text(&out));
}

#[test]
fn under_a_prefix_stats_and_clear_stay_inside_that_environment() {
    let server = RedisServer::new();
    let mut c = conn(&server.url());
    fill(&mut c, "staging:user:profile", 40, Some(600));
    fill(&mut c, "staging:{team:member}", 6, Some(600));
    fill(&mut c, "prod:user:profile", 30, Some(600));
    fill(&mut c, "user:profile", 20, Some(600));
    let staging = format!("{}?prefix=staging", server.url());

    // Stats count the prefix's keys only, named by namespace without the prefix.
    let out = cachectl(&staging, &["stats", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["keys_scanned"], 46, "{report}");
    let names: Vec<&str> = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{report}");
    assert!(
        names.contains(&"user:profile") && names.contains(&"team:member"),
        "{report}"
    );

    // Clear removes the prefix's namespace, tagged or not, and leaves the others.
    let out = cachectl(&staging, &["clear", "user:profile", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 40 keys"), "{}", text(&out));
    assert_eq!(count(&mut c, "staging:user:profile:*"), 0);
    assert_eq!(count(&mut c, "prod:user:profile:*"), 30);
    assert_eq!(count(&mut c, "user:profile:*"), 20);
    let out = cachectl(&staging, &["clear", "team:member", "--yes"], &[]);
    assert!(text(&out).contains("removed 6 keys"), "{}", text(&out));

    // A prefix the key grammar cannot carry is a usage error, and nothing is removed.
    let bad = format!("{}?prefix=st%2A", server.url());
    let out = cachectl(&bad, &["clear", "user:profile", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("prefix"), "{}", text(&out));
    assert_eq!(count(&mut c, "*"), 50);
}
