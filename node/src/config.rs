//! How a node process is started: data directory and UI address, from a TOML file, overlaid by
//! the command line and environment. Everything else lives in the settings (see /settings).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The node's start-up configuration. Every field has a default that works out of the box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database, logs and identity live.
    pub data_dir: PathBuf,
    /// Address of the web UI and REST API.
    pub listen: SocketAddr,
    /// Address of the p2p endpoint (a multiaddr).
    pub p2p_listen: String,
    /// Overrides `node.mdns` of the settings for this start (tests and shared machines turn it off).
    pub mdns: Option<bool>,
    /// A file holding the cluster key to use (and keep in `<data dir>/cluster-key`);
    /// `--cluster-key-file` on the command line.
    pub cluster_key_file: Option<PathBuf>,
    /// The cluster key to use (and keep), from `TASKMESH_CLUSTER_KEY` (tests set it in
    /// process); never read from the config file, which is often readable by others. Without
    /// it or a key file, the node keeps its own, or makes one.
    #[serde(skip)]
    pub cluster_key: Option<String>,
    /// Peers to dial at this start, besides `node.peers` of the settings.
    pub peers: Vec<String>,
    /// The node's name at its first start (later: node.name in the settings).
    pub name: Option<String>,
    /// Host names the UI and API answer to, besides IP literals, `localhost`, the machine's
    /// host name and the host of `cluster.notify.ui_url` (DNS rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// How long a browser session lasts ("8h", "30m").
    #[serde(with = "duration_text")]
    pub session_ttl: Duration,
    /// A web connection that has not sent a whole request head within this time is closed
    /// (also the idle time between keep-alive requests, and the TLS handshake's bound).
    #[serde(with = "duration_text")]
    pub header_read_timeout: Duration,
    /// Web connections open at once. At the cap, the oldest connection that has not sent a
    /// whole request head is closed to make room; when none is such, the new one is closed.
    pub max_connections: usize,
    /// Serve the UI and API over TLS: `[tls]` with `cert` and `key` (PEM files), or an empty
    /// `[tls]` table for a self-signed certificate made in the data directory.
    pub tls: Option<TlsConfig>,
    /// Raft timing and log bounds; not in the file (tests shorten them).
    #[serde(skip)]
    pub raft: crate::consensus::Timing,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            p2p_listen: "/ip4/0.0.0.0/tcp/7946".into(),
            mdns: None,
            cluster_key_file: None,
            cluster_key: None,
            peers: Vec::new(),
            name: None,
            allowed_hosts: Vec::new(),
            session_ttl: Duration::from_secs(8 * 3600),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            tls: None,
            raft: crate::consensus::Timing::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// `[tls]` of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// The config key that once turned the login off on loopback.
const REMOVED_REQUIRE_LOGIN: &str = "require_login";

impl Config {
    /// Reads a TOML config file; unknown keys are errors that name the key and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses a config file's text. `require_login` is gone (every node requires the access
    /// token): `false` is refused, `true` is accepted and ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        match table.get(REMOVED_REQUIRE_LOGIN) {
            None => toml::from_str(text).map_err(|e| e.to_string()),
            Some(toml::Value::Boolean(true)) => {
                tracing::warn!(
                    "`require_login = true` in the config is no longer needed: every node requires the access token"
                );
                let mut table = table;
                table.remove(REMOVED_REQUIRE_LOGIN);
                toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| e.to_string())
            }
            Some(_) => Err(
                "`require_login` cannot be turned off: every node requires the access token, \
                 loopback included (the CLI reads it from <data dir>/access-token; the browser \
                 logs in with the link from `taskmesh login-url`). Remove the line."
                    .into(),
            ),
        }
    }

    /// The file holding the node's access token.
    pub fn access_token_path(&self) -> PathBuf {
        Self::access_token_path_in(&self.data_dir)
    }

    /// The access token file of the node whose data directory is `data_dir`.
    pub fn access_token_path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("access-token")
    }

    /// The file holding the node's p2p identity (its PeerId).
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity")
    }

    /// The file holding the node's cluster key (0600); the database never holds it.
    pub fn cluster_key_path(&self) -> PathBuf {
        self.data_dir.join(crate::cluster_key::FILE_NAME)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("taskmesh.redb")
    }
}

/// `/var/lib/taskmesh` for root, else `$XDG_DATA_HOME/taskmesh` or `~/.local/share/taskmesh`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/taskmesh");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("taskmesh");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/taskmesh"),
        None => PathBuf::from("taskmesh-data"),
    }
}

/// Durations in the config file as text: "8h", "10s", "1h 30m".
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration (\"8h\", \"30s\"): {e}"))
        })?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed",
            ));
        }
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_login_cannot_be_turned_off() {
        let refused = Config::parse("require_login = false\n").expect_err("false");
        assert!(refused.contains("cannot be turned off"), "{refused}");
        let config = Config::parse("require_login = true\nallowed_hosts = [\"a.lab\"]\n")
            .expect("true is ignored");
        assert_eq!(config.allowed_hosts, ["a.lab"]);
    }

    #[test]
    fn web_keys_have_defaults_and_read_durations() {
        let config = Config::parse("session_ttl = \"30m\"\n[tls]\n").expect("parse");
        assert_eq!(config.session_ttl, Duration::from_secs(1800));
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.tls, Some(TlsConfig::default()));
        assert_eq!(Config::parse("").expect("empty"), Config::default());
        let bad = Config::parse("session_ttl = \"soon\"\n").expect_err("bad");
        assert!(bad.contains("session_ttl"), "{bad}");
        let unknown = Config::parse("listn = \"x\"\n").expect_err("unknown");
        assert!(unknown.contains("line 1"), "{unknown}");
    }
}
