//! The SQL side of the sink: connecting with the cluster's MySQL settings, the schema, and the
//! idempotent writes (upsert by run id, `INSERT IGNORE` by run id and line number).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, TxOpts, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tracing::warn;

use crate::logs::LogPaths;
use crate::model::{MysqlSettings, Run};

/// How long connecting (and each statement) may take before the try counts as failed.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Log lines sent in one statement, at most.
const LINES_PER_INSERT: usize = 500;
/// Bytes of log lines sent in one statement, about (well below the default max_allowed_packet).
const BYTES_PER_INSERT: usize = 1 << 20;
/// A longer log line is cut here.
const LINE_MAX: usize = 64 * 1024;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS taskmesh_runs (
        run_id CHAR(32) NOT NULL,
        task_id VARCHAR(255) NOT NULL,
        task_name VARCHAR(1024) NOT NULL,
        node VARCHAR(1024) NOT NULL,
        node_id VARCHAR(128) NULL,
        triggered_by VARCHAR(255) NOT NULL,
        attempt INT UNSIGNED NOT NULL,
        status VARCHAR(16) NOT NULL,
        exit_code INT NULL,
        exit_signal INT NULL,
        created_at DATETIME(6) NOT NULL,
        started_at DATETIME(6) NULL,
        ended_at DATETIME(6) NULL,
        actions JSON NOT NULL,
        record JSON NOT NULL,
        written_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
            ON UPDATE CURRENT_TIMESTAMP(6),
        PRIMARY KEY (run_id),
        KEY by_task (task_id, created_at),
        KEY by_status (status, created_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS taskmesh_log_lines (
        run_id CHAR(32) NOT NULL,
        line_no INT UNSIGNED NOT NULL,
        line MEDIUMTEXT NOT NULL,
        PRIMARY KEY (run_id, line_no)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

const UPSERT_RUN: &str = "INSERT INTO taskmesh_runs
    (run_id, task_id, task_name, node, node_id, triggered_by, attempt, status, exit_code,
     exit_signal, created_at, started_at, ended_at, actions, record)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON DUPLICATE KEY UPDATE
     task_id = VALUES(task_id), task_name = VALUES(task_name), node = VALUES(node),
     node_id = VALUES(node_id), triggered_by = VALUES(triggered_by), attempt = VALUES(attempt),
     status = VALUES(status), exit_code = VALUES(exit_code), exit_signal = VALUES(exit_signal),
     created_at = VALUES(created_at), started_at = VALUES(started_at),
     ended_at = VALUES(ended_at), actions = VALUES(actions), record = VALUES(record)";

/// Where the sink writes, for messages: `user@host:port/database`, never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    pub fn of(settings: &MysqlSettings) -> Self {
        Self(format!(
            "{}@{}:{}/{}",
            settings.user, settings.host, settings.port, settings.database
        ))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the sink was doing when MySQL failed.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Connecting,
    CreatingTables,
    WritingRuns,
    WritingLogLines,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connecting => "connecting to",
            Step::CreatingTables => "creating the tables in",
            Step::WritingRuns => "writing runs to",
            Step::WritingLogLines => "writing log lines to",
        })
    }
}

/// A failed delivery. None of these carry the password: the target names user, host, port and
/// database, and the driver's messages never repeat the password.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{step} MySQL {target}")]
    Mysql {
        step: Step,
        target: Target,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{step} MySQL {target}: no answer within {}s", ANSWER_WITHIN.as_secs())]
    Timeout { step: Step, target: Target },
    #[error("the outbox")]
    Outbox(#[from] crate::store::StoreError),
}

/// One open connection, with the tables in place.
pub struct Connection {
    conn: Conn,
    target: Target,
}

impl Connection {
    /// Connects and creates the tables if they are missing.
    pub async fn open(settings: &MysqlSettings) -> Result<Self, SinkError> {
        let target = Target::of(settings);
        let opts = OptsBuilder::default()
            .ip_or_hostname(settings.host.clone())
            .tcp_port(settings.port)
            .user(Some(settings.user.clone()))
            .pass(settings.password.clone())
            .db_name(Some(settings.database.clone()))
            .prefer_socket(false);
        let conn = within(&target, Step::Connecting, Conn::new(opts)).await?;
        let mut this = Self { conn, target };
        for statement in SCHEMA {
            let target = this.target.clone();
            within(
                &target,
                Step::CreatingTables,
                this.conn.query_drop(statement),
            )
            .await?;
        }
        Ok(this)
    }

    /// Writes `runs` (upserts by run id) in one transaction; with `log_lines`, first the log
    /// lines of each final run (so a final row means its lines are all there).
    pub async fn write(
        &mut self,
        runs: &[&Run],
        log_lines: bool,
        logs: &LogPaths,
    ) -> Result<(), SinkError> {
        if log_lines {
            for run in runs.iter().filter(|r| r.status.is_final()) {
                self.write_log(run, logs).await?;
            }
        }
        let target = self.target.clone();
        let rows: Vec<Vec<Value>> = runs.iter().map(|r| row(r)).collect();
        let step = Step::WritingRuns;
        within(&target, step, async {
            let mut tx = self.conn.start_transaction(TxOpts::default()).await?;
            tx.exec_batch(UPSERT_RUN, rows).await?;
            tx.commit().await
        })
        .await
    }

    /// Sends the lines of a finished run's log; lines already there are left alone. A log
    /// that cannot be read is reported and skipped: the run's row matters more.
    async fn write_log(&mut self, run: &Run, logs: &LogPaths) -> Result<(), SinkError> {
        let path = logs.run_log(&run.id);
        let unreadable = |e: std::io::Error| {
            warn!(run_id = %run.id, path = %path.display(), error = %e,
                "reading a run log for MySQL failed; its lines are not sent");
        };
        // As every reader of logs: a link planted at the log's place is not followed.
        let file = match tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .await
        {
            Ok(f) => f,
            // Skipped or never started runs have no log; retention may have deleted it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                unreadable(e);
                return Ok(());
            }
        };
        let mut reader = BufReader::new(file);
        let mut line_no: u32 = 0;
        let mut batch: Vec<Value> = Vec::new();
        let mut bytes = 0;
        loop {
            let line = match read_line(&mut reader).await {
                Ok(line) => line,
                Err(e) => {
                    unreadable(e);
                    None
                }
            };
            let end = line.is_none();
            if let Some(line) = line {
                line_no += 1;
                bytes += line.len();
                batch.extend([
                    Value::from(run.id.0.as_str()),
                    Value::from(line_no),
                    Value::from(line),
                ]);
            }
            let full = batch.len() / 3 >= LINES_PER_INSERT || bytes >= BYTES_PER_INSERT;
            if !batch.is_empty() && (full || end) {
                let rows = batch.len() / 3;
                let statement = format!(
                    "INSERT IGNORE INTO taskmesh_log_lines (run_id, line_no, line) VALUES {}",
                    vec!["(?, ?, ?)"; rows].join(", ")
                );
                let params = std::mem::take(&mut batch);
                let target = self.target.clone();
                within(
                    &target,
                    Step::WritingLogLines,
                    self.conn.exec_drop(statement, params),
                )
                .await?;
                bytes = 0;
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.disconnect()).await;
    }
}

/// Runs one step against MySQL with a deadline.
async fn within<T>(
    target: &Target,
    step: Step,
    work: impl Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, SinkError> {
    match tokio::time::timeout(ANSWER_WITHIN, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(SinkError::Mysql {
            step,
            target: target.clone(),
            source,
        }),
        Err(_) => Err(SinkError::Timeout {
            step,
            target: target.clone(),
        }),
    }
}

/// The next line without its line break (cut at [`LINE_MAX`] bytes), or None at the end.
async fn read_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(LINE_MAX as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() == LINE_MAX {
        // Skip the rest of an over-long line.
        let mut rest = Vec::new();
        loop {
            rest.clear();
            let n = (&mut *reader)
                .take(LINE_MAX as u64)
                .read_until(b'\n', &mut rest)
                .await?;
            if n == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn row(run: &Run) -> Vec<Value> {
    vec![
        Value::from(run.id.0.as_str()),
        Value::from(run.task_id.0.as_str()),
        Value::from(run.task_name.as_str()),
        Value::from(run.node.as_str()),
        Value::from(run.node_id.as_deref()),
        Value::from(run.trigger.to_string()),
        Value::from(run.attempt),
        Value::from(run.status.as_str()),
        Value::from(run.exit_code),
        Value::from(run.signal),
        time(run.created_at),
        run.started_at.map_or(Value::NULL, time),
        run.ended_at.map_or(Value::NULL, time),
        json(&run.actions),
        json(run),
    ]
}

/// A DATETIME(6) value, in UTC.
fn time(t: DateTime<Utc>) -> Value {
    Value::Date(
        t.year().clamp(0, 9999) as u16,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.timestamp_subsec_micros().min(999_999),
    )
}

/// A JSON column value.
fn json<T: serde::Serialize>(value: &T) -> Value {
    Value::from(serde_json::to_string(value).expect("model types always serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, TaskId, Trigger};

    #[test]
    fn the_target_names_everything_but_the_password() {
        let settings = MysqlSettings {
            host: "db.example".into(),
            port: 3307,
            user: "taskmesh".into(),
            password: Some("hunter2".into()),
            database: "runs".into(),
            log_lines: false,
        };
        let target = Target::of(&settings).to_string();
        assert_eq!(target, "taskmesh@db.example:3307/runs");
        let e = SinkError::Timeout {
            step: Step::Connecting,
            target: Target::of(&settings),
        };
        assert_eq!(
            e.to_string(),
            "connecting to MySQL taskmesh@db.example:3307/runs: no answer within 10s"
        );
    }

    #[test]
    fn a_row_has_one_value_per_column() {
        let mut run = Run::new(
            TaskId("t1".into()),
            "t".into(),
            Trigger::Manual,
            1,
            "n".into(),
        );
        run.finish(Outcome::Exited { code: 3 }, Utc::now());
        let values = row(&run);
        assert_eq!(values.len(), UPSERT_RUN.matches('?').count());
        assert_eq!(values[8], Value::Int(3));
        assert!(matches!(values[12], Value::Date(..)));
    }

    #[tokio::test]
    async fn lines_lose_their_breaks_and_long_ones_are_cut() {
        let long = "x".repeat(LINE_MAX + 10);
        let text = format!("one\r\ntwo\n{long}\nlast");
        let mut reader = BufReader::new(text.as_bytes());
        let mut lines = Vec::new();
        while let Some(line) = read_line(&mut reader).await.expect("read") {
            lines.push(line);
        }
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[..2], ["one", "two"]);
        assert_eq!(lines[2].len(), LINE_MAX);
        assert_eq!(lines[3], "last");
    }
}
