//! An application that installs its own rustls crypto provider before connecting keeps
//! it: the library installs ring's only when none is installed, and its TLS connections
//! use whatever provider is the process default. In a binary of its own, since the
//! default provider is process-wide.

use std::sync::Arc;
use std::time::Duration;

use cache_manager::{Cache, cache_registry};
use cache_tests::tls::TestPki;
use cache_tests::{RedisServer, wire};
use rustls::CipherSuite;
use rustls::crypto::CryptoProvider;

/// Integers as text.
#[derive(Cache)]
#[cache(namespace = "tls:visits", ttl = 60, key = i64, value = i64, codec = "string")]
pub struct VisitCountCache;

cache_registry! {
    /// The cache of this test.
    pub struct CacheManager {
        visits: VisitCountCache,
    }
}

/// A TLS 1.3 server offering only `suite` (OpenSSL's name); its TLS port.
fn server_with(pki: &TestPki, suite: &str) -> (RedisServer, u16) {
    let builder = RedisServer::builder()
        .arg("--tls-protocols")
        .arg("TLSv1.3")
        .arg("--tls-ciphersuites")
        .arg(suite);
    let server = pki.serve_tls(builder).start();
    let port = server.tls_port().expect("a TLS port");
    (server, port)
}

fn url(pki: &TestPki, port: u16) -> String {
    format!(
        "rediss://127.0.0.1:{port}/0?ca_file={}",
        pki.ca_file().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_installed_crypto_provider_stays_in_use() {
    // The application's provider: ring offering one TLS 1.3 suite only, so its use shows.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(provider.cipher_suites.len(), 1);
    provider
        .install_default()
        .expect("no provider installed before the application's");
    let installed = Arc::clone(CryptoProvider::get_default().unwrap());

    let pki = TestPki::generate();
    let (_compatible, compatible_port) = server_with(&pki, "TLS_AES_256_GCM_SHA384");
    let (other_server, other_port) = server_with(&pki, "TLS_AES_128_GCM_SHA256");

    // A server that accepts the application's suite: the caches work over TLS.
    let manager = CacheManager::new();
    manager.connect(&url(&pki, compatible_port)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !manager.visits().set(&1, &10).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "no TLS connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(manager.visits().get(&1).await, Some(10));
    let now = CryptoProvider::get_default().unwrap();
    assert!(
        Arc::ptr_eq(&installed, now),
        "connecting replaced the application's crypto provider"
    );

    // A server that accepts only a suite the application's provider leaves out: the
    // handshake fails, so the library's connection used that provider, not its own ring.
    let other = CacheManager::new();
    other.connect(&url(&pki, other_port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!other.visits().set(&1, &10).await.unwrap());
    assert_eq!(other.visits().get(&1).await, None);
    assert!(!other.health().await.healthy);
    let raw = other_server.raw().await;
    assert_eq!(wire::dbsize(&raw).await, 0, "something reached the server");
}
