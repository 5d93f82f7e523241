//! The runs of the cluster from the command line: listing them (every live node's history),
//! one run as JSON, its log printed or followed, and stopping it; `task log` reads the log of a
//! task's newest run through the same calls.

use std::io::Write;

use futures::StreamExt;
use reqwest::Method;

use super::{Api, ClientError, ExitCode, enc, iso, print_json};
use crate::cli::{Output, Remote, RunsCommand};
use crate::model::Run;

/// The header naming the nodes whose history a listing lacks (see `GET /api/runs`).
const UNANSWERED: &str = "taskmesh-unanswered";

pub(super) async fn runs(command: RunsCommand) -> Result<ExitCode, ClientError> {
    match command {
        RunsCommand::Ls {
            task,
            status,
            node,
            trigger,
            limit,
            remote,
        } => {
            let filters = [
                ("task", task),
                ("status", status),
                ("node", node),
                ("trigger", trigger),
            ];
            let query: String = filters
                .iter()
                .filter_map(|(name, value)| Some(format!("&{name}={}", enc(value.as_ref()?))))
                .collect();
            list(&remote, &format!("/api/runs?limit={limit}{query}")).await
        }
        RunsCommand::Show { run, remote } => {
            let api = Api::new(&remote)?;
            let run: Run = api.read(&format!("/api/runs/{}", enc(&run))).await?;
            print_json(&serde_json::to_value(&run).unwrap_or_default());
            Ok(0)
        }
        RunsCommand::Log {
            run,
            follow,
            remote,
        } => log(&Api::new(&remote)?, &run, follow).await,
        RunsCommand::Stop { run, remote } => {
            let api = Api::new(&remote)?;
            let run: Run = api
                .call(Method::POST, &format!("/api/runs/{}/stop", enc(&run)), None)
                .await?;
            println!(
                "stopping run {} of {} ({})",
                run.id, run.task_name, run.status
            );
            Ok(0)
        }
    }
}

/// One page of runs, as a table or as JSON; the nodes whose history is missing on stderr.
async fn list(remote: &Remote, path: &str) -> Result<ExitCode, ClientError> {
    let api = Api::new(remote)?;
    let response = api.send(Method::GET, path, None).await?;
    let unanswered = response
        .headers()
        .get(UNANSWERED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let runs: Vec<Run> = super::answer_as(response, path).await?;
    if let Some(nodes) = unanswered {
        eprintln!("not listed: the runs of {nodes}, which did not answer in time");
    }
    if remote.output == Output::Json {
        print_json(&serde_json::to_value(&runs).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "{:<32} {:<20} {:<10} {:<16} {:<8} {:<20} {:>9} EXIT",
        "RUN", "TASK", "STATUS", "NODE", "TRIGGER", "CREATED", "TOOK"
    );
    for r in &runs {
        let took = r
            .duration()
            .map(|d| format!("{:.2} s", d.num_milliseconds() as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<20} {:<10} {:<16} {:<8} {:<20} {:>9} {}",
            r.id,
            r.task_name,
            r.status.to_string(),
            if r.node.is_empty() { "-" } else { &r.node },
            r.trigger.kind(),
            iso(&r.created_at),
            took,
            r.exit_code.map_or("-".into(), |c| c.to_string()),
        );
    }
    Ok(0)
}

/// The log of the newest run of `task` (name or id), printed or followed.
pub(super) async fn task_log(
    remote: &Remote,
    task: &str,
    follow: bool,
) -> Result<ExitCode, ClientError> {
    let api = Api::new(remote)?;
    let newest: Vec<Run> = api
        .read(&format!("/api/runs?task={}&limit=1", enc(task)))
        .await?;
    let Some(run) = newest.first() else {
        return Err(ClientError::Api(format!("task {task} has not run yet")));
    };
    eprintln!(
        "run {} of {} on {} ({})",
        run.id, run.task_name, run.node, run.status
    );
    log(&api, &run.id.0, follow).await
}

/// Prints run `id`'s log as it is, or follows it to the run's end.
async fn log(api: &Api, id: &str, follow: bool) -> Result<ExitCode, ClientError> {
    if follow {
        return follow_log(api, id).await;
    }
    let path = format!("/api/runs/{}/log", enc(id));
    let response = api.send(Method::GET, &path, None).await?;
    let bytes = super::answer_bytes(response, &path).await?;
    // Task output reaches a terminal: no escape sequences or controls.
    let text = crate::cli::terminal::terminal_safe(&String::from_utf8_lossy(&bytes));
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Ok(0)
}

/// Prints the run's log as it grows; returns the run's exit code (1 if it did not exit cleanly).
/// The pieces are printed as they come (a line may arrive in two), and a log that does not end
/// its last line gets a newline at the run's end.
pub(super) async fn follow_log(api: &Api, id: &str) -> Result<ExitCode, ClientError> {
    let response = api
        .send(
            Method::GET,
            &format!("/api/runs/{}/log?follow=true", enc(id)),
            None,
        )
        .await?;
    // Events are parsed as the SSE spec says (any line ending, fields, comments), and each
    // event's text is decoded whole: a character split across reads arrives intact.
    let mut events = sse_stream::SseByteStream::new(response.bytes_stream());
    let mut stdout = std::io::stdout();
    let mut line_open = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| {
            ClientError::Api(format!(
                "the log stream of run {id} broke: {}",
                crate::error_text::error_text(&e)
            ))
        })?;
        let data = event.data.unwrap_or_default();
        match event.event.as_deref() {
            Some("log") => {
                let data = crate::cli::terminal::terminal_safe(&data);
                let _ = stdout.write_all(data.as_bytes());
                let _ = stdout.flush();
                if !data.is_empty() {
                    line_open = !data.ends_with('\n');
                }
            }
            Some("end") => {
                if line_open {
                    let _ = stdout.write_all(b"\n");
                    let _ = stdout.flush();
                }
                let run: Run = serde_json::from_str(&data).map_err(|e| {
                    ClientError::Api(format!("the end of run {id}'s log is not a run: {e}"))
                })?;
                eprintln!("run {} {}", run.id, run.status);
                return Ok(run.exit_code.unwrap_or(1));
            }
            _ => {}
        }
    }
    Err(ClientError::Api(
        "the log stream ended before the run did".into(),
    ))
}
