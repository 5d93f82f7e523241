//! Log files: one per run, optional daily files per task, and the retention sweep.
//!
//! Layout under the node's log path:
//! - `.runs/<run id>.log`: everything one run wrote to stdout and stderr, as written;
//! - `<task name>/<YYYY-MM-DD>.log`: with daily logs on, every line of the task's runs that day,
//!   prefixed with the time, the run id and the stream. Task names never start with `.`.

mod retention;
mod writer;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::model::RunId;

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
