//! The cluster key: a pre-shared key every node of a mesh holds; without it nothing connects.
//! This is its value and text form; the mesh turns it into libp2p's pre-shared key.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

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
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(…)")
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
}
