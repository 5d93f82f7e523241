//! Helpers shared by the integration tests: in-process nodes on port 0 in temp dirs, an HTTP
//! client for their API, and polling with a deadline.

pub mod fake_http;
pub mod proc_stat;
pub mod webdriver;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use taskmesh::{Config, NodeHandle, Started};
use tokio_util::sync::CancellationToken;

/// A builder for the tests' HTTP clients. reqwest's TLS has no crypto provider of its own here
/// (see `taskmesh::http_client`): each client is given the node's ring configuration, trusting
/// no CA (the tests speak plain HTTP, or TLS through tokio-rustls with checks of their own).
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(taskmesh::http_client::tls_config(
        rustls::RootCertStore::empty(),
    ))
}

/// Polls `check` every 20 ms until it yields `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range, for a test that dials a port
/// before anything listens on it. A port from that range may meanwhile be given to another
/// socket bound to port 0 (another test's node), or be picked as the source port of one of the
/// dials, which then connects the dialling socket to itself.
pub fn closed_port_outside_ephemeral_range() -> Result<u16> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    let (first, last) = (low.saturating_sub(12_000).max(1024), low.saturating_sub(1));
    let span = u32::from(last - first) + 1;
    let offset = std::process::id() % span;
    for i in 0..span {
        let port = first + ((offset + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {first} and {last}")
}

/// A node running inside the test process.
pub struct TestNode {
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub api: Api,
    cancel: CancellationToken,
    started: Option<Started>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    pub async fn start() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let mut node = Self::start_in(&dir).await?;
        node._tmp = Some(tmp);
        Ok(node)
    }

    /// Starts a node on an existing data directory (a restart).
    pub async fn start_in(dir: &Path) -> Result<Self> {
        Self::start_with(dir, |_| {}).await
    }

    /// Starts a node with a changed configuration, on an existing data directory.
    pub async fn start_with(dir: &Path, change: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut config = Config {
            data_dir: dir.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: Some("test-node".into()),
            // Never multicast from the root namespace of a shared machine.
            mdns: Some(false),
            p2p_listen: "/ip4/127.0.0.1/tcp/0".into(),
            cluster_key: None,
            peers: Vec::new(),
            ..Config::default()
        };
        change(&mut config);
        let cancel = CancellationToken::new();
        let started = taskmesh::start(config, cancel.clone())
            .await
            .context("starting the node")?;
        let addr = started.addr;
        let token = access_token(dir)?;
        Ok(Self {
            handle: started.handle.clone(),
            addr,
            dir: dir.to_owned(),
            api: Api::with_token(&format!("http://{addr}"), &token),
            cancel,
            started: Some(started),
            _tmp: None,
        })
    }

    /// Tasks `id-<n>`/`t<n>` (five digits) for `n` in `from..to`, handed over as a merging
    /// cluster hands them over: 1,000 to a change, much faster than one request each.
    pub async fn adopt_tasks(&self, from: usize, to: usize) -> Result<()> {
        let consensus = self.handle.consensus().clone();
        for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
            let tasks = chunk
                .iter()
                .map(|n| taskmesh::consensus::Adopted {
                    task: taskmesh::model::Task::sample(&format!("id-{n:05}"), &format!("t{n:05}")),
                    last_fired: None,
                })
                .collect();
            consensus
                .propose(taskmesh::consensus::Change::Adopt {
                    from: "elsewhere".into(),
                    tasks,
                })
                .await?;
        }
        Ok(())
    }

    /// Shuts the node down cleanly and keeps its directory for a restart.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.cancel.cancel();
        if let Some(started) = self.started.take() {
            started.wait().await;
        }
        self._tmp.take()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The access token of the node whose data directory is `dir`.
pub fn access_token(dir: &Path) -> Result<String> {
    let path = taskmesh::Config::access_token_path_in(dir);
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the access token {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// A small JSON client for a node's REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    /// Sends the node's access token with every request.
    pub http: reqwest::Client,
}

impl Api {
    /// A client without the access token (to show what a stranger gets).
    pub fn anonymous(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: http_client().build().expect("an HTTP client"),
        }
    }

    /// A client that sends `token` as `Authorization: Bearer` with every request.
    pub fn with_token(base: &str, token: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("an access token is a valid header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Self {
            base: base.to_owned(),
            http: http_client()
                .default_headers(headers)
                .build()
                .expect("an HTTP client"),
        }
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// One page of a listing: the status, the body, and the `rel="next"` target of its `Link`
    /// header, if any.
    pub async fn page(&self, path: &str) -> Result<(u16, Value, Option<String>)> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status().as_u16();
        let next = r
            .headers()
            .get(reqwest::header::LINK)
            .map(|v| v.to_str().map(str::to_owned))
            .transpose()?
            .map(|link| {
                link.strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                    .map(str::to_owned)
                    .with_context(|| format!("a Link header that names no next page: {link}"))
            })
            .transpose()?;
        Ok((status, r.json().await.unwrap_or(Value::Null), next))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a task and returns its id.
    pub async fn create_task(&self, body: &Value) -> Result<String> {
        let (status, task) = self.post("/api/tasks", body).await?;
        if status != 201 {
            bail!("creating the task answered {status}: {task}");
        }
        Ok(task["id"].as_str().context("task id")?.to_owned())
    }

    /// Execute now; returns the new run.
    pub async fn execute(&self, task: &str) -> Result<Value> {
        let (status, run) = self
            .post(&format!("/api/tasks/{task}/run"), &Value::Null)
            .await?;
        if status != 202 {
            bail!("executing {task} answered {status}: {run}");
        }
        Ok(run)
    }

    /// `GET /metrics`, read back by a Prometheus text parser; fails unless it answers `200`.
    pub async fn metrics(&self) -> Result<prometheus_parse::Scrape> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        if status != 200 {
            bail!("/metrics answered {status}: {text}");
        }
        parse_metrics(&text)
    }

    pub async fn runs_of(&self, task_id: &str) -> Result<Vec<Value>> {
        let (_, runs) = self
            .get(&format!("/api/runs?task={task_id}&limit=1000"))
            .await?;
        Ok(runs.as_array().cloned().unwrap_or_default())
    }
}

/// A scrape of `/metrics` (its text) read back by a Prometheus text parser.
pub fn parse_metrics(text: &str) -> Result<prometheus_parse::Scrape> {
    Ok(prometheus_parse::Scrape::parse(
        text.lines().map(|l| Ok(l.to_owned())),
    )?)
}

/// The value of the counter or gauge sample `metric` (a counter's sample ends in `_total`) whose
/// labels include `labels`.
pub fn metric_value(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
