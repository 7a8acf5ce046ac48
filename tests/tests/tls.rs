//! `rediss://` against a `redis-server` serving TLS with a certificate of a CA generated
//! at test time: trusted through `?ca_file=` or `CacheConfig`, refused (degraded, never
//! an error or a panic) when the certificate does not chain to the trusted CA; and the
//! same on a TLS Redis Cluster.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use cache_manager::{Cache, CacheConfig, CacheError, HealthStatus, cache_registry};
use cache_tests::cluster::RedisCluster;
use cache_tests::tls::TlsRedisServer;
use cache_tests::wire;

/// Integers as text, so what reached the server can be read back raw.
#[derive(Cache)]
#[cache(namespace = "counter:visits", ttl = 60, key = i64, value = i64, codec = "string")]
pub struct VisitCountCache;

cache_registry! {
    /// The caches of these tests.
    pub struct CacheManager {
        visits: VisitCountCache,
    }
}

/// Runs one cache call, failing the test if it takes 2 s or more.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than 2 s"))
}

fn with_ca(url: &str, ca: &std::path::Path) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}ca_file={}", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_trusting_the_test_ca_through_the_url_round_trips() {
    let server = TlsRedisServer::start();
    let manager = CacheManager::new();
    manager
        .connect(&with_ca(&server.url(), &server.pki().ca_file()))
        .await
        .unwrap();
    let visits = manager.visits();
    assert!(visits.set(&1, &10).await.unwrap());
    assert_eq!(visits.get(&1).await, Some(10));
    let found = visits.mget(&[1, 2]).await.unwrap();
    assert_eq!(found, HashMap::from([(1, Some(10)), (2, None)]));

    // It went through the TLS port to this server.
    let raw = server.server.raw().await;
    assert_eq!(
        wire::get(&raw, "counter:visits:1").await.as_deref(),
        Some(&b"10"[..])
    );
    let clients = wire::clients(&raw).await;
    assert!(
        clients
            .iter()
            .any(|c| c.contains(&format!("laddr=127.0.0.1:{}", server.tls_port()))),
        "no client on the TLS port: {clients:?}"
    );

    let health = manager.health().await;
    assert!(health.healthy, "{health:?}");
    assert!(health.url.unwrap().starts_with("rediss://127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_set_in_cache_config_is_trusted() {
    let server = TlsRedisServer::start();
    let manager = CacheManager::new();
    let config = CacheConfig::new().with_tls_ca_file(server.pki().ca_file());
    manager.connect_with(&server.url(), &config).await.unwrap();
    assert!(manager.visits().set(&2, &20).await.unwrap());
    assert_eq!(manager.visits().get(&2).await, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_degrades_and_health_says_why() {
    let server = TlsRedisServer::start();
    for url in [
        // Trusting a CA that did not sign the server's certificate.
        with_ca(&server.url(), &server.pki().unrelated_ca_file()),
        // Trusting only the system's roots, which do not know the test CA.
        server.url(),
    ] {
        let manager = CacheManager::new();
        manager.connect(&url).await.unwrap();
        let visits = manager.visits();
        assert_eq!(quick("get", visits.get(&1)).await, None);
        assert!(!quick("set", visits.set(&1, &1)).await.unwrap());
        let health = manager.health().await;
        assert_eq!(health.status, HealthStatus::Degraded, "{url}");
        let error = health.error.unwrap_or_default().to_lowercase();
        assert!(error.contains("certificate"), "{url}: {error}");
    }
    assert_eq!(wire::dbsize(&server.server.raw().await).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_url_to_the_tls_port_degrades() {
    let server = TlsRedisServer::start();
    let manager = CacheManager::new();
    let config = CacheConfig::new().with_response_timeout(Duration::from_millis(100));
    let url = format!("redis://127.0.0.1:{}/0", server.tls_port());
    manager.connect_with(&url, &config).await.unwrap();
    assert!(!quick("set", manager.visits().set(&1, &1)).await.unwrap());
    assert!(!manager.health().await.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_are_config_errors() {
    let manager = CacheManager::new();
    for (url, expected) in [
        (
            "redis://127.0.0.1:1/0?ca_file=/tmp/ca.pem",
            "applies to TLS only",
        ),
        (
            "rediss://127.0.0.1:1/0?ca_file=/nonexistent/ca.pem",
            "cannot be read",
        ),
        ("rediss://127.0.0.1:1/0#insecure", "fragment"),
    ] {
        match manager.connect(url).await {
            Err(CacheError::Config { reason }) => assert!(reason.contains(expected), "{reason}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_round_trips_on_every_master() {
    let cluster = RedisCluster::builder().tls().password("tls-Pa55").start();
    let ca = cluster.pki().unwrap().ca_file();
    let url = with_ca(&cluster.url(), &ca);
    assert!(url.starts_with("rediss+cluster://"));
    let manager = CacheManager::new();
    manager.connect(&url).await.unwrap();
    let visits = manager.visits();
    let entries: HashMap<i64, i64> = (0..100).map(|id| (id, id * 2)).collect();
    assert!(visits.mset(&entries).await.unwrap());
    let ids: Vec<i64> = (0..100).collect();
    let found = visits.mget(&ids).await.unwrap();
    assert!(ids.iter().all(|id| found[id] == Some(id * 2)), "{found:?}");
    for (index, _) in cluster.nodes().iter().enumerate() {
        assert!(
            wire::dbsize(&cluster.raw(index).await).await > 0,
            "master {index}"
        );
    }
    let health = manager.health().await;
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.nodes.len(), 3);
    // The masters are reached on their TLS ports, the ones the cluster announces to a
    // TLS client.
    for node in &health.nodes {
        assert!(url.contains(&node.address), "{} not in {url}", node.address);
    }
    assert!(!serde_json::to_string(&health).unwrap().contains("tls-Pa55"));
}
