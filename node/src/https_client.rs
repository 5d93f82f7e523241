//! The one way this crate builds an outgoing HTTP(S) client (the notifier's, the CLI's): hyper
//! with rustls on an explicit ring provider, trusting the system's CA certificates plus any
//! certificates the caller adds.
//!
//! The crypto provider is passed to rustls here, never installed process-wide, and reqwest (the
//! test clients' library) stays built without TLS: a TLS feature on reqwest would be unified
//! across the workspace and make every reqwest client built without a process-wide provider
//! panic.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// A client for `http://` and `https://` URLs, sending bodies of type `B`.
pub type Client<B> = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, B>;

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

/// A client that trusts `roots` for `https://` URLs (HTTP/1.1) and speaks plain HTTP to
/// `http://` ones.
pub fn client<B>(roots: RootCertStore) -> Client<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}
