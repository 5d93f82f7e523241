//! The one way this crate builds an outgoing HTTP(S) client (the notifier's, the CLI's): reqwest
//! on rustls with the ring provider passed in, trusting the system's CA certificates plus any
//! certificates the caller adds; no redirect is followed and no proxy is used.
//!
//! reqwest is built with `rustls-no-provider` (no aws-lc): a client built without the
//! configuration of [`tls_config`] takes the process-wide crypto provider, and there is none, so
//! it panics. The provider is passed here, never installed process-wide; every reqwest client of
//! the workspace, the tests' too, is built with [`builder`] or given [`tls_config`].

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// The system's CA certificates (those rustls-native-certs finds; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` choose others). Empty when none are installed.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    // Certificates the system lists but rustls cannot parse are left out, as browsers do.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// Adds `certs` to `roots` as trust anchors; the first that cannot be one, with why.
pub fn add_roots(
    roots: &mut RootCertStore,
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<usize, rustls::Error> {
    let mut added = 0;
    for cert in certs {
        roots.add(cert)?;
        added += 1;
    }
    Ok(added)
}

/// A TLS configuration on the ring provider that trusts `roots` (HTTP/1.1, no ALPN).
pub fn tls_config(roots: RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client builder for `http://` and `https://` URLs that trusts `roots` for HTTPS, follows no
/// redirect (a 3xx is the answer) and ignores `HTTP(S)_PROXY`. Time limits are the caller's.
pub fn builder(roots: RootCertStore) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(roots))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("reading the answer")]
    Read(#[source] reqwest::Error),
}

/// The body of `response`, up to `limit` bytes; longer is an error.
pub async fn body_up_to(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLong { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
