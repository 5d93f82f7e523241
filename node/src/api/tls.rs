//! TLS for the UI and API: a given certificate and key (PEM), or a self-signed pair made at the
//! first start in the data directory (`tls-cert.pem`, `tls-key.pem` created 0600), kept for
//! later starts. Its SHA-256 fingerprint is logged so a browser's warning can be checked.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// A loaded certificate, ready to serve.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `AB:CD:…`, SHA-256 of the certificate (DER).
    pub fingerprint: String,
    pub cert_path: PathBuf,
    /// Made by this node (self-signed).
    pub generated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: give both `cert` and `key`, or neither (for a self-signed certificate)")]
    Incomplete,
    #[error("tls: reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("tls: making a self-signed certificate: {0}")]
    Generate(String),
    #[error("tls: the certificate and key do not make a server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The self-signed certificate's files.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("tls-cert.pem"), data_dir.join("tls-key.pem"))
}

/// Loads the configured certificate, or the self-signed one (made if missing).
pub fn load(config: &TlsConfig, data_dir: &Path) -> Result<Tls, TlsError> {
    let (cert_path, key_path, generated) = match (&config.cert, &config.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        (None, None) => {
            let (c, k) = self_signed_paths(data_dir);
            if !c.exists() || !k.exists() {
                generate(&c, &k)?;
            }
            (c, k, true)
        }
        _ => return Err(TlsError::Incomplete),
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let cert_pem = read(&cert_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&cert_path, e.to_string()))?;
    let first = certs
        .first()
        .ok_or_else(|| pem_error(&cert_path, "no certificate in the file".into()))?;
    let fingerprint = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| pem_error(&key_path, e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        fingerprint,
        cert_path,
        generated,
    })
}

/// SHA-256 of `der`, as colon-separated hex pairs.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A self-signed certificate for localhost, the host name and the loopback addresses.
fn generate(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let names = vec![
        "localhost".to_owned(),
        crate::model::hostname(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_new(key_path, made.key_pair.serialize_pem().as_bytes())?;
    write_new(cert_path, made.cert.pem().as_bytes())?;
    Ok(())
}

/// Writes a file created 0600 (replacing an old one).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = TlsConfig::default();
        let first = load(&config, dir.path()).expect("first");
        let second = load(&config, dir.path()).expect("second");
        assert!(first.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let (_, key) = self_signed_paths(dir.path());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).expect("key").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let half = TlsConfig {
            cert: Some(dir.path().join("x.pem")),
            key: None,
        };
        assert!(matches!(load(&half, dir.path()), Err(TlsError::Incomplete)));
    }
}
