//! TLS fixtures: a throwaway certificate authority made with rcgen at test time, and a
//! `redis-server` that serves TLS with a certificate it signed.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::server::unique_temp_dir;
use crate::{RedisServer, RedisServerBuilder};

/// A test CA and a server certificate it signed for `127.0.0.1` and `localhost`, as PEM
/// files in a temporary directory removed on drop; plus a second CA that signed nothing,
/// to check that a client trusting it refuses the server.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates the CAs, the server key and certificate, and writes them.
    pub fn generate() -> Self {
        let dir = unique_temp_dir();
        let ca = certificate_authority("cache-tests CA");
        let server_key = KeyPair::generate().expect("generate the server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "cache-tests redis");
        let server = params
            .signed_by(&server_key, &ca)
            .expect("sign the server certificate");
        let other = certificate_authority("cache-tests unrelated CA");
        let pki = TestPki { dir };
        fs::write(pki.ca_file(), ca.pem()).expect("write the CA");
        fs::write(pki.cert_file(), server.pem()).expect("write the server certificate");
        fs::write(pki.key_file(), server_key.serialize_pem()).expect("write the server key");
        fs::write(pki.unrelated_ca_file(), other.pem()).expect("write the unrelated CA");
        pki
    }

    /// The CA that signed the server certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that did not sign the server certificate (PEM).
    pub fn unrelated_ca_file(&self) -> PathBuf {
        self.dir.join("unrelated-ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// Adds `--tls-port port` and the certificate options to a server's arguments;
    /// clients are not asked for certificates.
    pub fn serve_tls(&self, builder: RedisServerBuilder) -> RedisServerBuilder {
        let path = |p: &Path| p.display().to_string();
        builder
            .port_option("--tls-port")
            .arg("--tls-cert-file")
            .arg(path(&self.cert_file()))
            .arg("--tls-key-file")
            .arg(path(&self.key_file()))
            .arg("--tls-ca-cert-file")
            .arg(path(&self.ca_file()))
            .arg("--tls-auth-clients")
            .arg("no")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate the CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign the CA")
}

/// A `redis-server` serving TLS on [`tls_port`](Self::tls_port) with a certificate of a
/// [`TestPki`] CA.
///
/// Its plaintext port stays open for the harness only, to see that it is up and to
/// inspect what the cache wrote ([`server`](Self::server)`.raw()`); the cache under test
/// connects to the TLS port, where a plaintext client gets no answer.
#[derive(Debug)]
pub struct TlsRedisServer {
    /// The server; `raw()` connects to its plaintext port.
    pub server: RedisServer,
    tls_port: u16,
    pki: TestPki,
}

impl TlsRedisServer {
    /// Generates a PKI and starts the server with it.
    pub fn start() -> Self {
        let pki = TestPki::generate();
        let server = pki.serve_tls(RedisServer::builder()).start();
        let tls_port = server.tls_port().expect("a TLS port");
        TlsRedisServer {
            server,
            tls_port,
            pki,
        }
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://127.0.0.1:{tls_port}/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port)
    }

    /// The certificates the server uses.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }
}
