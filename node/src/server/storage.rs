//! The storage phase of a node's start: the data directory, the database, the log path and
//! the cluster key, checked and opened before anything else starts.

use std::path::PathBuf;

use tracing::{info, warn};

use crate::cluster_key;
use crate::config::Config;
use crate::handle::NodeError;
use crate::logs;
use crate::model::NodeSettings;
use crate::store::{RedbStore, Store, Write};

/// Where the node's logs go: `node.log_path`, else `<data dir>/logs`.
pub(crate) fn log_root(config: &Config, node: &NodeSettings) -> PathBuf {
    node.log_path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("logs"))
}

/// Makes the data dir private (creating it, or tightening an older install's modes), checks the
/// log path, opens the database and finds the cluster key (moving one an older version kept in
/// the database to its file). Returns the database and the node's settings, key included.
pub(crate) fn open_data(config: &Config) -> Result<(RedbStore, NodeSettings), NodeError> {
    let io = |context: String| move |source| NodeError::Io { context, source };
    let data_dir = &config.data_dir;
    crate::private_files::create_dir(data_dir).map_err(io(format!(
        "creating the data directory {}",
        data_dir.display()
    )))?;
    let mut fixed = crate::private_files::tighten(data_dir);
    let mut redb = RedbStore::open(&config.db_path())?;
    let stored = redb.node_settings()?;
    let mut node_settings = stored.clone().unwrap_or_else(|| {
        let mut s = NodeSettings::default();
        if let Some(name) = &config.name {
            s.name = name.clone();
        }
        s
    });
    let log_root = log_root(config, &node_settings);
    logs::check_log_path(&log_root, nix::unistd::geteuid().as_raw()).map_err(|e| {
        NodeError::Refused(format!(
            "{e} (the log path is node.log_path in the settings, or <data dir>/logs)"
        ))
    })?;
    let inside = |root: &std::path::Path| match (root.canonicalize(), data_dir.canonicalize()) {
        (Ok(root), Ok(data)) => root.starts_with(data),
        _ => false,
    };
    if !inside(&log_root) {
        fixed += crate::private_files::tighten(&log_root);
    }
    if fixed > 0 {
        info!(
            fixed,
            data_dir = %data_dir.display(),
            logs = %log_root.display(),
            "made files and folders of an older install private (folders 0700, files 0600)"
        );
    }

    let old_key = node_settings.cluster_key.take();
    let raft_log = crate::consensus::raft::log_store::path(&config.db_path());
    let in_cluster =
        redb.cluster()?.is_some() || std::fs::metadata(&raft_log).is_ok_and(|m| m.len() > 0);
    let key_path = config.cluster_key_path();
    let (key, origin) = cluster_key::resolve(&cluster_key::Sources {
        key_file: config.cluster_key_file.as_deref(),
        given: config.cluster_key.as_deref(),
        kept: &key_path,
        stored: old_key.as_deref(),
        in_cluster,
    })?;
    cluster_key::keep(&key_path, &key)?;
    if origin == cluster_key::Origin::New {
        info!(file = %key_path.display(), fingerprint = %crate::mesh::fingerprint(&key), "made a new cluster key");
    }
    if stored.is_none() || old_key.is_some() {
        // The store never writes the key: this drops one an older version kept there.
        redb.write(&[Write::NodeSettings(node_settings.clone())])?;
    }
    if let Some(old) = old_key {
        let gone = redb.scrub(old.as_bytes())?;
        info!(file = %key_path.display(), "moved the cluster key from the database to its own file");
        if !gone {
            warn!(
                database = %config.db_path().display(),
                "the database file may still hold the old cluster key in freed pages; \
                 if copies of it may have been read, give the mesh a new key"
            );
        }
    }
    node_settings.cluster_key = Some(key.to_string());
    Ok((redb, node_settings))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::path::Path;

    use crate::mesh::ClusterKey;
    use crate::store::Store;

    #[test]
    fn a_log_path_below_a_world_writable_folder_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = crate::config::Config {
            data_dir: dir.path().join("data"),
            ..crate::config::Config::default()
        };
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        {
            let (store, mut settings) = super::open_data(&config).expect("first start");
            settings.log_path = Some(open.join("logs"));
            store
                .write(&[crate::store::Write::NodeSettings(settings)])
                .expect("settings");
        }
        let error = super::open_data(&config).map(|_| ()).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains(&format!("{} is writable by everyone", open.display())),
            "{text}"
        );
    }

    fn config(dir: &Path) -> crate::config::Config {
        crate::config::Config {
            data_dir: dir.join("data"),
            ..crate::config::Config::default()
        }
    }

    fn file_holds(path: &Path, needle: &[u8]) -> bool {
        crate::store::file_holds(path, needle).expect("read")
    }

    #[test]
    fn an_older_databases_key_moves_to_its_file_and_leaves_the_database() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.data_dir).expect("mkdir");
        let key = ClusterKey::generate().expect("key");
        {
            let store = crate::store::RedbStore::open(&config.db_path()).expect("open");
            store.put_node_settings_with_key(&crate::model::NodeSettings {
                name: "old".into(),
                cluster_key: Some(key.to_string()),
                ..Default::default()
            });
            store
                .write(&[crate::store::Write::Cluster(Some(
                    crate::model::ClusterIdentity {
                        id: 1,
                        merged_into: None,
                    },
                ))])
                .expect("cluster");
        }
        assert!(file_holds(&config.db_path(), key.to_string().as_bytes()));
        let (store, settings) = super::open_data(&config).expect("start");
        drop(store);
        assert_eq!(
            settings.cluster_key,
            Some(key.to_string()),
            "the key is kept"
        );
        assert_eq!(settings.name, "old");
        let kept = config.cluster_key_path();
        assert_eq!(
            std::fs::read_to_string(&kept).expect("key file").trim(),
            key.to_string()
        );
        let mode = std::fs::metadata(&kept).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!file_holds(&config.db_path(), key.to_string().as_bytes()));
        assert!(!file_holds(&config.db_path(), &key.bytes()));
        // The next start finds it in the file.
        let (_, again) = super::open_data(&config).expect("restart");
        assert_eq!(again.cluster_key, Some(key.to_string()));
    }

    #[test]
    fn a_database_of_a_cluster_member_without_its_key_file_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config(dir.path());
        let (store, _) = super::open_data(&config).expect("first start");
        store
            .write(&[crate::store::Write::Cluster(Some(
                crate::model::ClusterIdentity {
                    id: 1,
                    merged_into: None,
                },
            ))])
            .expect("cluster");
        drop(store);
        std::fs::remove_file(config.cluster_key_path()).expect("rm key");
        let error = super::open_data(&config).map(|_| ()).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains(&config.cluster_key_path().display().to_string())
                && text.contains("missing"),
            "{text}"
        );
    }
}
