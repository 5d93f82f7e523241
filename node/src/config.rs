//! How a node process is started: data directory and UI address, from a TOML file, overlaid by
//! the command line and environment. Everything else lives in the settings (see /settings).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// The cluster key to use (and keep); without it the node keeps its own, or makes one.
    pub cluster_key: Option<String>,
    /// Peers to dial at this start, besides `node.peers` of the settings.
    pub peers: Vec<String>,
    /// The node's name at its first start (later: node.name in the settings).
    pub name: Option<String>,
    /// Require a login (the access token) for the UI and API. Default: only when `listen` is
    /// not a loopback address.
    pub require_login: Option<bool>,
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
            cluster_key: None,
            peers: Vec::new(),
            name: None,
            require_login: None,
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

impl Config {
    /// Reads a TOML config file; unknown keys are errors that name the key and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Whether the UI and API need a login.
    pub fn login_required(&self) -> bool {
        self.require_login
            .unwrap_or(!self.listen.ip().is_loopback())
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
