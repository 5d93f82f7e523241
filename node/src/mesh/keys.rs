//! The cluster key (a pre-shared key: without it nothing connects) and the node's own identity.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use libp2p::identity::Keypair;

/// 32 random bytes shared by every node of a mesh, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A short, harmless label to tell keys apart in logs and the UI (not the key).
    pub fn fingerprint(&self) -> String {
        libp2p::pnet::PreSharedKey::new(self.0)
            .fingerprint()
            .to_string()
    }
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl FromStr for ClusterKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a cluster key is 64 hex digits (`taskmesh key gen` makes one); got {} characters",
                s.len()
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(bytes))
    }
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
    fn keys_round_trip_and_reject_garbage() {
        let key = ClusterKey::generate().expect("key");
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ClusterKey>().expect("parse"), key);
        assert!(
            "abc"
                .parse::<ClusterKey>()
                .unwrap_err()
                .contains("64 hex digits")
        );
        assert!("z".repeat(64).parse::<ClusterKey>().is_err());
        assert!(
            !format!("{key:?}").contains(&text),
            "Debug must not print the key"
        );
    }

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
