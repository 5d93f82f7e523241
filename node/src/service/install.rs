//! `taskmesh service install|uninstall`: the unit, the config, the data dir and its keys written
//! where a systemd machine expects them (or under `--root`), then systemd told.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster_key::{self, KeyError, Prepared};
use crate::config::{Config, ConfigError};

/// The unit, as `dist/systemd/taskmesh.service` has it (the Debian package ships that file).
pub const UNIT: &str = include_str!("../../../dist/systemd/taskmesh.service");
/// The config written when there is none, as `dist/node.toml` has it (the package's conffile).
pub const CONFIG: &str = include_str!("../../../dist/node.toml");

/// The unit's name.
pub const SERVICE: &str = "taskmesh.service";
/// Where `install` writes the unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/taskmesh.service";
/// Where the Debian package puts its unit (either of these).
pub const PACKAGED_UNIT_PATHS: [&str; 2] = [
    "/lib/systemd/system/taskmesh.service",
    "/usr/lib/systemd/system/taskmesh.service",
];
/// The node's config file, which the unit names.
pub const CONFIG_PATH: &str = "/etc/taskmesh/node.toml";
/// The system user of `install --user`.
pub const USER: &str = "taskmesh";
/// The binary the unit in `dist/` starts (the package's).
const PACKAGED_BINARY: &str = "/usr/bin/taskmesh";
/// Present while systemd runs the machine (`sd_booted(3)`).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// What `taskmesh service install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The folder written into as if it were `/`; systemctl runs only when this is `/`.
    pub root: PathBuf,
    /// The binary the unit starts.
    pub binary: PathBuf,
    /// Run the node as the system user [`USER`] (made when missing).
    pub user: bool,
    /// Write the unit (the package ships its own).
    pub unit: bool,
    /// Enable and start the service with systemctl.
    pub start: bool,
    /// The mesh's cluster key to keep in the data dir.
    pub cluster_key_file: Option<PathBuf>,
}

/// What `taskmesh service uninstall` is asked to do.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub root: PathBuf,
    /// Also delete the data dir and the config.
    pub purge: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "{command} needs root: it writes {writes} and runs systemctl. Run it as root (sudo), or \
         pass --root DIR to write the files into DIR instead"
    )]
    NotRoot {
        command: &'static str,
        writes: String,
    },
    #[error("--root {path}: not a folder")]
    NoRoot { path: PathBuf },
    #[error(
        "--user makes the system user `{USER}` on this machine, which cannot be done for another \
         root (--root {root}): make the user there and add User={USER} to the unit"
    )]
    UserUnderRoot { root: PathBuf },
    #[error("the unit's binary {path}: {reason}")]
    Binary { path: PathBuf, reason: String },
    #[error("{action} {path}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: data_dir `{data_dir}` is relative; a service needs an absolute path")]
    RelativeDataDir { path: PathBuf, data_dir: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error(
        "--user: the Debian package's unit {path} runs the node as root; to run it as another \
         user, add User= and Group= with `systemctl edit taskmesh`"
    )]
    PackagedAsRoot { path: PathBuf },
    #[error(
        "taskmesh was installed by its Debian package ({path}): remove it with `apt remove \
         taskmesh` (`apt purge taskmesh` deletes its data and config too)"
    )]
    Packaged { path: PathBuf },
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServiceError {
    let path = path.to_owned();
    move |source| ServiceError::File {
        action,
        path,
        source,
    }
}

/// `path` (absolute, as on the installed machine) inside `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether `root` is this machine's `/`.
fn is_system(root: &Path) -> bool {
    root.canonicalize().is_ok_and(|r| r == Path::new("/"))
}

/// Whether systemd runs this machine (its runtime folder is there).
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNNING).is_dir()
}

/// The unit for `binary`, running as [`USER`] when `user` is set: [`UNIT`] with its
/// `ExecStart` binary replaced. Refuses a binary path that systemd would read otherwise
/// (relative, with spaces, quotes, `%` or `$`).
pub fn unit_text(binary: &Path, user: bool) -> Result<String, ServiceError> {
    let refuse = |reason: &str| ServiceError::Binary {
        path: binary.to_owned(),
        reason: reason.to_owned(),
    };
    let text = binary
        .to_str()
        .ok_or_else(|| refuse("not UTF-8: move it to a plain path and pass --binary PATH"))?;
    if !binary.is_absolute() {
        return Err(refuse(
            "not an absolute path: pass --binary /usr/local/bin/taskmesh",
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(*c))
    {
        return Err(refuse(&format!(
            "holds `{}`, which systemd's ExecStart would read as more than a path: move the \
             binary to a plain path (/usr/local/bin/taskmesh) and pass --binary PATH",
            c.escape_default()
        )));
    }
    let mut unit = UNIT.replacen(
        &format!("ExecStart={PACKAGED_BINARY} "),
        &format!("ExecStart={text} "),
        1,
    );
    if user {
        unit = unit.replacen(
            "[Service]\n",
            &format!("[Service]\nUser={USER}\nGroup={USER}\n"),
            1,
        );
    }
    Ok(unit)
}

/// Creates `path` and its missing parents as ordinary folders (0755: `/etc/taskmesh`,
/// `/var/lib`), which a root prefix may not have yet.
fn create_public_dir(path: &Path) -> Result<(), ServiceError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(file_error("creating the folder", path))
}

/// Writes `text` to `path` with `mode`, replacing what is there through a temporary file.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ServiceError> {
    if let Some(parent) = path.parent() {
        create_public_dir(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(file_error("writing", path))
}

/// Runs a command; its stderr becomes the error.
fn run(program: &str, args: &[&str]) -> Result<(), ServiceError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ServiceError::Command {
            command: command.clone(),
            reason: format!("could not run {program}: {e}"),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(ServiceError::Command {
        command,
        reason: format!("{} ({})", stderr.trim(), output.status),
    })
}

/// The uid and gid of [`USER`], made as a system user (no login, home at `home`) when missing.
fn ensure_user(home: &Path, out: &mut dyn Write) -> Result<(u32, u32), ServiceError> {
    let find = || {
        nix::unistd::User::from_name(USER).map_err(|e| ServiceError::Command {
            command: format!("looking up the user {USER}"),
            reason: e.to_string(),
        })
    };
    let user = match find()? {
        Some(user) => {
            let _ = writeln!(out, "user {USER}: exists (uid {})", user.uid);
            user
        }
        None => {
            let home = home.to_string_lossy();
            run(
                "useradd",
                &[
                    "--system",
                    "--user-group",
                    "--home-dir",
                    &home,
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ],
            )?;
            let user = find()?.ok_or_else(|| ServiceError::Command {
                command: format!("useradd {USER}"),
                reason: "the user is still missing afterwards".into(),
            })?;
            let _ = writeln!(out, "user {USER}: made (uid {})", user.uid);
            user
        }
    };
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// Gives `root` and everything under it to `uid:gid` (links themselves, not their targets).
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), ServiceError> {
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(file_error("changing the owner of", &path))?;
        let meta = std::fs::symlink_metadata(&path).map_err(file_error("reading", &path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(file_error("reading", &path))? {
                stack.push(entry.map_err(file_error("reading", &path))?.path());
            }
        }
    }
    Ok(())
}

/// The config at `path`, written from [`CONFIG`] when there is none (an existing one is kept
/// as it is), with its data dir as it would be on the installed machine.
fn ensure_config(path: &Path, out: &mut dyn Write) -> Result<Config, ServiceError> {
    let config = if path.exists() {
        let config = Config::load(path)?;
        let _ = writeln!(out, "config {}: kept as it is", path.display());
        config
    } else {
        write_file(path, CONFIG, 0o644)?;
        let _ = writeln!(out, "config {}: written", path.display());
        Config::load(path)?
    };
    if !config.data_dir.is_absolute() {
        return Err(ServiceError::RelativeDataDir {
            path: path.to_owned(),
            data_dir: config.data_dir,
        });
    }
    Ok(config)
}

/// Installs the node as a service, saying what it does on `out`: the config (kept when
/// present), the data dir (0700) with the node's identity and cluster key (0600), the system
/// user when asked, the unit, then `systemctl daemon-reload` and `enable --now`.
pub fn install(options: &InstallOptions, out: &mut dyn Write) -> Result<(), ServiceError> {
    let root = &options.root;
    let system = writable_root(
        root,
        "taskmesh service install",
        format!("{UNIT_PATH}, {CONFIG_PATH} and /var/lib/taskmesh"),
    )?;
    if options.user && !system {
        return Err(ServiceError::UserUnderRoot { root: root.clone() });
    }
    // A machine with the Debian package keeps the package's unit: another one in /etc would
    // hide it.
    let packaged = PACKAGED_UNIT_PATHS
        .iter()
        .map(|p| under(root, Path::new(p)))
        .find(|p| p.exists());
    if let (Some(path), true) = (&packaged, options.user) {
        return Err(ServiceError::PackagedAsRoot { path: path.clone() });
    }
    let unit = (options.unit && packaged.is_none())
        .then(|| unit_text(&options.binary, options.user))
        .transpose()?;

    let config_path = under(root, Path::new(CONFIG_PATH));
    let config = ensure_config(&config_path, out)?;
    let owner = match options.user {
        true => Some(ensure_user(&config.data_dir, out)?),
        false => None,
    };

    let node = Config {
        data_dir: under(root, &config.data_dir),
        ..Config::default()
    };
    let data_dir = &node.data_dir;
    if let Some(parent) = data_dir.parent() {
        create_public_dir(parent)?;
    }
    crate::private_files::create_dir(data_dir)
        .map_err(file_error("creating the data directory", data_dir))?;
    let tightened = crate::private_files::tighten(data_dir);
    let _ = writeln!(
        out,
        "data dir {}: private (0700){}",
        data_dir.display(),
        match tightened {
            0 => String::new(),
            n => format!(", {n} files and folders made private"),
        }
    );
    let identity = crate::mesh::load_or_create_identity(&node.identity_path()).map_err(
        file_error("reading or creating the identity", &node.identity_path()),
    )?;
    let _ = writeln!(
        out,
        "identity {}: peer id {}",
        node.identity_path().display(),
        identity.public().to_peer_id()
    );
    let key_path = node.cluster_key_path();
    let prepared = cluster_key::prepare(
        &key_path,
        options.cluster_key_file.as_deref(),
        node.db_path().exists(),
    )?;
    let fingerprint = |key| crate::mesh::fingerprint(key);
    let _ = match &prepared {
        Prepared::Given(key) => writeln!(
            out,
            "cluster key {}: from {} (fingerprint {})",
            key_path.display(),
            options
                .cluster_key_file
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display(),
            fingerprint(key)
        ),
        Prepared::Kept(key) => writeln!(
            out,
            "cluster key {}: kept (fingerprint {})",
            key_path.display(),
            fingerprint(key)
        ),
        Prepared::New(key) => writeln!(
            out,
            "cluster key {}: new (fingerprint {}); other machines join this mesh with \
             `taskmesh service install --cluster-key-file FILE`, FILE a copy of it (0600)",
            key_path.display(),
            fingerprint(key)
        ),
        Prepared::LeftToNode => writeln!(
            out,
            "cluster key: none in {}; the node finds the one its database names at its start",
            key_path.display()
        ),
    };
    if let Some((uid, gid)) = owner {
        chown_tree(data_dir, uid, gid)?;
        let _ = writeln!(out, "data dir {}: owned by {USER}", data_dir.display());
    }

    if let (Some(path), true) = (&packaged, options.unit) {
        let _ = writeln!(
            out,
            "unit {}: the Debian package's, kept (no unit written to {UNIT_PATH})",
            path.display()
        );
    }
    if let Some(text) = unit {
        let path = under(root, Path::new(UNIT_PATH));
        write_file(&path, &text, 0o644)?;
        let _ = writeln!(
            out,
            "unit {}: written (starts {})",
            path.display(),
            options.binary.display()
        );
    }

    if !options.start && !options.unit {
        // The Debian package's postinst: the package enables and starts its own unit.
    } else if !options.start {
        let _ = writeln!(
            out,
            "not started (--no-start): `systemctl daemon-reload && systemctl enable --now taskmesh` starts it"
        );
    } else if !system {
        let _ = writeln!(
            out,
            "not started: systemctl manages this machine, not --root {}",
            root.display()
        );
    } else if !systemd_running() {
        let _ = writeln!(
            out,
            "not started: systemd does not run this machine ({SYSTEMD_RUNNING} is missing). Start \
             the node with `taskmesh run --config {CONFIG_PATH}` under your init system"
        );
    } else {
        run("systemctl", &["daemon-reload"])?;
        run("systemctl", &["enable", "--now", SERVICE])?;
        let _ = writeln!(
            out,
            "started: {SERVICE} is enabled and running (`systemctl status taskmesh`, `journalctl -u taskmesh`); \
             `taskmesh login-url` prints a link that logs a browser in"
        );
    }
    Ok(())
}

/// Checks that `root` is a folder and, when it is the real `/`, that we are root; answers
/// whether it is the real `/`.
fn writable_root(root: &Path, command: &'static str, writes: String) -> Result<bool, ServiceError> {
    if !root.is_dir() {
        return Err(ServiceError::NoRoot {
            path: root.to_owned(),
        });
    }
    let system = is_system(root);
    if system && !nix::unistd::geteuid().is_root() {
        return Err(ServiceError::NotRoot { command, writes });
    }
    Ok(system)
}

/// Uninstalls the service, saying what it does on `out`: stops and disables it, removes the
/// unit, and keeps the data dir and config unless `purge`.
pub fn uninstall(options: &UninstallOptions, out: &mut dyn Write) -> Result<(), ServiceError> {
    let root = &options.root;
    let system = writable_root(
        root,
        "taskmesh service uninstall",
        format!("{UNIT_PATH} (and with --purge, {CONFIG_PATH} and the data dir)"),
    )?;
    let unit_path = under(root, Path::new(UNIT_PATH));
    if !unit_path.exists()
        && let Some(packaged) = PACKAGED_UNIT_PATHS
            .iter()
            .map(|p| under(root, Path::new(p)))
            .find(|p| p.exists())
    {
        return Err(ServiceError::Packaged { path: packaged });
    }
    let systemd = system && systemd_running();
    if systemd && unit_path.exists() {
        run("systemctl", &["disable", "--now", SERVICE])?;
        let _ = writeln!(out, "stopped and disabled {SERVICE}");
    }
    match std::fs::remove_file(&unit_path) {
        Ok(()) => {
            let _ = writeln!(out, "unit {}: removed", unit_path.display());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = writeln!(out, "unit {}: none there", unit_path.display());
        }
        Err(e) => return Err(file_error("removing", &unit_path)(e)),
    }
    if systemd {
        run("systemctl", &["daemon-reload"])?;
    } else if system {
        let _ = writeln!(
            out,
            "systemd does not run this machine ({SYSTEMD_RUNNING} is missing): stop a running node yourself"
        );
    }

    let config_path = under(root, Path::new(CONFIG_PATH));
    let data_dir = match config_path.exists() {
        true => Config::load(&config_path)?.data_dir,
        false => PathBuf::from("/var/lib/taskmesh"),
    };
    let data_dir = under(root, &data_dir);
    if options.purge {
        for (what, path) in [
            ("data dir", data_dir.clone()),
            (
                "config",
                config_path.parent().unwrap_or(&config_path).to_owned(),
            ),
        ] {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    let _ = writeln!(out, "{what} {}: deleted", path.display());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_error("deleting", &path)(e)),
            }
        }
    } else {
        let _ = writeln!(
            out,
            "kept the data dir {} and the config {} (--purge deletes them)",
            data_dir.display(),
            config_path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_packaged_unit_is_the_installed_one_for_the_packaged_binary() {
        assert_eq!(
            unit_text(Path::new(PACKAGED_BINARY), false).expect("unit"),
            UNIT
        );
        let own = unit_text(Path::new("/opt/tm/bin/taskmesh"), true).expect("unit");
        assert!(
            own.contains("\nExecStart=/opt/tm/bin/taskmesh run --config /etc/taskmesh/node.toml\n"),
            "{own}"
        );
        assert!(
            own.contains("[Service]\nUser=taskmesh\nGroup=taskmesh\n"),
            "{own}"
        );
        assert!(UNIT.contains(&format!("--config {CONFIG_PATH}\n")));
    }

    #[test]
    fn a_binary_path_systemd_would_misread_is_refused() {
        for (path, says) in [
            ("taskmesh", "not an absolute path"),
            ("/home/a b/taskmesh", "holds ` `"),
            ("/opt/100%/taskmesh", "holds `%`"),
            ("/opt/$HOME/taskmesh", "holds `$`"),
        ] {
            let error = unit_text(Path::new(path), false)
                .expect_err(path)
                .to_string();
            assert!(error.contains(path) && error.contains(says), "{error}");
        }
    }

    #[test]
    fn the_shipped_config_is_valid_and_names_the_default_data_dir() {
        let config = Config::parse(CONFIG).expect("dist/node.toml parses");
        assert_eq!(config.data_dir, Path::new("/var/lib/taskmesh"));
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn under_puts_absolute_paths_inside_the_root() {
        assert_eq!(
            under(Path::new("/tmp/r"), Path::new("/etc/taskmesh/node.toml")),
            Path::new("/tmp/r/etc/taskmesh/node.toml")
        );
        assert_eq!(
            under(Path::new("/"), Path::new("/etc/x")),
            Path::new("/etc/x")
        );
    }

    #[test]
    fn an_invalid_existing_config_is_refused_with_its_path() {
        let root = tempfile::tempdir().expect("tmp");
        let path = under(root.path(), Path::new(CONFIG_PATH));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "data_dir = 3\n").expect("write");
        let options = InstallOptions {
            root: root.path().to_owned(),
            binary: PathBuf::from(PACKAGED_BINARY),
            user: false,
            unit: true,
            start: false,
            cluster_key_file: None,
        };
        let error = install(&options, &mut Vec::new()).expect_err("refused");
        let text = crate::error_text::error_text(&error);
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            !under(root.path(), Path::new(UNIT_PATH)).exists(),
            "nothing else is written"
        );
    }

    #[test]
    fn a_packaged_unit_is_kept_and_not_hidden_by_another_in_etc() {
        let root = tempfile::tempdir().expect("tmp");
        let packaged = under(root.path(), Path::new(PACKAGED_UNIT_PATHS[1]));
        std::fs::create_dir_all(packaged.parent().expect("parent")).expect("mkdir");
        std::fs::write(&packaged, UNIT).expect("write");
        let options = InstallOptions {
            root: root.path().to_owned(),
            binary: PathBuf::from("/usr/local/bin/taskmesh"),
            user: false,
            unit: true,
            start: false,
            cluster_key_file: None,
        };
        let mut out = Vec::new();
        install(&options, &mut out).expect("install");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.contains("the Debian package's, kept"), "{out}");
        assert!(!under(root.path(), Path::new(UNIT_PATH)).exists());
        let error = uninstall(
            &UninstallOptions {
                root: root.path().to_owned(),
                purge: true,
            },
            &mut Vec::new(),
        )
        .expect_err("left to apt");
        assert!(error.to_string().contains("apt remove taskmesh"), "{error}");
        assert!(under(root.path(), Path::new("/var/lib/taskmesh/cluster-key")).exists());
    }

    #[test]
    fn a_key_file_for_another_mesh_is_refused_and_the_kept_key_stays() {
        let root = tempfile::tempdir().expect("tmp");
        let mut options = InstallOptions {
            root: root.path().to_owned(),
            binary: PathBuf::from(PACKAGED_BINARY),
            user: false,
            unit: false,
            start: false,
            cluster_key_file: None,
        };
        install(&options, &mut Vec::new()).expect("first install");
        let kept = under(root.path(), Path::new("/var/lib/taskmesh/cluster-key"));
        let before = std::fs::read_to_string(&kept).expect("key");
        let other = root.path().join("other-key");
        std::fs::write(&other, format!("{}\n", "ab".repeat(32))).expect("write");
        options.cluster_key_file = Some(other.clone());
        let error = install(&options, &mut Vec::new()).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains(&other.display().to_string()) && text.contains("another cluster key"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&kept).expect("key"), before);
        // The same key again is fine.
        std::fs::write(&other, &before).expect("write");
        install(&options, &mut Vec::new()).expect("same key");
    }
}
