//! One run's process: spawn it in its own process group, stream its output to the log, enforce
//! the timeout, and stop it with SIGTERM then SIGKILL.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::RunOrder;
use crate::events::{Event, Events};
use crate::ledger::RunLedger;
use crate::logs::{LogPaths, RunLogWriter, Stream};
use crate::model::{Outcome, Run, RunStatus, Spec, StopSignal, Task};

/// Longest line kept as one log line; longer output is split.
const MAX_LINE: u64 = 64 * 1024;
/// How long output may still arrive after the main process exited.
const DRAIN: Duration = Duration::from_secs(1);

pub(super) struct Ctx {
    pub ledger: RunLedger,
    pub logs: LogPaths,
    pub events: Events,
    pub groups: super::ProcessGroups,
}

#[derive(Clone, Copy)]
enum Kill {
    Timeout,
    Stop,
}

/// Runs the order to its end and returns the finished run, and whether it was stopped on request.
pub(super) async fn execute(order: RunOrder, ctx: &Ctx, stop: CancellationToken) -> (Run, bool) {
    let RunOrder {
        mut run,
        task,
        kill_grace,
        daily_logs,
    } = order;
    let mut log = match RunLogWriter::create(&ctx.logs, &run.id, &task.name, daily_logs) {
        Ok(log) => log,
        Err(e) => {
            run.finish(
                Outcome::FailedToStart {
                    error: format!("opening the run log: {e}"),
                },
                Utc::now(),
            );
            return (run, false);
        }
    };
    // Noted before the spawn: a crash between the spawn and the group's listing below still
    // leaves the run to the next start's sweep.
    ctx.groups.spawning(&run.id);
    let mut child = match command(&task, &run).and_then(|mut cmd| {
        cmd.spawn()
            .map_err(|e| format!("starting `{}`: {e}", program(&task.spec)))
    }) {
        Ok(child) => child,
        Err(error) => {
            ctx.groups.not_started(&run.id);
            let _ = log.note(&error);
            emit_log(ctx, &run, &log);
            run.started_at = Some(Utc::now());
            run.finish(Outcome::FailedToStart { error }, Utc::now());
            return (run, false);
        }
    };
    let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
    run.pid = child.id();
    // Listed before the start is recorded anywhere: a crash from here on leaves the group to
    // the reaper, or to the next start's sweep.
    match pgid {
        Some(pgid) => ctx.groups.started(&run.id, pgid.as_raw()),
        None => ctx.groups.not_started(&run.id),
    }
    run.status = RunStatus::Running;
    run.started_at = Some(Utc::now());
    info!(run_id = %run.id, task = %task.name, pid = ?run.pid, trigger = %run.trigger, "run started");
    ctx.ledger.record(&run).await;

    let (lines_tx, mut lines) = mpsc::channel(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, Stream::Stdout, lines_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, Stream::Stderr, lines_tx));
    }

    let stop_signal = task.spec.stop_signal;
    let stop_with = match stop_signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Quit => Signal::SIGQUIT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Usr1 => Signal::SIGUSR1,
        StopSignal::Usr2 => Signal::SIGUSR2,
    };
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let timeout_at = task.spec.timeout.map_or(far, |t| Instant::now() + t.0);
    let mut kill: Option<Kill> = None;
    let mut hard_kill_at = far;
    let status = loop {
        tokio::select! {
            Some((stream, line)) = lines.recv() => write(ctx, &run, &mut log, stream, &line),
            status = child.wait() => break status,
            _ = tokio::time::sleep_until(timeout_at), if kill.is_none() => {
                let _ = log.note(&format!("timed out after {}; sending {}", humantime::format_duration(task.spec.timeout.map(|t| t.0).unwrap_or_default()), stop_signal.name()));
                signal(pgid, stop_with);
                kill = Some(Kill::Timeout);
                hard_kill_at = Instant::now() + kill_grace;
            }
            _ = stop.cancelled(), if kill.is_none() => {
                let _ = log.note(&format!("stopped; sending {}", stop_signal.name()));
                signal(pgid, stop_with);
                kill = Some(Kill::Stop);
                hard_kill_at = Instant::now() + kill_grace;
            }
            _ = tokio::time::sleep_until(hard_kill_at) => {
                let _ = log.note("still running after the grace time; sending SIGKILL");
                signal(pgid, Signal::SIGKILL);
                hard_kill_at = far;
            }
        }
    };
    // Output written just before exit is still in the pipes; anything the process left behind
    // in its group is killed if it keeps them open past the drain time.
    let drain_until = Instant::now() + DRAIN;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some((stream, line)) => write(ctx, &run, &mut log, stream, &line),
                None => break,
            },
            _ = tokio::time::sleep_until(drain_until) => {
                let _ = log.note("processes left behind by the run still hold its output open; killing its process group");
                signal(pgid, Signal::SIGKILL);
                break;
            }
        }
    }
    if let Some(pgid) = pgid {
        ctx.groups.ended(pgid.as_raw());
    }
    let outcome = match (kill, status) {
        (Some(Kill::Timeout), _) => Outcome::TimedOut,
        (_, Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited { code },
            (None, Some(signal)) => Outcome::Signaled { signal },
            (None, None) => Outcome::Lost,
        },
        (_, Err(e)) => {
            warn!(run_id = %run.id, error = %e, "waiting for the process failed");
            Outcome::Lost
        }
    };
    run.finish(outcome, Utc::now());
    info!(run_id = %run.id, task = %task.name, status = %run.status, exit_code = ?run.exit_code, "run ended");
    (run, matches!(kill, Some(Kill::Stop)))
}

fn write(ctx: &Ctx, run: &Run, log: &mut RunLogWriter, stream: Stream, line: &[u8]) {
    if let Err(e) = log.write_line(stream, line) {
        warn!(run_id = %run.id, error = %e, "writing the log failed");
    }
    emit_log(ctx, run, log);
}

fn emit_log(ctx: &Ctx, run: &Run, log: &RunLogWriter) {
    let _ = ctx.events.send(Event::Log {
        run: run.id.clone(),
        len: log.len(),
    });
}

fn signal(pgid: Option<Pid>, sig: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH only means the group is already gone.
        let _ = killpg(pgid, sig);
    }
}

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, pipe);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send((stream, line)).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The names among `names` that belong to the node's own configuration (`TASKMESH_…`).
fn node_variables(
    names: impl Iterator<Item = std::ffi::OsString>,
) -> impl Iterator<Item = std::ffi::OsString> {
    names.filter(|name| name.as_encoded_bytes().starts_with(b"TASKMESH_"))
}

fn program(spec: &Spec) -> String {
    match &spec.command {
        Some(argv) => argv.first().cloned().unwrap_or_default(),
        None => "/bin/sh".into(),
    }
}

/// The command for a run: argv without a shell, or `sh -c` for a script. Parameters (the
/// task's, with those given for the run in their place) become environment variables; in argv
/// they also replace `{{name}}`.
fn command(task: &Task, run: &Run) -> Result<Command, String> {
    let spec = &task
        .spec
        .with_parameters(&run.parameters)
        .map_err(|errors| {
            let said: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!(
                "the run's parameters no longer fit the task: {}",
                said.join("; ")
            )
        })?;
    let mut cmd = match (spec.expanded_argv(), &spec.shell) {
        (Some(argv), _) if !argv.is_empty() => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        (_, Some(script)) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script);
            cmd
        }
        _ => return Err("the task says neither `command` nor `shell`".into()),
    };
    // The node's own configuration (TASKMESH_CLUSTER_KEY, TASKMESH_TOKEN, …) stays with the
    // node: a task sees only the TASKMESH_ variables set below, and any its spec sets.
    for name in node_variables(std::env::vars_os().map(|(name, _)| name)) {
        cmd.env_remove(name);
    }
    // systemd's socket is the node's: a task's own `READY=1` or `STOPPING=1` is not the node's.
    cmd.env_remove(crate::service::sd_notify::SOCKET_VARIABLE);
    for (name, value) in &spec.parameters {
        cmd.env(name, Spec::parameter_text(value));
    }
    cmd.envs(&spec.env)
        .env("TASKMESH_RUN_ID", &run.id.0)
        .env("TASKMESH_TASK", &task.name)
        .env("TASKMESH_TASK_ID", &task.id.0)
        .env("TASKMESH_ATTEMPT", run.attempt.to_string())
        .env("TASKMESH_TRIGGER", run.trigger.to_string());
    if let Some(slot) = run.trigger.slot() {
        cmd.env(
            "TASKMESH_SLOT",
            slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    if let crate::model::Trigger::Retry { of, .. } = &run.trigger {
        cmd.env("TASKMESH_RETRY_OF", &of.0);
    }
    if let Some(dir) = &spec.cwd {
        if !Path::new(dir).is_dir() {
            return Err(format!("the working directory `{dir}` does not exist"));
        }
        cmd.current_dir(dir);
    }
    if let Some(name) = &spec.user {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("looking up user `{name}`: {e}"))?
            .ok_or_else(|| format!("there is no user `{name}` on this node"))?;
        let me = nix::unistd::geteuid();
        if me != user.uid {
            if !me.is_root() {
                return Err(format!("running as `{name}` needs the node to run as root"));
            }
            // std drops supplementary groups (setgroups) before setuid when run as root.
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd.env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("HOME", &user.dir);
    }
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    #[test]
    fn only_the_nodes_own_variables_are_held_back() {
        let names = [
            "TASKMESH_CLUSTER_KEY",
            "TASKMESH_TOKEN",
            "TASKMESH_TOKEN_FILE",
            "PATH",
            "MY_TASKMESH_THING",
            "taskmesh_lower",
            "TASKMESH",
        ]
        .map(OsString::from);
        let held: Vec<OsString> = super::node_variables(names.into_iter()).collect();
        assert_eq!(
            held,
            [
                "TASKMESH_CLUSTER_KEY",
                "TASKMESH_TOKEN",
                "TASKMESH_TOKEN_FILE"
            ]
            .map(OsString::from)
        );
    }
}
