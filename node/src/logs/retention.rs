//! Deletes logs older than the retention time, and measures what the logs use.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;

use super::LogPaths;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_files: u64,
    pub deleted_bytes: u64,
}

/// Deletes daily files dated before `today - retention_days` and run logs last written before
/// `now - retention_days`. Files it does not recognise are left alone.
pub fn sweep(
    paths: &LogPaths,
    retention_days: u32,
    today: NaiveDate,
    now: SystemTime,
) -> RetentionReport {
    let mut report = RetentionReport::default();
    let oldest_day = today - chrono::Days::new(u64::from(retention_days));
    let cutoff = now.checked_sub(Duration::from_secs(u64::from(retention_days) * 86_400));
    let Ok(entries) = fs::read_dir(paths.root()) else {
        return report;
    };
    for dir in entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        let is_runs = dir.file_name() == ".runs";
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let expired = if is_runs {
                match (cutoff, meta.modified()) {
                    (Some(cutoff), Ok(modified)) => modified < cutoff,
                    _ => false,
                }
            } else {
                NaiveDate::parse_from_str(stem, "%Y-%m-%d").is_ok_and(|day| day < oldest_day)
            };
            if expired && fs::remove_file(file.path()).is_ok() {
                report.deleted_files += 1;
                report.deleted_bytes += meta.len();
            }
        }
    }
    report
}

/// Bytes used by all files under `root`.
pub fn disk_usage(root: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunId;

    #[test]
    fn sweep_deletes_only_old_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths = LogPaths::new(dir.path());
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).expect("date");
        for (task, d) in [("backup", 10), ("backup", 20), ("backup", 27), ("web", 12)] {
            let p = paths.daily_log(task, day(d));
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, "x\n").expect("write");
        }
        let keep = dir.path().join("backup").join("notes.txt");
        fs::write(&keep, "mine").expect("write");
        let old_run = RunId::generate();
        let new_run = RunId::generate();
        fs::create_dir_all(paths.runs_dir()).expect("mkdir");
        fs::write(paths.run_log(&old_run), "old").expect("write");
        fs::write(paths.run_log(&new_run), "new").expect("write");
        let old = SystemTime::now() - Duration::from_secs(20 * 86_400);
        fs::File::options()
            .write(true)
            .open(paths.run_log(&old_run))
            .and_then(|f| f.set_modified(old))
            .expect("mtime");

        let report = sweep(&paths, 14, today, SystemTime::now());

        assert_eq!(report.deleted_files, 3, "{report:?}");
        assert!(!paths.daily_log("backup", day(10)).exists());
        assert!(!paths.daily_log("web", day(12)).exists());
        assert!(paths.daily_log("backup", day(20)).exists());
        assert!(paths.daily_log("backup", day(27)).exists());
        assert!(keep.exists());
        assert!(!paths.run_log(&old_run).exists());
        assert!(paths.run_log(&new_run).exists());
        assert!(disk_usage(dir.path()) > 0);
    }
}
