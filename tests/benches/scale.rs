//! How cost grows with the work: one table per dimension, one row per size.
//!
//! - **tasks** (the release binary, as an operator runs it): 100 → 1,000 → 10,000 tasks (and
//!   100,000 with `--full`): creation rate through the API, RSS, the agreed state's size and the
//!   time to read it from the tables and encode it (what a Raft snapshot costs), restart to a
//!   complete task list, a fresh node receiving the state, and the latency and size of a page of
//!   `GET /api/tasks` and of the task list `/`.
//! - **history** (a node in this process): 1,000 tasks with 10,000 → 100,000 → 1,000,000
//!   finished runs in the node's history (and 20 per task in the replicated ledger): store
//!   size, a page of 50 runs (all tasks, and one task further back), `/`, and runs per second
//!   of trivial runs, beside one task with an empty history in the same run.
//! - **time** (the release binary; only when named, `scripts/bench-scale time [--minutes N]`):
//!   a steady mixed load for N minutes (10 by default): 20 cron tasks every second, a daemon that
//!   prints and exits every 11 s (just long enough not to count as a crash loop), 20 manual runs a second through the API, a browser's polling and
//!   a client of the live event stream coming and going. Every minute a row: runs ended, RSS,
//!   threads, open files, CPU, and the data directory's size; at the end, how fast each grew
//!   over the second half. A node that leaks shows it here.
//!
//! Run with `scripts/bench-scale` (release build); the figures go in docs/performance.md.
//! Every loop is bounded by a count and a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use taskmesh::consensus::State;
use taskmesh::model::{Outcome, Run, RunId, TaskId, Trigger};
use taskmesh::store::{RedbStore, Store};
use taskmesh_tests::{Api, TestNode, access_token, proc_stat};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Small charts, one per metric, each a value per size: what `--svg DIR` writes.
#[derive(Default)]
struct Plot {
    metrics: Vec<(String, Vec<(String, f64)>)>,
}

impl Plot {
    fn add(&mut self, metric: &str, size: usize, value: f64) {
        let size = match size {
            n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
            n if n >= 1_000 => format!("{}k", n / 1_000),
            n => n.to_string(),
        };
        match self.metrics.iter_mut().find(|(m, _)| m == metric) {
            Some((_, points)) => points.push((size, value)),
            None => self.metrics.push((metric.to_owned(), vec![(size, value)])),
        }
    }

    /// An SVG with one panel per metric, three to a row.
    fn svg(&self, title: &str) -> String {
        let (w, h) = (260.0, 170.0);
        let rows = self.metrics.len().div_ceil(3);
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{title}</text>"#,
            w * 3.0,
            h * rows as f64 + 30.0
        );
        for (i, (metric, points)) in self.metrics.iter().enumerate() {
            let (x0, y0) = (w * (i % 3) as f64, 30.0 + h * (i / 3) as f64);
            let max = points.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
            let at = |j: usize, v: f64| {
                let step = 200.0 / (points.len().max(2) - 1) as f64;
                (x0 + 30.0 + j as f64 * step, y0 + 140.0 - v / max * 100.0)
            };
            out.push_str(&format!(
                r#"<text x="{}" y="{}" font-weight="bold">{metric}</text><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="gray"/>"#,
                x0 + 10.0,
                y0 + 16.0,
                x0 + 25.0,
                y0 + 140.0,
                x0 + 235.0,
                y0 + 140.0
            ));
            let line: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(j, (_, v))| {
                    let (x, y) = at(j, *v);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            out.push_str(&format!(
                r##"<polyline points="{}" fill="none" stroke="#2563eb" stroke-width="2"/>"##,
                line.join(" ")
            ));
            for (j, (size, v)) in points.iter().enumerate() {
                let (x, y) = at(j, *v);
                out.push_str(&format!(
                    r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="#2563eb"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="gray">{size}</text>"##,
                    y - 6.0,
                    significant(*v),
                    y0 + 154.0
                ));
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

/// `v` with about three significant digits.
fn significant(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// `n` GETs of `path`, one after the other: (p50 ms, p99 ms, bytes of the last answer).
async fn latency(api: &Api, path: &str, n: usize) -> Result<(f64, f64, usize)> {
    let mut ms = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let response = api.http.get(format!("{}{path}", api.base)).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        ensure!(status.is_success(), "{path} answered {status}");
        bytes = body.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99), bytes))
}

/// Polls `check` every 20 ms until it holds; the time it took.
async fn until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        if check().await {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what}: not within {deadline:?}")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn task_body(n: usize) -> Value {
    json!({"name": format!("t{n:06}"), "spec": {"command": ["true"], "concurrency": "allow"}, "when": {"mode": "manual"}})
}

/// Creates `count` tasks named from `first` on, 32 requests in flight; their ids, in order.
async fn create_tasks(api: &Api, first: usize, count: usize) -> Result<Vec<String>> {
    let mut set = tokio::task::JoinSet::new();
    let mut ids = vec![String::new(); count];
    for n in 0..count {
        while set.len() >= 32 {
            let (i, id) = set.join_next().await.context("a task")???;
            ids[i] = id;
        }
        let api = api.clone();
        set.spawn(async move { anyhow::Ok((n, api.create_task(&task_body(first + n)).await?)) });
    }
    while let Some(done) = set.join_next().await {
        let (i, id) = done??;
        ids[i] = id;
    }
    Ok(ids)
}

/// The release binary running a node on its own data directory.
struct Binary {
    child: Child,
    p2p: u16,
    api: Api,
}

impl Binary {
    fn path() -> Result<PathBuf> {
        let bin = std::env::current_exe()?
            .parent()
            .and_then(|deps| deps.parent())
            .map(|release| release.join("taskmesh"))
            .context("target dir")?;
        ensure!(
            bin.exists(),
            "build the binary first: cargo build --release -p taskmesh ({})",
            bin.display()
        );
        Ok(bin)
    }

    /// Starts it and waits until its API answers.
    async fn start(dir: &Path, extra: &[String]) -> Result<Self> {
        let (port, p2p) = (free_port()?, free_port()?);
        let child = Command::new(Self::path()?)
            .args(["run", "--no-mdns", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--p2p-listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{p2p}"))
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("TASKMESH_LOG", "warn")
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut api = None;
        until("the node's API", Duration::from_secs(60), || {
            let found = access_token(dir).ok().map(|t| Api::with_token(&base, &t));
            let probe = found.clone();
            if found.is_some() {
                api = found;
            }
            async move {
                match probe {
                    Some(api) => api
                        .get("/api/tasks?limit=1")
                        .await
                        .is_ok_and(|(s, _)| s == 200),
                    None => false,
                }
            }
        })
        .await?;
        Ok(Self {
            child,
            p2p,
            api: api.context("the API")?,
        })
    }

    fn rss_mb(&self) -> Result<f64> {
        Ok(proc_stat::status_field(self.child.id(), "VmRSS:")? as f64 / 1024.0)
    }

    /// SIGTERM, and waits for it to exit (SIGKILL after 30 s).
    async fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let t0 = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t0.elapsed() > Duration::from_secs(30) {
                self.child.kill()?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn has_task(api: &Api, id: &str) -> bool {
    api.get(&format!("/api/tasks/{id}"))
        .await
        .is_ok_and(|(s, _)| s == 200)
}

/// One row of the tasks table.
async fn tasks_row(count: usize, plot: &mut Plot) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let node = Binary::start(&dir_a, &[]).await?;
    let t0 = Instant::now();
    let ids = create_tasks(&node.api, 0, count).await?;
    let create_rate = count as f64 / t0.elapsed().as_secs_f64();
    let last = ids.last().context("a task")?.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = node.rss_mb()?;
    let (page_p50, page_p99, page_bytes) = latency(&node.api, "/api/tasks?limit=50", 50).await?;
    // The task list: its first page (50 rows, panels fetched when opened).
    let list = {
        let (p50, p99, bytes) = latency(&node.api, "/", 50).await?;
        format!("{p50:>8.1} {p99:>8.1} {:>9.0}", bytes as f64 / 1024.0)
    };
    // A fresh node with the same key, dialling this one, until it lists the newest task.
    let key = dir_a.join("cluster-key");
    let peer = format!("127.0.0.1:{}", node.p2p);
    let t0 = Instant::now();
    let fresh = Binary::start(
        &dir_b,
        &[
            "--cluster-key-file".into(),
            key.display().to_string(),
            "--peer".into(),
            peer,
        ],
    )
    .await?;
    let fresh_s = until(
        "the fresh node's task list",
        Duration::from_secs(120),
        || has_task(&fresh.api, &last),
    )
    .await
    .map(|_| t0.elapsed().as_secs_f64())?;
    fresh.stop().await?;
    // A restart of the first node, until it lists the newest task again.
    node.stop().await?;
    let t0 = Instant::now();
    let node = Binary::start(&dir_a, &[]).await?;
    until("the restarted task list", Duration::from_secs(120), || {
        has_task(&node.api, &last)
    })
    .await?;
    let restart_s = t0.elapsed().as_secs_f64();
    node.stop().await?;
    // What a snapshot costs: the state read from the tables, then encoded whole.
    let store = RedbStore::open(&dir_a.join("taskmesh.redb"))?;
    let t0 = Instant::now();
    let state = State::load(&store)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let encoded = serde_json::to_vec(&state)?;
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    ensure!(
        state.tasks.len() == count,
        "{} tasks stored",
        state.tasks.len()
    );
    plot.add("tasks created per s (API)", count, create_rate);
    plot.add("RSS, MB", count, rss);
    plot.add("agreed state, MB", count, encoded.len() as f64 / 1e6);
    plot.add("restart to full list, s", count, restart_s);
    plot.add("fresh node has the state, s", count, fresh_s);
    plot.add("/api/tasks page p99, ms", count, page_p99);
    println!(
        "{count:>7} {create_rate:>9.0} {rss:>8.1} {:>10.2} {load_ms:>8.0} {encode_ms:>8.0} {restart_s:>9.2} {fresh_s:>9.2} {page_p50:>8.2} {page_p99:>8.2} {:>8.1} {list}",
        encoded.len() as f64 / 1e6,
        page_bytes as f64 / 1024.0,
    );
    Ok(())
}

/// Posts `per_task` runs of each task (32 in flight), then waits until the agreed state holds
/// no unfinished run: runs per second, from the first post to the last end.
async fn run_all(node: &TestNode, tasks: &[String], per_task: usize) -> Result<f64> {
    let total = tasks.len() * per_task;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for n in 0..total {
        while set.len() >= 32 {
            set.join_next().await.context("a post")???;
        }
        let (api, path) = (
            node.api.clone(),
            format!("/api/tasks/{}/run", tasks[n % tasks.len()]),
        );
        set.spawn(async move {
            let (status, body) = api.post(&path, &Value::Null).await?;
            ensure!(status == 202, "{path}: {status} {body}");
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let handle = node.handle.clone();
    until("every run ended", Duration::from_secs(600), move || {
        let idle =
            handle.state().runs.unfinished().next().is_none() && handle.active_runs().is_empty();
        async move { idle }
    })
    .await?;
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// Settings for the history rows: trivial runs, many at once, long histories.
async fn history_settings(node: &TestNode) -> Result<()> {
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["cluster"]["daily_logs"] = json!(false);
    settings["cluster"]["history_per_task"] = json!(100_000);
    settings["node"]["slots"] = json!(64);
    let (status, body) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    ensure!(status == 200, "settings: {status} {body}");
    Ok(())
}

/// Writes `count` finished runs of `tasks` into the node's history (the node is stopped).
fn seed_history(db: &Path, tasks: &[String], count: usize) -> Result<()> {
    // The stopped node's last handles let go of the database a moment after it stops.
    let t0 = Instant::now();
    let store = loop {
        match RedbStore::open(db) {
            Ok(store) => break store,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let per_task = count / tasks.len();
    let at = chrono::Utc::now() - chrono::Duration::days(1);
    for task in tasks {
        let runs: Vec<Run> = (0..per_task)
            .map(|_| {
                let mut run = Run::new(
                    TaskId(task.clone()),
                    "seeded".into(),
                    Trigger::Manual,
                    1,
                    "test-node".into(),
                );
                run.id = RunId::generate();
                run.created_at = at;
                run.started_at = Some(at);
                run.finish(Outcome::Exited { code: 0 }, at);
                run
            })
            .collect();
        store.put_runs(&runs, 100_000)?;
    }
    Ok(())
}

async fn history(plot: &mut Plot) -> Result<()> {
    // One task and an empty history: the figure the others are compared with.
    let node = TestNode::start().await?;
    history_settings(&node).await?;
    let one = create_tasks(&node.api, 0, 1).await?;
    let baseline = run_all(&node, &one, 2000).await?;
    node.stop().await;
    println!("1 task, empty history: {baseline:.0} runs/s (2,000 runs of `true`)");
    println!();
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "history",
        "store MB",
        "seed s",
        "fill r/s",
        "runs/s",
        "vs 1 task",
        "all p50",
        "all p99",
        "task p99",
        "/ p99 ms"
    );
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let node = TestNode::start_in(dir).await?;
    history_settings(&node).await?;
    let tasks = create_tasks(&node.api, 0, 1000).await?;
    node.stop().await;
    let mut seeded = 0;
    for size in sizes(&[10_000, 100_000, 1_000_000]) {
        let db = dir.join("taskmesh.redb");
        let t0 = Instant::now();
        seed_history(&db, &tasks, size - seeded)?;
        let seed_s = t0.elapsed().as_secs_f64();
        seeded = size;
        let store_mb = std::fs::metadata(&db)?.len() as f64 / 1e6;
        let node = TestNode::start_in(dir).await?;
        // The replicated ledger full: 21 runs of each task (it keeps 20 finished ones).
        let fill = run_all(&node, &tasks, 21).await?;
        let rate = run_all(&node, &tasks, 2).await?;
        let (all_p50, all_p99, _) = latency(&node.api, "/api/runs?limit=50", 100).await?;
        let further = node
            .api
            .get(&format!("/api/runs?task={}&limit=50", tasks[0]))
            .await?
            .1;
        let before = further
            .as_array()
            .and_then(|r| r.last())
            .and_then(|r| r["id"].as_str())
            .context("a page of runs")?
            .to_owned();
        let (_, task_p99, _) = latency(
            &node.api,
            &format!("/api/runs?task={}&before={before}&limit=50", tasks[0]),
            100,
        )
        .await?;
        let (_, list_p99, _) = latency(&node.api, "/", 5).await?;
        node.stop().await;
        plot.add("runs per s (1,000 tasks)", size, rate);
        plot.add("store, MB", size, store_mb);
        plot.add("page of 50 runs p99, ms", size, all_p99);
        plot.add("a task's older page p99, ms", size, task_p99);
        plot.add("task list / p99, ms", size, list_p99);
        println!(
            "{size:>9} {store_mb:>9.0} {seed_s:>9.1} {fill:>9.0} {rate:>9.0} {:>8.0}% {all_p50:>8.2} {all_p99:>8.2} {task_p99:>9.2} {list_p99:>9.1}",
            rate / baseline * 100.0
        );
    }
    Ok(())
}

/// What the `time` table reads of the node's process and data directory.
struct Sample {
    at: f64,
    ended: u64,
    failed: u64,
    rss_mb: f64,
    threads: u64,
    fds: u64,
    cpu_ticks: u64,
    data_mb: f64,
}

impl Sample {
    fn take(pid: u32, dir: &Path, at: f64, ended: u64, failed: u64) -> Result<Self> {
        Ok(Self {
            at,
            ended,
            failed,
            rss_mb: proc_stat::status_field(pid, "VmRSS:")? as f64 / 1024.0,
            threads: proc_stat::status_field(pid, "Threads:")?,
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64,
            cpu_ticks: proc_stat::cpu_ticks(pid)?,
            data_mb: dir_bytes(dir) as f64 / 1e6,
        })
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the node's executor ran to their end, and how many of them did not succeed, from its
/// metrics.
async fn runs_ended(api: &Api) -> Result<(u64, u64)> {
    let scrape = api.metrics().await?;
    let (mut ended, mut failed) = (0.0, 0.0);
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.metric == "taskmesh_runs_finished_total")
    {
        let (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)) =
            sample.value
        else {
            continue;
        };
        ended += v;
        if sample.labels.get("outcome") != Some("succeeded") {
            failed += v;
        }
    }
    Ok((ended as u64, failed as u64))
}

/// The slope of `value` over `samples` by least squares, per hour.
fn per_hour(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (
        samples.iter().map(|s| s.at).sum::<f64>() / n,
        samples.iter().map(&value).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for s in samples {
        sxy += (s.at - mx) * (value(s) - my);
        sxx += (s.at - mx) * (s.at - mx);
    }
    sxy / sxx * 3600.0
}

/// The `time` table: the release binary under a steady mixed load, a row a minute.
async fn time(minutes: u64) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("node");
    let node = Binary::start(&dir, &[]).await?;
    let api = node.api.clone();
    let mut settings = api.get("/api/settings").await?.1;
    settings["node"]["slots"] = json!(64);
    let (status, body) = api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    ensure!(status == 200, "settings: {status} {body}");
    for n in 0..20 {
        api.create_task(
            &json!({"name": format!("cron{n:02}"), "spec": {"command": ["true"]},
            "when": {"mode": "cron", "schedule": "@every 1s"}}),
        )
        .await?;
    }
    api.create_task(
        &json!({"name": "daemon", "spec": {"shell": "echo started; sleep 11; echo done"},
        "when": {"mode": "always"}}),
    )
    .await?;
    let manual = api
        .create_task(
            &json!({"name": "manual", "spec": {"shell": "echo hello", "concurrency": "allow"},
            "when": {"mode": "manual"}}),
        )
        .await?;
    println!(
        "{:>6} {:>9} {:>9} {:>8} {:>8} {:>6} {:>8} {:>8}",
        "min", "runs end", "not succ.", "RSS MB", "threads", "fds", "CPU %", "data MB"
    );
    let pid = node.child.id();
    let t0 = Instant::now();
    let mut samples = vec![Sample::take(pid, &dir, 0.0, 0, 0)?];
    let deadline = Duration::from_secs(minutes * 60);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n: u64 = 0;
    while t0.elapsed() < deadline {
        tick.tick().await;
        n += 1;
        let (status, body) = api
            .post(&format!("/api/tasks/{manual}/run"), &Value::Null)
            .await?;
        ensure!(status == 202, "execute: {status} {body}");
        if n.is_multiple_of(20) {
            // A browser on the dashboard and the runs page.
            for path in ["/", "/runs", "/api/runs?limit=50"] {
                let (status, _) = api.get(path).await?;
                ensure!(status == 200, "{path}: {status}");
            }
        }
        if n.is_multiple_of(200) {
            let r = api
                .http
                .get(format!("{}/api/events", api.base))
                .send()
                .await?;
            ensure!(r.status() == 200, "/api/events: {}", r.status());
            let _ = tokio::time::timeout(Duration::from_millis(500), r.bytes()).await;
        }
        let at = t0.elapsed().as_secs_f64();
        if at >= samples.len() as f64 * 60.0 {
            let (ended, failed) = runs_ended(&api).await?;
            let s = Sample::take(pid, &dir, at, ended, failed)?;
            let last = samples.last().context("a sample")?;
            let cpu = (s.cpu_ticks - last.cpu_ticks) as f64
                / proc_stat::ticks_per_second()
                / (s.at - last.at)
                * 100.0;
            println!(
                "{:>6.0} {:>9} {:>9} {:>8.1} {:>8} {:>6} {:>8.1} {:>8.1}",
                at / 60.0,
                s.ended,
                s.failed,
                s.rss_mb,
                s.threads,
                s.fds,
                cpu,
                s.data_mb
            );
            samples.push(s);
        }
    }
    ensure!(
        samples.last().is_some_and(|s| s.ended > 0),
        "no run ended in {minutes} minutes"
    );
    let half = &samples[samples.len() / 2..];
    println!(
        "second half, per hour: RSS {:+.1} MB, threads {:+.0}, fds {:+.0}, data {:+.1} MB ({} samples)",
        per_hour(half, |s| s.rss_mb),
        per_hour(half, |s| s.threads as f64),
        per_hour(half, |s| s.fds as f64),
        per_hour(half, |s| s.data_mb),
        half.len()
    );
    node.stop().await
}

/// Writes `plot` as `name` in the directory given with `--svg DIR`, if any.
fn write_svg(plot: &Plot, name: &str, title: &str) -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(dir) = args.windows(2).find(|w| w[0] == "--svg").map(|w| &w[1]) {
        let path = Path::new(dir).join(name);
        std::fs::write(&path, plot.svg(title))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The sizes to measure: all of them with `--full`, else all but the largest.
fn sizes(all: &[usize]) -> Vec<usize> {
    let full = std::env::args().any(|a| a == "--full");
    let keep = if full { all.len() } else { all.len() - 1 };
    all[..keep].to_vec()
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let only = |name: &str| {
        // Table names among the arguments (not the program, not the values of `--svg` and
        // `--minutes`).
        let args: Vec<String> = std::env::args().skip(1).collect();
        let named: Vec<&String> = args
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                !a.starts_with('-')
                    && (*i == 0 || !["--svg", "--minutes"].contains(&args[i - 1].as_str()))
            })
            .map(|(_, a)| a)
            .collect();
        named.is_empty() && name != "time" || named.iter().any(|a| *a == name)
    };
    let minutes: u64 = match std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--minutes")
    {
        Some(w) => w[1].parse().context("--minutes takes a whole number")?,
        None => 10,
    };
    let rt = taskmesh::runtime()?;
    rt.block_on(async {
        if only("tasks") {
            println!("== tasks (release binary; ms unless named)");
            println!(
                "{:>7} {:>9} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                "tasks",
                "create/s",
                "RSS MB",
                "state MB",
                "load",
                "encode",
                "restart s",
                "fresh s",
                "page p50",
                "page p99",
                "page KB",
                "/ p50",
                "/ p99",
                "/ KB"
            );
            let mut plot = Plot::default();
            for count in sizes(&[100, 1_000, 10_000, 100_000]) {
                tasks_row(count, &mut plot).await?;
            }
            write_svg(&plot, "scale-tasks.svg", "How cost grows with the tasks")?;
        }
        if only("history") {
            println!("== history (1,000 tasks, node in this process; ms unless named)");
            let mut plot = Plot::default();
            history(&mut plot).await?;
            write_svg(&plot, "scale-history.svg", "How cost grows with the history")?;
        }
        if only("time") {
            println!("== time ({minutes} minutes of steady load, release binary)");
            time(minutes).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(())
}
