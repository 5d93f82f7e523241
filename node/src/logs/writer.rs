//! Writes one run's output to its run log and, with daily logs on, to the task's daily file.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use chrono::{NaiveDate, Utc};

use super::LogPaths;
use crate::model::RunId;
use crate::private_files;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Files open on the first line: a run that prints nothing leaves no file (creating and later
/// deleting a file per trivial run is a large part of what such a run costs).
pub struct RunLogWriter {
    run_id: RunId,
    path: PathBuf,
    run_log: Option<File>,
    len: u64,
    daily: Option<Daily>,
}

struct Daily {
    paths: LogPaths,
    task_name: String,
    day: NaiveDate,
    file: Option<File>,
}

/// Opens a log file for appending: private (0600, in folders made 0700), and never through a
/// symbolic link planted at its place.
fn append(path: &std::path::Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        private_files::create_dir(dir)?;
    }
    private_files::open_append(path)
}

impl RunLogWriter {
    /// A writer for the run's log; fails only if the folder of run logs cannot be made.
    pub fn create(
        paths: &LogPaths,
        run_id: &RunId,
        task_name: &str,
        daily_logs: bool,
    ) -> io::Result<Self> {
        let path = paths.run_log(run_id);
        if let Some(dir) = path.parent() {
            private_files::create_dir(dir)?;
        }
        let daily = daily_logs.then(|| Daily {
            paths: paths.clone(),
            task_name: task_name.to_owned(),
            day: NaiveDate::MIN,
            file: None,
        });
        Ok(Self {
            run_id: run_id.clone(),
            path,
            run_log: None,
            len: 0,
            daily,
        })
    }

    /// Bytes written to the run log so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one line (with its newline, if it had one).
    pub fn write_line(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let run_log = match &mut self.run_log {
            Some(file) => file,
            None => self.run_log.insert(append(&self.path)?),
        };
        run_log.write_all(line)?;
        self.len += line.len() as u64;
        if let Some(daily) = &mut self.daily {
            let now = Utc::now();
            let today = now.date_naive();
            if daily.day != today || daily.file.is_none() {
                daily.day = today;
                daily.file = Some(append(&daily.paths.daily_log(&daily.task_name, today))?);
            }
            if let Some(file) = &mut daily.file {
                let tag = match stream {
                    Stream::Stdout => "out",
                    Stream::Stderr => "err",
                };
                let mut record =
                    format!("{} {} {tag} ", now.format("%H:%M:%S%.3f"), self.run_id).into_bytes();
                record.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    record.push(b'\n');
                }
                file.write_all(&record)?;
            }
        }
        Ok(())
    }

    /// A line of our own (spawn errors, kill notices), marked so it is not mistaken for output.
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        self.write_line(Stream::Stderr, format!("[taskmesh] {text}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn logs_are_private_and_a_link_planted_at_a_log_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths = LogPaths::new(dir.path().join("logs"));
        let run = RunId::generate();
        let mut log = RunLogWriter::create(&paths, &run, "job", true).expect("writer");
        log.write_line(Stream::Stdout, b"hello\n").expect("write");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&paths.run_log(&run)), 0o600);
        assert_eq!(mode(&paths.runs_dir()), 0o700);
        let daily = paths.daily_log("job", Utc::now().date_naive());
        assert_eq!(mode(&daily), 0o600);
        assert_eq!(mode(daily.parent().expect("task folder")), 0o700);

        // Another run whose log someone replaced by a link to a file of their choosing.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let planted = RunId::generate();
        std::os::unix::fs::symlink(&victim, paths.run_log(&planted)).expect("symlink");
        let mut log = RunLogWriter::create(&paths, &planted, "other", false).expect("writer");
        let error = log
            .write_line(Stream::Stdout, b"root's output\n")
            .expect_err("the link is refused");
        assert_eq!(error.raw_os_error(), Some(nix::libc::ELOOP), "{error}");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert!(crate::logs::open_log(&paths.run_log(&planted)).is_err());
    }
}
