//! What a notification says: the cluster's template (`cluster.notify.template`) filled in from
//! a run.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::model::{NOTIFY_PLACEHOLDERS, Run};

/// Lines of the run's log a notification quotes (`{log_tail}`).
pub const TAIL_LINES: usize = 10;
/// At most this much of the log's end is read for them.
const TAIL_BYTES: u64 = 4096;
/// Telegram refuses messages over 4,096 characters; every text is cut to this.
pub const MAX_CHARS: usize = 4000;

/// One notification: the text and the facts it was made from (the generic webhook sends both).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    pub text: String,
    pub task: String,
    pub status: String,
    pub node: String,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub attempt: u32,
    pub run_id: String,
    pub link: String,
    pub log_tail: String,
}

impl Message {
    /// The message for `run`, with the template and the link base (`{base}/runs/{id}`).
    pub fn of_run(run: &Run, template: &str, base: &str, log_tail: String) -> Self {
        let duration_ms = run.duration().map(|d| d.num_milliseconds());
        let mut message = Message {
            text: String::new(),
            task: run.task_name.clone(),
            status: run.status.to_string(),
            node: run.node.clone(),
            exit_code: run.exit_code,
            duration_ms,
            attempt: run.attempt,
            run_id: run.id.to_string(),
            link: format!("{}/runs/{}", base.trim_end_matches('/'), run.id),
            log_tail,
        };
        let trigger = run.trigger.to_string();
        message.text = fill(template, |name| match name {
            "task" => Some(message.task.clone()),
            "status" => Some(message.status.clone()),
            "node" => Some(message.node.clone()),
            "exit_code" => Some(match (run.exit_code, run.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("none, signal {signal}"),
                (None, None) => "none".into(),
            }),
            "duration" => Some(match duration_ms {
                Some(ms) => format_ms(ms),
                None => "not started".into(),
            }),
            "attempt" => Some(message.attempt.to_string()),
            "trigger" => Some(trigger.clone()),
            "run_id" => Some(message.run_id.clone()),
            "link" => Some(message.link.clone()),
            "log_tail" => Some(message.log_tail.clone()),
            _ => None,
        });
        message
    }

    /// The message the "send test notification" button sends.
    pub fn test(node: &str, channel: &str) -> Self {
        Message {
            text: format!(
                "taskmesh: a test notification to channel {channel}, sent by node {node}"
            ),
            task: String::new(),
            status: "test".into(),
            node: node.to_owned(),
            exit_code: None,
            duration_ms: None,
            attempt: 0,
            run_id: String::new(),
            link: String::new(),
            log_tail: String::new(),
        }
    }
}

/// Replaces each `{name}` that `value` knows; leaves other text as it is. The result is cut to
/// [`MAX_CHARS`] characters.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').map(|close| (close, &after[..close])) {
            Some((close, name)) if NOTIFY_PLACEHOLDERS.contains(&name) => {
                out.push_str(&value(name).unwrap_or_default());
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    match out.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => {
            out.truncate(cut);
            out.push('…');
            out
        }
        None => out,
    }
}

fn format_ms(ms: i64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The last [`TAIL_LINES`] lines of the log file at `path` (empty when there is none).
pub fn log_tail(path: &Path) -> String {
    let Ok(mut file) = crate::logs::open_log(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the byte window.
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, RunStatus, TaskId, Trigger};
    use chrono::{Duration, Utc};

    fn failed_run() -> Run {
        let mut run = Run::new(
            TaskId("t1".into()),
            "backup".into(),
            Trigger::Manual,
            2,
            "node-a".into(),
        );
        let start = Utc::now() - Duration::milliseconds(2500);
        run.started_at = Some(start);
        run.finish(
            Outcome::Exited { code: 3 },
            start + Duration::milliseconds(2500),
        );
        run
    }

    #[test]
    fn the_template_is_filled_from_the_run() {
        let run = failed_run();
        let m = Message::of_run(
            &run,
            "{task} {status} on {node}: exit {exit_code} after {duration}, try {attempt}\n{link}\n{log_tail} {unknown} {",
            "http://ui.example:8080/",
            "last line".into(),
        );
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(
            m.text,
            format!(
                "backup failed on node-a: exit 3 after 2.5 s, try 2\nhttp://ui.example:8080/runs/{}\nlast line {{unknown}} {{",
                run.id
            )
        );
        assert_eq!(m.exit_code, Some(3));
        assert_eq!(m.duration_ms, Some(2500));
    }

    #[test]
    fn long_texts_are_cut() {
        let run = failed_run();
        let m = Message::of_run(&run, "{log_tail}", "http://x", "x".repeat(10_000));
        assert_eq!(m.text.chars().count(), MAX_CHARS + 1);
        assert!(m.text.ends_with('…'));
    }

    #[test]
    fn the_log_tail_is_its_last_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("run.log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = log_tail(&path);
        let expected: Vec<String> = (41..=50).map(|i| format!("line {i}")).collect();
        assert_eq!(tail, expected.join("\n"));
        assert_eq!(log_tail(&dir.path().join("missing.log")), "");
    }
}
