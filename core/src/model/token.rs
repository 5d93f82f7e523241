//! Named access tokens: tokens an operator makes for a person or a program, beside each node's
//! own access token. The replicated state keeps each one's name, what it may do and a hash of
//! it (never the token), so every node of the cluster takes it, and the activity names whoever
//! used it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Invalid;

/// The most named tokens a cluster keeps.
pub const MAX_TOKENS: usize = 100;

/// A named access token, as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedToken {
    /// Who or what holds it: `alice`, `grafana`, `deploy-bot`.
    pub name: String,
    /// It may read everything but secrets, and change nothing.
    pub read_only: bool,
    /// SHA-256 of the token, 64 lowercase hex digits.
    pub hash: String,
    /// When it was made (the clock of the node that took the request).
    pub created: DateTime<Utc>,
    /// When it stops working, if it does (each node reads its own clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

/// A named token as the API lists it: without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub read_only: bool,
    pub created: DateTime<Utc>,
    /// When it stops working; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

impl NamedToken {
    /// Whether the name and the hash are well formed.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_token_name(&self.name)?;
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if self.hash.len() != 64 || !self.hash.chars().all(hex) {
            return Err(Invalid::field(
                "hash",
                "must be 64 lowercase hex digits (SHA-256)",
            ));
        }
        if self.expires.is_some_and(|at| at <= self.created) {
            return Err(Invalid::field("expires", "must be after the token is made"));
        }
        Ok(())
    }

    /// Whether it has stopped working at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            read_only: self.read_only,
            created: self.created,
            expires: self.expires,
        }
    }
}

/// A token's name: 1 to 64 letters, digits, `_`, `.`, `-` or `@`, starting with a letter or a
/// digit (so a person's e-mail address or login fits).
fn check_token_name(name: &str) -> Result<(), Invalid> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    match ok {
        true => Ok(()),
        false => Err(Invalid::field(
            "name",
            "must be 1 to 64 letters, digits, '_', '.', '-' or '@', starting with a letter or a digit",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash: &str) -> NamedToken {
        NamedToken {
            name: name.into(),
            read_only: true,
            hash: hash.into(),
            created: DateTime::UNIX_EPOCH,
            expires: None,
        }
    }

    #[test]
    fn names_and_hashes_are_checked() {
        let hash = "0123456789abcdef".repeat(4);
        for name in [
            "alice",
            "grafana-1",
            "ops@example.org",
            "a",
            &"x".repeat(64),
        ] {
            assert_eq!(token(name, &hash).validate(), Ok(()), "{name}");
        }
        for name in ["", "-x", "a b", "<b>", &"x".repeat(65), "ä"] {
            let why = token(name, &hash).validate().expect_err(name);
            assert!(why.to_string().contains("name"), "{name}: {why}");
        }
        for bad in ["", "abc", &"0123456789ABCDEF".repeat(4), &"g".repeat(64)] {
            let why = token("alice", bad).validate().expect_err(bad);
            assert!(why.to_string().contains("hash"), "{bad}: {why}");
        }
        let made = token("alice", &hash);
        let later = made.created + chrono::Duration::days(30);
        let expiring = NamedToken {
            expires: Some(later),
            ..made.clone()
        };
        assert_eq!(expiring.validate(), Ok(()));
        assert!(!expiring.expired(later - chrono::Duration::seconds(1)));
        assert!(expiring.expired(later));
        assert!(!made.expired(later), "without an expiry it never expires");
        let backwards = NamedToken {
            expires: Some(made.created),
            ..made
        };
        let why = backwards.validate().expect_err("expires when made");
        assert!(why.to_string().contains("expires"), "{why}");
    }
}
