//! Where a node's cluster key comes from at start, and the file that keeps it:
//! `<data dir>/cluster-key` (0600), never the database.
//!
//! At start the key is, in this order: the file named by `--cluster-key-file` (or the config's
//! `cluster_key_file`), the one given in the environment (`TASKMESH_CLUSTER_KEY`) or in
//! [`Config::cluster_key`](crate::Config), the data dir's file, a key an older version stored
//! in the database (moved to the file), or a new key, but only for a node that belongs to no
//! cluster yet. A node whose database says it is in a cluster and that has no key refuses to
//! start: its database alone (say, a copy) does not make it a member.

use std::path::{Path, PathBuf};

use crate::mesh::ClusterKey;
use crate::private_files;

/// The key file's name in the data dir.
pub const FILE_NAME: &str = "cluster-key";

/// Where the key in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// `--cluster-key-file` / `cluster_key_file`.
    KeyFile,
    /// `TASKMESH_CLUSTER_KEY` or `Config::cluster_key`.
    Given,
    /// `<data dir>/cluster-key`.
    DataDir,
    /// The node settings in the database (an older version kept it there).
    Database,
    /// Made now: the node belongs to no cluster yet.
    New,
}

/// What a node has to find its key in.
#[derive(Debug)]
pub(super) struct Sources<'a> {
    pub key_file: Option<&'a Path>,
    pub given: Option<&'a str>,
    /// The data dir's key file.
    pub kept: &'a Path,
    /// A key in the stored node settings.
    pub stored: Option<&'a str>,
    /// Whether the database says this node belongs to a cluster.
    pub in_cluster: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the cluster key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster key in {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error(
        "this node's database says it belongs to a cluster, but there is no cluster key: {path} is missing. \
         Restore that file from the node's backup, or give the key with --cluster-key-file PATH or TASKMESH_CLUSTER_KEY"
    )]
    Missing { path: PathBuf },
    #[error("making a cluster key")]
    Generate(#[source] std::io::Error),
    #[error(
        "{given} holds another cluster key than {kept}, the one this node already keeps \
         (fingerprint {kept_fingerprint}): a node is in one mesh at a time. To move it to the \
         other mesh, stop it and remove {kept} first"
    )]
    Differs {
        given: PathBuf,
        kept: PathBuf,
        kept_fingerprint: String,
    },
    #[error("writing the cluster key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The key this node uses, and where it came from.
pub(super) fn resolve(sources: &Sources<'_>) -> Result<(ClusterKey, Origin), KeyError> {
    let parse = |text: &str, origin: String| {
        text.parse::<ClusterKey>()
            .map_err(|message| KeyError::Invalid { origin, message })
    };
    if let Some(path) = sources.key_file {
        let text = read(path)?.ok_or_else(|| KeyError::Read {
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        return Ok((parse(&text, path.display().to_string())?, Origin::KeyFile));
    }
    if let Some(text) = sources.given {
        let origin = "TASKMESH_CLUSTER_KEY (or the node's configuration)".to_owned();
        return Ok((parse(text, origin)?, Origin::Given));
    }
    if let Some(text) = read(sources.kept)? {
        return Ok((
            parse(&text, sources.kept.display().to_string())?,
            Origin::DataDir,
        ));
    }
    if let Some(text) = sources.stored {
        let origin = "the database's node settings".to_owned();
        return Ok((parse(text, origin)?, Origin::Database));
    }
    if sources.in_cluster {
        return Err(KeyError::Missing {
            path: sources.kept.to_owned(),
        });
    }
    Ok((
        ClusterKey::generate().map_err(KeyError::Generate)?,
        Origin::New,
    ))
}

/// The key file's text, or None when there is none.
fn read(path: &Path) -> Result<Option<String>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Keeps `key` in the data dir's file (0600, replaced atomically), unless it holds it already.
pub(super) fn keep(path: &Path, key: &ClusterKey) -> Result<(), KeyError> {
    let text = format!("{key}\n");
    if read(path)?.is_some_and(|kept| kept.trim() == text.trim()) {
        return Ok(());
    }
    private_files::write_atomically(path, text.as_bytes()).map_err(|source| KeyError::Write {
        path: path.to_owned(),
        source,
    })
}

/// What [`prepare`] found or made in the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The key from the given file, now kept.
    Given(ClusterKey),
    /// The key the data dir already kept.
    Kept(ClusterKey),
    /// A new key, made and kept now.
    New(ClusterKey),
    /// No key: the data dir has a database, whose node finds its key at start (an older
    /// version may have kept it there).
    LeftToNode,
}

/// Puts the cluster key in the data dir's file before a node's first start (`taskmesh service
/// install`), the same file and rules a start uses: the key in `key_file` when given (refused
/// when the data dir already keeps another), else the one kept, else a new one, unless the
/// data dir already has a database (`has_database`), whose key the node finds at its start.
pub fn prepare(
    kept: &Path,
    key_file: Option<&Path>,
    has_database: bool,
) -> Result<Prepared, KeyError> {
    let existing = match read(kept)? {
        Some(text) => Some(
            text.parse::<ClusterKey>()
                .map_err(|message| KeyError::Invalid {
                    origin: kept.display().to_string(),
                    message,
                })?,
        ),
        None => None,
    };
    if let Some(path) = key_file {
        let (key, _) = resolve(&Sources {
            key_file: Some(path),
            given: None,
            kept,
            stored: None,
            in_cluster: false,
        })?;
        if let Some(old) = existing.filter(|old| *old != key) {
            return Err(KeyError::Differs {
                given: path.to_owned(),
                kept: kept.to_owned(),
                kept_fingerprint: crate::mesh::fingerprint(&old),
            });
        }
        keep(kept, &key)?;
        return Ok(Prepared::Given(key));
    }
    if let Some(key) = existing {
        return Ok(Prepared::Kept(key));
    }
    if has_database {
        return Ok(Prepared::LeftToNode);
    }
    let key = ClusterKey::generate().map_err(KeyError::Generate)?;
    keep(kept, &key)?;
    Ok(Prepared::New(key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Case {
        name: &'static str,
        key_file: Option<&'static str>,
        given: Option<&'static str>,
        kept: Option<&'static str>,
        stored: Option<&'static str>,
        in_cluster: bool,
        expect: Result<(&'static str, Origin), &'static str>,
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    #[test]
    fn the_key_comes_from_the_first_source_that_has_one() {
        let none = Case {
            name: "",
            key_file: None,
            given: None,
            kept: None,
            stored: None,
            in_cluster: false,
            expect: Err(""),
        };
        let cases = [
            Case {
                name: "the key file wins",
                key_file: Some(A),
                given: Some(B),
                kept: Some(C),
                stored: Some(D),
                expect: Ok((A, Origin::KeyFile)),
                ..none
            },
            Case {
                name: "then the environment or config",
                given: Some(B),
                kept: Some(C),
                stored: Some(D),
                expect: Ok((B, Origin::Given)),
                ..none
            },
            Case {
                name: "then the data dir's file",
                kept: Some(C),
                stored: Some(D),
                in_cluster: true,
                expect: Ok((C, Origin::DataDir)),
                ..none
            },
            Case {
                name: "then the database of an older version",
                stored: Some(D),
                in_cluster: true,
                expect: Ok((D, Origin::Database)),
                ..none
            },
            Case {
                name: "a member without a key refuses",
                in_cluster: true,
                expect: Err("is missing"),
                ..none
            },
            Case {
                name: "a bad key names its source",
                given: Some("xyz"),
                expect: Err("TASKMESH_CLUSTER_KEY"),
                ..none
            },
            Case {
                name: "a bad key file names the file",
                key_file: Some("not a key"),
                expect: Err("given.key"),
                ..none
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().expect("tmp");
            let given_file = dir.path().join("given.key");
            if let Some(text) = case.key_file {
                std::fs::write(&given_file, text).expect("write");
            }
            let kept = dir.path().join(FILE_NAME);
            if let Some(text) = case.kept {
                std::fs::write(&kept, format!("{text}\n")).expect("write");
            }
            let got = resolve(&Sources {
                key_file: case.key_file.map(|_| given_file.as_path()),
                given: case.given,
                kept: &kept,
                stored: case.stored,
                in_cluster: case.in_cluster,
            });
            match (got, case.expect) {
                (Ok((key, origin)), Ok((want, want_origin))) => {
                    assert_eq!(
                        (key.to_string().as_str(), origin),
                        (want, want_origin),
                        "{}",
                        case.name
                    )
                }
                (Err(e), Err(part)) => {
                    assert!(e.to_string().contains(part), "{}: {e}", case.name)
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
            }
        }
    }

    #[test]
    fn a_new_node_gets_a_new_key_and_keeps_it_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let kept = dir.path().join(FILE_NAME);
        let sources = Sources {
            key_file: None,
            given: None,
            kept: &kept,
            stored: None,
            in_cluster: false,
        };
        let (key, origin) = resolve(&sources).expect("new");
        assert_eq!(origin, Origin::New);
        keep(&kept, &key).expect("keep");
        let mode = std::fs::metadata(&kept).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) = resolve(&sources).expect("kept");
        assert_eq!((again, origin), (key, Origin::DataDir));
    }

    #[test]
    fn a_missing_key_file_given_by_flag_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("nope.key");
        let error = resolve(&Sources {
            key_file: Some(&missing),
            given: None,
            kept: &dir.path().join(FILE_NAME),
            stored: None,
            in_cluster: false,
        })
        .expect_err("missing");
        assert!(error.to_string().contains("nope.key"), "{error}");
    }
}
