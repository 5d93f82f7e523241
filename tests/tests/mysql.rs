//! The MySQL sink against a real, private MariaDB (started and stopped by `scripts/mariadb`):
//! every run arrives once, across an outage of the server and a restart of the node, with its
//! log lines; bad settings give clear errors; the password never shows.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use taskmesh_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// A private MariaDB in a temp dir, on its own loopback port, stopped on drop.
struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    password: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mariadb")
}

impl MariaDb {
    /// Initialises and starts a server; fails (never skips) when MariaDB is not installed.
    async fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let db = Self {
            dir: tempfile::tempdir()?,
            port,
            password: format!("pw-{}-{}", std::process::id(), nanos.subsec_nanos()),
        };
        db.up().await?;
        Ok(db)
    }

    async fn up(&self) -> Result<()> {
        self.script("start", Some(self.port)).await
    }

    async fn down(&self) -> Result<()> {
        self.script("stop", None).await
    }

    async fn script(&self, command: &str, port: Option<u16>) -> Result<()> {
        let mut cmd = tokio::process::Command::new(script());
        cmd.arg(command).arg(self.dir.path().join("server"));
        if let Some(port) = port {
            cmd.arg(port.to_string());
        }
        let out = cmd
            .env("MARIADB_PASSWORD", &self.password)
            .output()
            .await
            .context("running scripts/mariadb")?;
        if !out.status.success() {
            bail!(
                "scripts/mariadb {command} failed (the MySQL tests need the Debian package \
                 mariadb-server; scripts/install-deps installs it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn settings(&self, log_lines: bool) -> Value {
        json!({
            "host": "127.0.0.1", "port": self.port, "user": "taskmesh",
            "password": self.password, "database": "taskmesh", "log_lines": log_lines
        })
    }

    fn target(&self) -> String {
        format!("taskmesh@127.0.0.1:{}/taskmesh", self.port)
    }

    async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("taskmesh"))
            .pass(Some(self.password.clone()))
            .db_name(Some("taskmesh"))
            .prefer_socket(false);
        let mut conn = mysql_async::Conn::new(opts).await?;
        let rows = conn.query(sql).await?;
        conn.disconnect().await?;
        Ok(rows)
    }

    /// run id → status, as MariaDB has them (empty before the sink created the table).
    async fn runs(&self) -> BTreeMap<String, String> {
        self.query::<(String, String)>("SELECT run_id, status FROM taskmesh_runs")
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .arg(self.dir.path().join("server"))
            .status();
    }
}

/// Everything the nodes in this test binary log, to look for the password in.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,taskmesh=debug")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().expect("log buffer")).into_owned()
}

async fn put_mysql(node: &TestNode, mysql: Value) -> Result<Value> {
    let mut settings = node.api.get("/api/settings").await?.1;
    settings["cluster"]["mysql"] = mysql;
    let (status, saved) = node
        .api
        .send(reqwest::Method::PUT, "/api/settings", Some(&settings))
        .await?;
    if status != 200 {
        bail!("saving the settings answered {status}: {saved}");
    }
    Ok(saved)
}

async fn sink(node: &TestNode) -> Value {
    node.api
        .get("/api/sink")
        .await
        .map(|(_, v)| v)
        .unwrap_or(Value::Null)
}

fn is_final(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running"))
}

/// Starts `n` runs and waits until the node has them all final.
async fn run_and_finish(node: &TestNode, task: &str, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let run = node.api.execute(task).await?;
        ids.push(run["id"].as_str().context("run id")?.to_owned());
    }
    wait_for("the runs to finish", DEADLINE, || async {
        let runs = node.api.runs_of(task).await.ok()?;
        ids.iter()
            .all(|id| runs.iter().any(|r| r["id"] == *id && is_final(r)))
            .then_some(())
    })
    .await?;
    Ok(ids)
}

/// Waits until MariaDB has every run of `task` the node lists, each in the node's final status.
async fn wait_until_delivered(node: &TestNode, db: &MariaDb, task: &str) -> Result<usize> {
    wait_for("MariaDB to have every run", DEADLINE, || async {
        let api = node.api.runs_of(task).await.ok()?;
        if api.is_empty() || !api.iter().all(is_final) {
            return None;
        }
        let rows = db.runs().await;
        let all = api.iter().all(|r| {
            r["id"]
                .as_str()
                .is_some_and(|id| rows.get(id).map(String::as_str) == r["status"].as_str())
        });
        (all && rows.len() == api.len()).then_some(rows.len())
    })
    .await
}

#[tokio::test]
async fn every_run_reaches_mariadb_once_across_an_outage_and_a_restart() -> Result<()> {
    let logs = captured_logs();
    let db = MariaDb::start().await?;
    let data = tempfile::tempdir()?;
    let node = TestNode::start_in(data.path()).await?;
    let saved = put_mysql(&node, db.settings(true)).await?;
    assert_eq!(saved["cluster"]["mysql"]["password"], "********", "{saved}");
    let (_, shown) = node.api.get("/api/settings").await?;
    assert!(!shown.to_string().contains(&db.password), "{shown}");
    let task = node
        .api
        .create_task(&json!({
            "name": "three-lines",
            "spec": {
                "shell": "echo one; echo two; sleep 0.3; echo three",
                "concurrency": "allow"
            },
            "when": {"mode": "manual"}
        }))
        .await?;

    run_and_finish(&node, &task, 3).await?;
    assert_eq!(wait_until_delivered(&node, &db, &task).await?, 3);

    // MariaDB goes away while runs start and end.
    for _ in 0..4 {
        node.api.execute(&task).await?;
    }
    db.down().await?;
    run_and_finish(&node, &task, 2).await?;
    let failing = wait_for("the sink to report the outage", DEADLINE, || async {
        let s = sink(&node).await;
        (s["failing"] == true && s["pending"].as_u64() > Some(0)).then_some(s)
    })
    .await?;
    let error = failing["last_error"].as_str().context("last_error")?;
    assert!(error.contains(&db.target()), "{error}");
    // /metrics tells the same: failed attempts, failing, runs waiting.
    wait_for("/metrics to show the outage", DEADLINE, || async {
        let scrape = node.api.metrics().await.ok()?;
        let value = |metric| taskmesh_tests::metric_value(&scrape, metric, &[]);
        (value("taskmesh_sink_failures_total").is_some_and(|n| n >= 1.0)
            && value("taskmesh_sink_failing") == Some(1.0)
            && value("taskmesh_sink_pending_runs").is_some_and(|n| n > 0.0))
        .then_some(())
    })
    .await?;
    assert!(!error.contains(&db.password), "{error}");
    let page = node
        .api
        .http
        .get(format!("{}/node", node.api.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains(&db.target()) && page.contains("runs waiting"));
    assert!(!page.contains(&db.password));

    db.up().await?;
    assert_eq!(wait_until_delivered(&node, &db, &task).await?, 9);
    wait_for("the outbox to empty", DEADLINE, || async {
        let s = sink(&node).await;
        (s["pending"] == 0 && s["failing"] == false).then_some(())
    })
    .await?;
    wait_for("/metrics to show the recovery", DEADLINE, || async {
        let scrape = node.api.metrics().await.ok()?;
        let value = |metric| taskmesh_tests::metric_value(&scrape, metric, &[]);
        // Each of the 9 runs was written at least once (a run may be written per state).
        (value("taskmesh_sink_delivered_runs_total").is_some_and(|n| n >= 9.0)
            && value("taskmesh_sink_failing") == Some(0.0)
            && value("taskmesh_sink_pending_runs") == Some(0.0))
        .then_some(())
    })
    .await?;

    // Another outage, and the node restarts before MariaDB is back: the outbox keeps the runs.
    db.down().await?;
    run_and_finish(&node, &task, 2).await?;
    wait_for("the runs to wait in the outbox", DEADLINE, || async {
        (sink(&node).await["pending"].as_u64() >= Some(2)).then_some(())
    })
    .await?;
    node.stop().await;
    db.up().await?;
    let node = TestNode::start_in(data.path()).await?;
    assert_eq!(wait_until_delivered(&node, &db, &task).await?, 11);

    // None twice: one row per run, and each run's lines once, in order.
    let counts: Vec<(u64, u64)> = db
        .query("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM taskmesh_runs")
        .await?;
    assert_eq!(counts, vec![(11, 11)]);
    let lines: Vec<(String, u64, u64, u64)> = db
        .query(
            "SELECT run_id, COUNT(*), MIN(line_no), MAX(line_no) FROM taskmesh_log_lines \
             GROUP BY run_id",
        )
        .await?;
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(
        lines.iter().all(|l| (l.1, l.2, l.3) == (3, 1, 3)),
        "{lines:?}"
    );
    let first: Vec<String> = db
        .query(&format!(
            "SELECT line FROM taskmesh_log_lines WHERE run_id = '{}' ORDER BY line_no",
            lines[0].0
        ))
        .await?;
    assert_eq!(first, ["one", "two", "three"]);
    let row: Vec<(String, String, u32, Option<i32>, String)> = db
        .query(&format!(
            "SELECT task_name, node, attempt, exit_code, triggered_by FROM taskmesh_runs \
             WHERE run_id = '{}'",
            lines[0].0
        ))
        .await?;
    assert_eq!(
        row,
        [(
            "three-lines".into(),
            "test-node".into(),
            1,
            Some(0),
            "manual".into()
        )]
    );
    node.stop().await;

    let text = log_text();
    assert!(!text.contains(&db.password), "the password is in the log");
    let failing = text
        .lines()
        .filter(|l| l.contains("MySQL sink failing") && l.contains(&db.target()))
        .count();
    assert_eq!(failing, 2, "one warning per outage, not one per try");
    assert!(
        text.lines()
            .any(|l| l.contains("MySQL sink recovered") && l.contains(&db.target()))
    );
    drop(logs);
    Ok(())
}

#[tokio::test]
async fn bad_mysql_settings_give_clear_errors_and_lose_no_run() -> Result<()> {
    captured_logs();
    let db = MariaDb::start().await?;
    let node = TestNode::start().await?;
    let task = node
        .api
        .create_task(
            &json!({"name": "quick", "spec": {"command": ["true"], "concurrency": "allow"}, "when": {"mode": "manual"}}),
        )
        .await?;
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut wrong_password = db.settings(false);
    wrong_password["password"] = json!("not-the-password");
    let mut unreachable = db.settings(false);
    unreachable["port"] = json!(closed);
    let mut no_database = db.settings(false);
    no_database["database"] = json!("nosuchdb");
    let cases = [
        (
            wrong_password,
            vec![db.target(), "Access denied".into()],
            "not-the-password",
        ),
        (
            unreachable,
            vec![format!(
                "connecting to MySQL taskmesh@127.0.0.1:{closed}/taskmesh"
            )],
            db.password.as_str(),
        ),
        (no_database, vec!["nosuchdb".into()], db.password.as_str()),
    ];
    let mut runs = 0;
    for (settings, expected, secret) in cases {
        put_mysql(&node, settings).await?;
        run_and_finish(&node, &task, 1).await?;
        runs += 1;
        let status = wait_for("the sink to report the error", DEADLINE, || async {
            let s = sink(&node).await;
            let error = s["last_error"].as_str()?.to_owned();
            (s["failing"] == true && expected.iter().all(|e| error.contains(e))).then_some(s)
        })
        .await?;
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(!error.contains(secret), "{error}");
        assert!(!log_text().contains(secret), "a password is in the log");
    }
    // Fixed settings: everything staged meanwhile arrives.
    put_mysql(&node, db.settings(false)).await?;
    assert_eq!(wait_until_delivered(&node, &db, &task).await?, runs);
    assert_eq!(node.api.get("/api/health").await?.0, 200);
    node.stop().await;
    assert!(
        !log_text().contains(&db.password),
        "the password is in the log"
    );
    Ok(())
}
