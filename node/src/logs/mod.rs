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
