//! Log files: one per run, optional daily files per task, and the retention sweep.
//!
//! Layout under the node's log path:
//! - `.runs/<run id>.log`: everything one run wrote to stdout and stderr, as written;
//! - `<task name>/<YYYY-MM-DD>.log`: with daily logs on, every line of the task's runs that day,
//!   prefixed with the time, the run id and the stream. Task names never start with `.`.
//!
//! Folders are 0700 and files 0600, opened with `O_NOFOLLOW` (a link planted at a log's place is
//! refused, not followed); a log path that other users could write to is refused ([`check_log_path`]).

mod guard;
mod retention;
mod writer;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::model::RunId;

pub use guard::{UnsafeLogPath, check as check_log_path};
pub use retention::{RetentionReport, disk_usage, sweep};
pub use writer::{RunLogWriter, Stream};

/// Where a node's logs live.
#[derive(Debug, Clone)]
pub struct LogPaths {
    root: PathBuf,
}

impl LogPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join(".runs")
    }

    pub fn run_log(&self, run: &RunId) -> PathBuf {
        self.runs_dir().join(format!("{run}.log"))
    }

    pub fn daily_log(&self, task_name: &str, day: NaiveDate) -> PathBuf {
        self.root
            .join(task_name)
            .join(format!("{}.log", day.format("%Y-%m-%d")))
    }
}

/// Opens one of the node's log files for reading, refusing a symbolic link at its place (ELOOP).
pub fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    crate::private_files::open_read(path)
}

/// The largest piece of a run's log one read (and one mesh request) carries.
pub const LOG_PIECE: usize = 256 * 1024;

/// Up to `max` bytes of the file at `path` from byte `from` on: empty at or past its end (any
/// `from`, also one beyond the largest file offset, 2^63 - 1, which a seek would refuse), None
/// when there is no file.
pub fn read_from(
    path: &std::path::Path,
    from: u64,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match open_log(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if from >= file.metadata()?.len() {
        return Ok(Some(Vec::new()));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_read_from_any_offset_without_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.log");
        std::fs::write(&path, b"hello\n").expect("write");
        let cases: &[(u64, usize, Option<&[u8]>)] = &[
            (0, 100, Some(b"hello\n")),
            (2, 2, Some(b"ll")),
            (6, 100, Some(b"")),
            (7, 100, Some(b"")),
            // Past the largest file offset: a seek there fails (EINVAL); reading gives nothing.
            (1 << 63, 100, Some(b"")),
            (u64::MAX, 100, Some(b"")),
        ];
        for (from, max, expected) in cases {
            let read = read_from(&path, *from, *max).expect("read");
            assert_eq!(read.as_deref(), *expected, "from {from}");
        }
        let missing = read_from(&dir.path().join("none.log"), u64::MAX, 1).expect("read");
        assert_eq!(missing, None);
    }
}
