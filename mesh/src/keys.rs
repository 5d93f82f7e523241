//! The cluster key's label and the node's own identity.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;

pub use taskmesh_core::cluster_key::ClusterKey;

/// A short, harmless label to tell keys apart in logs and the UI (not the key).
pub fn fingerprint(key: &ClusterKey) -> String {
    libp2p::pnet::PreSharedKey::new(key.bytes())
        .fingerprint()
        .to_string()
}

/// Reads the node's identity from `path`, creating one (mode 0600) at the first start. The
/// PeerId derived from it is stable across restarts.
pub fn load_or_create_identity(path: &Path) -> std::io::Result<Keypair> {
    if let Ok(bytes) = std::fs::read(path) {
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        });
    }
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Private from its creation (not chmod-ed after, when another user could already open it).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("identity");
        let a = load_or_create_identity(&path).expect("create");
        let b = load_or_create_identity(&path).expect("load");
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
