//! Whether a log path is safe to write to: no user but root and the node's own may be able to
//! write to it or replace it (or any folder above it), or they could point the node's writes
//! at a file of their choosing.
//!
//! Every folder from `/` down to the log path (as written, and with its links resolved) must be
//! owned by root or the node's user and not writable by group or others; a folder above the
//! log path may be world-writable if it has the sticky bit (like `/tmp`), where nobody can
//! replace an entry that is not theirs. Folders that do not exist yet are made by the node.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Set-group-or-world-writable bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Why a log path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the log path {path} is not safe: {folder} {why}")]
pub struct UnsafeLogPath {
    pub path: PathBuf,
    /// The folder that makes it unsafe (the log path or one above it).
    pub folder: PathBuf,
    pub why: String,
}

/// Checks `path` (see the module doc) for a node running as `uid`.
pub fn check(path: &Path, uid: u32) -> Result<(), UnsafeLogPath> {
    let path = std::path::absolute(path).map_err(|e| UnsafeLogPath {
        path: path.to_owned(),
        folder: path.to_owned(),
        why: format!("cannot be made absolute: {e}"),
    })?;
    let refuse = |folder: &Path, why: String| UnsafeLogPath {
        path: path.clone(),
        folder: folder.to_owned(),
        why,
    };
    // The path as written: each existing folder on the way, links not followed (a link's
    // place is only as safe as its folder, which is checked just before it).
    let mut deepest = PathBuf::new();
    for folder in prefixes(&path) {
        let Ok(meta) = std::fs::symlink_metadata(&folder) else {
            break;
        };
        check_owner(&meta, uid).map_err(|why| refuse(&folder, why))?;
        if !meta.file_type().is_symlink() {
            check_mode(&meta, folder == path).map_err(|why| refuse(&folder, why))?;
        }
        deepest = folder;
    }
    // The same path with its links resolved: where the writes really go.
    if deepest.as_os_str().is_empty() {
        return Ok(());
    }
    let resolved = std::fs::canonicalize(&deepest)
        .map_err(|e| refuse(&deepest, format!("cannot be resolved: {e}")))?;
    let resolved_is_the_path = deepest == path;
    for folder in prefixes(&resolved) {
        let meta = std::fs::metadata(&folder)
            .map_err(|e| refuse(&folder, format!("cannot be read: {e}")))?;
        if !meta.is_dir() {
            return Err(refuse(&folder, "is not a folder".into()));
        }
        check_owner(&meta, uid).map_err(|why| refuse(&folder, why))?;
        let is_the_path = resolved_is_the_path && folder == resolved;
        check_mode(&meta, is_the_path).map_err(|why| refuse(&folder, why))?;
    }
    Ok(())
}

/// `/`, `/a`, `/a/b`, … up to `path` itself.
fn prefixes(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                current.pop();
            }
            Component::CurDir => continue,
            other => current.push(other),
        }
        out.push(current.clone());
    }
    out
}

fn check_owner(meta: &std::fs::Metadata, uid: u32) -> Result<(), String> {
    match meta.uid() {
        0 => Ok(()),
        owner if owner == uid => Ok(()),
        owner => Err(format!(
            "belongs to uid {owner}, not to root or to this node's user (uid {uid})"
        )),
    }
}

fn check_mode(meta: &std::fs::Metadata, is_the_path: bool) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & WRITABLE_BY_OTHERS == 0 || (!is_the_path && mode & STICKY != 0) {
        return Ok(());
    }
    let whom = if mode & 0o002 != 0 {
        "everyone"
    } else {
        "its group"
    };
    Err(format!(
        "is writable by {whom} (mode {mode:04o}){}: make it writable by its owner only (chmod go-w)",
        if is_the_path {
            ""
        } else {
            " without the sticky bit"
        }
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_world_writable_folder_above_the_log_path_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        chmod(&open, 0o777);
        let logs = open.join("logs");
        let error = check(&logs, uid()).expect_err("0777 without sticky");
        assert_eq!(error.folder, open);
        assert!(
            error.to_string().contains("writable by everyone"),
            "{error}"
        );
        assert!(
            error.to_string().contains(&open.display().to_string()),
            "{error}"
        );
        // Existing or not, the log folder below is refused the same way.
        std::fs::create_dir(&logs).expect("mkdir");
        chmod(&logs, 0o700);
        assert_eq!(check(&logs, uid()).expect_err("still").folder, open);
        // With the sticky bit (like /tmp) nobody can replace `logs`: accepted.
        chmod(&open, 0o1777);
        check(&logs, uid()).expect("sticky ancestor");
        // The log path itself must not be writable by others, sticky or not.
        chmod(&logs, 0o1777);
        assert_eq!(check(&logs, uid()).expect_err("the path").folder, logs);
        chmod(&logs, 0o770);
        let error = check(&logs, uid()).expect_err("group");
        assert!(error.why.contains("its group"), "{error}");
        chmod(&logs, 0o755);
        check(&logs, uid()).expect("readable by others is not a write");
    }

    #[test]
    fn links_are_judged_by_where_they_lead() {
        let dir = tempfile::tempdir().expect("tmp");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        chmod(&open, 0o777);
        let link = dir.path().join("logs");
        std::os::unix::fs::symlink(&open, &link).expect("symlink");
        let error = check(&link.join("runs"), uid()).expect_err("through a link");
        assert_eq!(error.folder, open);
        chmod(&open, 0o700);
        check(&link.join("runs"), uid()).expect("a private target");
    }

    #[test]
    fn folders_of_another_user_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        // As root, a folder given to `nobody`; otherwise, a node of another (non-root) uid.
        let node_uid = if uid() == 0 {
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            0
        } else {
            uid() + 1
        };
        let error = check(&theirs.join("logs"), node_uid).expect_err("not ours");
        assert_eq!(
            error.folder,
            if uid() == 0 {
                theirs
            } else {
                dir.path().to_owned()
            }
        );
        assert!(error.why.contains("belongs to uid"), "{error}");
    }
}
