//! TLS for `rediss://`: which certificate authorities to trust, and rustls's process-wide
//! crypto provider.

use url::Url;

use super::CacheConfig;
use super::secret::shown;
use crate::error::CacheError;

/// The PEM of the CA(s) `rediss://` connections trust instead of the system's roots.
pub(super) fn trusted_ca(tls: bool, config: &CacheConfig) -> Result<Option<Vec<u8>>, CacheError> {
    if tls {
        ensure_crypto_provider();
    }
    let Some(path) = &config.tls_ca_file else {
        return Ok(None);
    };
    if !tls {
        return Err(CacheError::config(format!(
            "a CA file (`ca_file`, {}) applies to TLS only; use a `rediss://`, `rediss+cluster://` or `rediss+sentinel://` URL",
            shown(&path.to_string_lossy())
        )));
    }
    let pem = std::fs::read(path).map_err(|e| {
        CacheError::config(format!(
            "the CA file (`ca_file`) {} cannot be read: {e}",
            shown(&path.to_string_lossy())
        ))
    })?;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CacheError::config(format!(
                "the CA file (`ca_file`) {} is not valid PEM: {e}",
                shown(&path.to_string_lossy())
            ))
        })?;
    if certificates.is_empty() {
        return Err(CacheError::config(format!(
            "the CA file (`ca_file`) {} holds no PEM certificate",
            shown(&path.to_string_lossy())
        )));
    }
    Ok(Some(pem))
}

/// rustls needs a process-wide crypto provider and panics on first use when none is
/// installed and it cannot pick one. Installs ring's unless the application installed
/// one first, which then stays in charge.
fn ensure_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A redis-rs client for `url`, trusting `ca` for TLS when given.
pub(super) fn open_client(url: &Url, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        None => redis::Client::open(url.as_str()),
        Some(ca) => redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
    }
}
