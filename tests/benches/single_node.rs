//! Single-node benchmark: Execute-now latency to process start, throughput of trivial runs, cron
//! lateness, first restart of a killed always-task, and idle RSS/CPU of the real binary.
//! Run with `scripts/bench`; results go in docs/performance.md.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use taskmesh::events::Event;
use taskmesh::model::{RunId, RunStatus};
use taskmesh_tests::{TestNode, proc_stat, wait_for};

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, unit: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!(
        "{name:<44} n={:<5} p50={:>9.3} {unit}  p99={:>9.3} {unit}  max={:>9.3} {unit}",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(f64::NAN)
    );
}

/// Waits for the run to end, through the node's event bus.
async fn until_final(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    node: &TestNode,
    id: &RunId,
) -> Result<()> {
    loop {
        if node.handle.run(id).await.is_ok_and(|r| r.status.is_final()) {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Ok(Event::Run(run))) if run.id == *id && run.status.is_final() => return Ok(()),
            Ok(_) => {}
            Err(_) => anyhow::bail!("run {id} did not end"),
        }
    }
}

async fn log_ns(node: &TestNode, id: &RunId) -> Result<i128> {
    let log = node.handle.run_log(id, 0, 1024).await?.context("log")?;
    String::from_utf8_lossy(&log)
        .trim()
        .parse::<i128>()
        .context("timestamp in log")
}

async fn execute_latency(node: &TestNode) -> Result<()> {
    let id = node.api.create_task(&json!({"name": "stamp", "spec": {"command": ["date", "+%s%N"]}, "when": {"mode": "manual"}})).await?;
    let mut rx = node.handle.subscribe();
    let mut ms = Vec::new();
    for _ in 0..200 {
        let t0 = now_ns();
        let (status, run) = node
            .api
            .post(&format!("/api/tasks/{id}/run"), &json!(null))
            .await?;
        anyhow::ensure!(status == 202, "{run}");
        let run_id = RunId(run["id"].as_str().context("id")?.to_owned());
        until_final(&mut rx, node, &run_id).await?;
        ms.push((log_ns(node, &run_id).await? - t0) as f64 / 1e6);
    }
    report("execute now (API) -> process start", "ms", ms);
    Ok(())
}

async fn throughput(node: &TestNode) -> Result<()> {
    let id = node
        .api
        .create_task(
            &json!({"name": "trivial", "spec": {"command": ["true"], "concurrency": "allow"}, "when": {"mode": "manual"}}),
        )
        .await?;
    let mut rx = node.handle.subscribe();
    let total = 1000;
    let t0 = Instant::now();
    let api = node.api.clone();
    let sender = tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..total {
            while set.len() >= 32 {
                set.join_next().await;
            }
            let (api, path) = (api.clone(), format!("/api/tasks/{id}/run"));
            set.spawn(async move { api.post(&path, &Value::Null).await });
        }
        while set.join_next().await.is_some() {}
    });
    let mut done = 0;
    let mut ok = 0;
    while done < total {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Ok(Event::Run(run))) if run.task_name == "trivial" && run.status.is_final() => {
                done += 1;
                ok += usize::from(run.status == RunStatus::Succeeded);
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                anyhow::bail!("bench lagged {n} events")
            }
            Ok(_) => {}
            Err(_) => anyhow::bail!("runs stopped finishing at {done}"),
        }
    }
    let wall = t0.elapsed();
    sender.await?;
    println!(
        "{:<44} {total} runs in {:.3} s = {:.0} runs/s ({ok} succeeded)",
        "1000 trivial runs (API, 32 in flight)",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    Ok(())
}

async fn cron_lateness(node: &TestNode) -> Result<()> {
    let id = node.api.create_task(&json!({"name": "cron", "spec": {"command": ["date", "+%s%N"]}, "when": {"mode": "cron", "schedule": "* * * * * *"}})).await?;
    let runs = wait_for("30 cron runs", Duration::from_secs(45), || async {
        let runs = node.api.runs_of(&id).await.ok()?;
        let done: Vec<Value> = runs
            .into_iter()
            .filter(|r| r["status"] == "succeeded")
            .collect();
        (done.len() >= 31).then_some(done)
    })
    .await?;
    node.api
        .send(reqwest::Method::DELETE, &format!("/api/tasks/{id}"), None)
        .await?;
    let mut ms = Vec::new();
    // The first slot may be the one the task was created in; skip it.
    for run in runs.iter().rev().skip(1).take(30) {
        let slot: chrono::DateTime<chrono::Utc> =
            run["trigger"]["slot"].as_str().context("slot")?.parse()?;
        let started = log_ns(node, &RunId(run["id"].as_str().context("id")?.to_owned())).await?;
        ms.push((started - slot.timestamp_nanos_opt().context("ns")? as i128) as f64 / 1e6);
    }
    report("cron lateness (slot -> process start)", "ms", ms);
    Ok(())
}

async fn first_restart(node: &TestNode) -> Result<()> {
    let mut ms = Vec::new();
    for i in 0..10 {
        let id = node.api.create_task(&json!({"name": format!("daemon-{i}"), "spec": {"shell": "date +%s%N; exec sleep 1000"}, "when": {"mode": "always"}})).await?;
        let first = wait_for("the daemon", Duration::from_secs(5), || async {
            node.api
                .runs_of(&id)
                .await
                .ok()?
                .into_iter()
                .find(|r| r["status"] == "running" && r["pid"].is_u64())
        })
        .await?;
        let pid = first["pid"].as_u64().context("pid")? as i32;
        let killed_at = now_ns();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let second = wait_for("the restart", Duration::from_secs(5), || async {
            let runs = node.api.runs_of(&id).await.ok()?;
            let r = runs.into_iter().find(|r| r["id"] != first["id"])?;
            let id = RunId(r["id"].as_str()?.to_owned());
            let log = node.handle.run_log(&id, 0, 64).await.ok()??;
            String::from_utf8_lossy(&log).trim().parse::<i128>().ok()
        })
        .await?;
        ms.push((second - killed_at) as f64 / 1e6);
        node.api
            .send(reqwest::Method::DELETE, &format!("/api/tasks/{id}"), None)
            .await?;
    }
    report("always-task: kill -9 -> restarted process", "ms", ms);
    Ok(())
}

/// Idle RSS and CPU of the built binaries, in turn, twice each: the release build the other
/// figures use and, when it is built (`cargo build --profile dist -p taskmesh`), the one that
/// ships.
fn idle_binaries() -> Result<()> {
    let target = std::env::current_exe()?
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|release| release.parent())
        .context("target dir")?
        .to_owned();
    let release = target.join("release/taskmesh");
    anyhow::ensure!(
        release.exists(),
        "build the binary first: cargo build --release -p taskmesh ({})",
        release.display()
    );
    let mut builds = vec![("idle node (release binary)", release)];
    let dist = target.join("dist/taskmesh");
    if dist.exists() {
        builds.push(("idle node (dist binary, shipped)", dist));
    } else {
        println!(
            "no dist build at {}: only the release binary",
            dist.display()
        );
    }
    for _ in 0..2 {
        for (label, bin) in &builds {
            idle_binary(label, bin)?;
        }
    }
    Ok(())
}

/// Idle RSS and CPU of `bin` over 20 s, on an empty data dir.
fn idle_binary(label: &str, bin: &std::path::Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(bin)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TASKMESH_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let stat = || -> Result<(u64, u64)> {
        Ok((
            proc_stat::status_field(pid, "VmRSS:")?,
            proc_stat::cpu_ticks(pid)?,
        ))
    };
    std::thread::sleep(Duration::from_secs(2));
    let (_, t0) = stat()?;
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let (rss_kb, t1) = stat()?;
    let hz = proc_stat::ticks_per_second();
    println!(
        "{:<44} RSS {:.1} MB, CPU {:.3} % of one core over {} s",
        label,
        rss_kb as f64 / 1024.0,
        (t1 - t0) as f64 / hz / window.as_secs_f64() * 100.0,
        window.as_secs()
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // The node's own runtime, as in the binary.
    let rt = taskmesh::runtime()?;
    rt.block_on(async {
        let node = TestNode::start().await?;
        let mut settings = node.api.get("/api/settings").await?.1;
        settings["cluster"]["daily_logs"] = json!(false);
        settings["node"]["slots"] = json!(64);
        node.api
            .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
            .await?;
        execute_latency(&node).await?;
        throughput(&node).await?;
        first_restart(&node).await?;
        cron_lateness(&node).await?;
        node.stop().await;
        anyhow::Ok(())
    })?;
    idle_binaries()
}
