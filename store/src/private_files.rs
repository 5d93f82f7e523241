//! Private files: the node's data dir and logs belong to its user alone (folders 0700, files
//! 0600), created so and tightened at start where an older install left them looser.
//!
//! New files get their mode when they are created (`OpenOptions::mode`, `DirBuilder::mode`; a
//! file a library creates, such as the redb database, is made here with its mode before the
//! library opens it), never by a chmod afterwards: there is no moment in which another user
//! could open them.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

/// The mode of the node's folders.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the node's files.
pub const FILE_MODE: u32 = 0o600;
/// What a private mode must not have: any bit for group or others, set-id or sticky bits.
const LOOSE: u32 = 0o7077;

/// Creates `path` and its missing parents as private folders (0700). Existing folders keep
/// their mode (see [`tighten`]).
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Opens `path` for appending, creating it private (0600). A symbolic link at `path` is refused
/// (`O_NOFOLLOW`: the open fails with ELOOP) instead of followed.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Opens `path` for reading without following a symbolic link at its place.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Replaces the file at `path` with `bytes`: written to a private temporary file beside it,
/// synced, renamed over it, and the folder synced. A crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    // A file left by a crash is replaced; a link planted there is not followed.
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Tightens every folder (to 0700) and file (to 0600) under `root`, `root` included, whose
/// mode gives anything to group or others; symbolic links are neither changed nor followed.
/// Returns how many were changed; what cannot be changed is logged and skipped.
pub fn tighten(root: &Path) -> usize {
    let mut fixed = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "reading a file's mode failed; left as it is");
                continue;
            }
        };
        let private = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            continue;
        };
        if meta.permissions().mode() & LOOSE != 0 {
            match fs::set_permissions(&path, fs::Permissions::from_mode(private)) {
                Ok(()) => fixed += 1,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "making a file private failed")
                }
            }
        }
        if meta.is_dir() {
            match fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.filter_map(Result::ok).map(|e| e.path())),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "reading a folder failed; its files were not checked")
                }
            }
        }
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn created_files_and_folders_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tmp");
        let deep = dir.path().join("a/b");
        create_dir(&deep).expect("mkdir");
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("f.log");
        open_append(&file).expect("open");
        assert_eq!(mode(&file), 0o600);
        let key = deep.join("key");
        write_atomically(&key, b"one").expect("write");
        write_atomically(&key, b"two").expect("rewrite");
        assert_eq!(fs::read(&key).expect("read"), b"two");
        assert_eq!(mode(&key), 0o600);
        assert!(!deep.join("key.tmp").exists());
    }

    #[test]
    fn a_link_at_a_log_file_is_refused_not_followed() {
        let dir = tempfile::tempdir().expect("tmp");
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched").expect("write");
        let log = dir.path().join("run.log");
        std::os::unix::fs::symlink(&victim, &log).expect("symlink");
        let error = open_append(&log).expect_err("a link is refused");
        assert_eq!(error.raw_os_error(), Some(nix::libc::ELOOP), "{error}");
        assert!(open_read(&log).is_err());
        assert_eq!(fs::read_to_string(&victim).expect("read"), "untouched");
    }

    #[test]
    fn tighten_fixes_loose_modes_and_leaves_links_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("logs/.runs")).expect("mkdir");
        fs::write(root.join("taskmesh.redb"), "db").expect("write");
        fs::write(root.join("logs/.runs/r.log"), "log").expect("write");
        fs::write(root.join("identity"), "id").expect("write");
        let outside = dir.path().join("outside");
        fs::write(&outside, "other").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        for (path, m) in [
            (root.clone(), 0o755),
            (root.join("logs"), 0o755),
            (root.join("logs/.runs"), 0o700),
            (root.join("taskmesh.redb"), 0o644),
            (root.join("logs/.runs/r.log"), 0o640),
            (root.join("identity"), 0o600),
            (outside.clone(), 0o644),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(m)).expect("chmod");
        }
        assert_eq!(tighten(&root), 4);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("logs")), 0o700);
        assert_eq!(mode(&root.join("taskmesh.redb")), 0o600);
        assert_eq!(mode(&root.join("logs/.runs/r.log")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not touched");
        assert_eq!(tighten(&root), 0, "nothing left to fix");
    }
}
