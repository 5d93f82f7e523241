//! The CLI's side of the REST API: requests, readable output, and errors that say what failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, Response, StatusCode, header};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::ErrorBody;
use crate::api::openapi::{ChannelTested, LoginLink, NewToken, TokenRotated};
use crate::http_client;
use crate::model::{Activity, Run, Task, TokenInfo, When};
use taskmesh_core::view::{CronPause, Health, NodeDrain, PeersView, TaskListItem};

use super::{AddArgs, Remote, SettingsCommand, TaskCommand, TokenSource};

mod apply;
mod runs;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node at {url}: {reason} (is `taskmesh run` running? see --url)")]
    Connect { url: String, reason: String },
    #[error(
        "the node at {url} presented a certificate this CLI does not trust: {reason}\n  trusted here: {trusted}\n  pass --ca-cert FILE (or TASKMESH_CA_CERT) with the node's certificate or its CA, or --data-dir (TASKMESH_DATA_DIR) naming the node's data directory, whose tls-cert.pem is then trusted"
    )]
    Untrusted {
        url: String,
        reason: String,
        trusted: String,
    },
    #[error(
        "the node at {url} does not answer over TLS ({reason}): it serves plain HTTP here, so use an http:// URL"
    )]
    NotTls { url: String, reason: String },
    #[error(
        "the node at {url} does not answer plain HTTP ({reason}): it may serve HTTPS (`taskmesh run --tls`), so try an https:// URL"
    )]
    NotPlain { url: String, reason: String },
    #[error("--ca-cert {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("{0}")]
    Api(String),
    /// The node refused the request as the cluster is now (`409`): nothing was started.
    #[error("{status}: {reason}{}", hint(refused.as_deref()))]
    Refused {
        status: StatusCode,
        reason: String,
        /// The reason's kind (`no_node`, `still_running`), when the node said it.
        refused: Option<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// What the command wants the process to exit with.
pub type ExitCode = i32;

/// The exit status when the node refused the request (`409`, e.g. `task run` of a task that no
/// live node can run, or whose `forbid` run is still running): nothing was started. Other
/// errors exit with 1.
pub const REFUSED: ExitCode = 3;

/// What the user can do about a refusal of this kind.
fn hint(refused: Option<&str>) -> &'static str {
    match refused {
        Some("no_node") => {
            "\n  it can run once a node whose dependencies include the task's is live (`node.dependencies` in that node's settings)"
        }
        Some("still_running") => {
            "\n  it can run once that run ends; `spec.concurrency` `allow` or `replace` lets runs overlap or replaces the earlier one"
        }
        _ => "",
    }
}

/// Answers (JSON) are read up to this size.
const MAX_ANSWER: usize = 64 << 20;

struct Api {
    base: String,
    http: reqwest::Client,
    /// The access token, or why it could not be read (said when the node answers 401).
    token: Result<String, String>,
    /// What is trusted for an https:// node besides the system's CAs (said when the node's
    /// certificate is not trusted).
    trusted: String,
}

impl Api {
    fn new(remote: &Remote) -> Result<Self, ClientError> {
        let base = remote.url.trim_end_matches('/').to_owned();
        let (roots, trusted) = if base.starts_with("https://") {
            trust(remote)?
        } else {
            (rustls::RootCertStore::empty(), String::new())
        };
        let http = http_client::builder(roots)
            .user_agent(concat!("taskmesh-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Usage(crate::error_text::error_text(&e)))?;
        Ok(Self {
            base,
            http,
            token: read_token(&remote.token_source(std::env::var("TASKMESH_TOKEN").ok())),
            trusted,
        })
    }

    /// Sends a request (with the token, and `body` with its content type); a success answer, or
    /// the node's refusal or the failure to reach it, said for a person.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Response, ClientError> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| ClientError::Usage(format!("--url {}: not a URL: {e}", self.base)))?;
        let mut request = self.http.request(method, url);
        if let Ok(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Option<ErrorBody> = read_body(response)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if status == StatusCode::UNAUTHORIZED {
            if let Err(why) = &self.token {
                return Err(ClientError::Api(format!(
                    "{status}: the node wants its access token, and {why}"
                )));
            }
        }
        let Some(body) = body else {
            return Err(ClientError::Api(format!("{status}: request failed")));
        };
        if status == StatusCode::CONFLICT {
            return Err(ClientError::Refused {
                status,
                reason: body.error,
                refused: body.refused.map(String::from),
            });
        }
        let mut message = format!("{status}: {}", body.error);
        for d in &body.details {
            let at = match (d.line, d.column) {
                (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                _ => String::new(),
            };
            message.push_str(&format!("\n  {}{at}: {}", d.path, d.message));
        }
        Err(ClientError::Api(message))
    }

    /// Why the node could not be reached: an untrusted certificate, the wrong scheme, or the
    /// connection itself.
    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        let url = self.base.clone();
        let kind = failure_kind(&error, self.base.starts_with("https://"));
        let request_error = error.is_builder();
        // The error names the node's URL, and so does the message around the reason.
        let reason = crate::error_text::error_text(&error.without_url());
        if request_error {
            return ClientError::Usage(format!("{url}: {reason}"));
        }
        match kind {
            Failure::Certificate(reason) => ClientError::Untrusted {
                url,
                reason,
                trusted: self.trusted.clone(),
            },
            Failure::NotTls => ClientError::NotTls { url, reason },
            Failure::NotPlain => ClientError::NotPlain { url, reason },
            Failure::Other => ClientError::Connect { url, reason },
        }
    }

    /// Sends `body` as JSON; the answer's JSON.
    async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.call(method, path, body).await
    }

    /// Sends `body` as JSON; the answer read as `T`, the type the API serializes (core's model
    /// and views), so that a change of that type breaks the CLI where it is built.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let response = self.send(method, path, body).await?;
        answer_as(response, path).await
    }

    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.write(Method::GET, path, None).await
    }

    /// A `GET` answer read as `T`.
    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// Every item of a paged listing: the pages from `path` on, following each answer's
    /// `Link: <…>; rel="next"`.
    async fn get_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(path) = next.take() {
            let response = self.send(Method::GET, &path, None).await?;
            next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page);
            let page: Vec<T> = answer_as(response, &path).await?;
            items.extend(page);
        }
        Ok(items)
    }
}

/// The body of the answer to `path`.
async fn answer_bytes(response: Response, path: &str) -> Result<Vec<u8>, ClientError> {
    read_body(response)
        .await
        .map_err(|e| ClientError::Api(format!("reading the answer to {path}: {e}")))
}

/// The answer to `path` read as `T`.
async fn answer_as<T: DeserializeOwned>(response: Response, path: &str) -> Result<T, ClientError> {
    let bytes = answer_bytes(response, path).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Api(format!("unreadable answer to {path}: {e}")))
}

/// The path of a `Link` header's `rel="next"` target.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// An answer's body, up to [`MAX_ANSWER`].
async fn read_body(response: Response) -> Result<Vec<u8>, String> {
    http_client::body_up_to(response, MAX_ANSWER)
        .await
        .map_err(|e| crate::error_text::error_text(&e))
}

/// The certificates an https:// node may present, and a sentence naming what is trusted besides
/// the system's CAs: the node's own certificate (`tls-cert.pem` in the data directory) when it
/// can be read, and `--ca-cert`, which must be readable.
fn trust(remote: &Remote) -> Result<(rustls::RootCertStore, String), ClientError> {
    let mut roots = http_client::system_roots();
    let mut trusted = vec![format!("{} system CA certificates", roots.len())];
    let (own, _) = crate::api::tls::self_signed_paths(&remote.node_data_dir());
    let own_note = match std::fs::read(&own) {
        Ok(pem) => match certificates(&pem)
            .and_then(|c| http_client::add_roots(&mut roots, c).map_err(|e| e.to_string()))
        {
            Ok(_) => format!("the node's certificate {}", own.display()),
            Err(e) => format!("not {}, which is not a certificate: {e}", own.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("not {}, which does not exist", own.display())
        }
        Err(e) => format!("not {}, which cannot be read: {e}", own.display()),
    };
    trusted.push(own_note);
    if let Some(path) = &remote.ca_cert {
        let ca_error = |reason: String| ClientError::CaCert {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = certificates(&pem).map_err(ca_error)?;
        http_client::add_roots(&mut roots, certs).map_err(|e| ca_error(e.to_string()))?;
        trusted.push(format!("--ca-cert {}", path.display()));
    }
    Ok((roots, trusted.join(", ")))
}

/// The certificates in a PEM text; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// What kind of failure kept a request from its answer.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The node's certificate is not trusted (or not for this name); why.
    Certificate(String),
    /// An https:// URL, and the node does not speak TLS.
    NotTls,
    /// An http:// URL, and the node closed or answered something that is not HTTP.
    NotPlain,
    Other,
}

/// Classifies a failed request by the TLS or HTTP error among its causes.
fn failure_kind(error: &(dyn std::error::Error + 'static), https: bool) -> Failure {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => Failure::Certificate(tls.to_string()),
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    Failure::NotTls
                }
                _ => Failure::Other,
            };
        }
        if let Some(http) = e.downcast_ref::<hyper::Error>() {
            if !https && (http.is_incomplete_message() || http.is_parse()) {
                return Failure::NotPlain;
            }
        }
        // An io::Error's `source()` skips the error it wraps; step into that one instead.
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    Failure::Other
}

/// The token from its source, or a sentence saying why there is none.
fn read_token(source: &TokenSource) -> Result<String, String> {
    let path = match source {
        TokenSource::Given(token) => return Ok(token.clone()),
        TokenSource::File(path) => path,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "{} is not readable by this user (run as the node's user, or pass --token-file)",
            path.display()
        )),
        Err(e) => Err(format!(
            "{} cannot be read: {e} (pass --data-dir or --token-file, or set TASKMESH_TOKEN)",
            path.display()
        )),
    }
}

/// What a path segment (a task or channel name) percent-encodes: all but the unreserved
/// characters of RFC 3986.
const SEGMENT_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` as one path segment.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT_ENCODED).to_string()
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Io {
        context: format!("reading {}", path.display()),
        source,
    })
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn when_text(when: &When) -> String {
    match when {
        When::Cron {
            schedule, timezone, ..
        } => format!("cron {schedule} ({timezone})"),
        When::Manual => "manual".into(),
        When::Always => "always".into(),
    }
}

/// Runs a task or settings command against the node's API.
/// Runs a client command; the exit status it wants. A refusal by the node is said on stderr
/// here and exits with [`REFUSED`]; other errors are the caller's to say (they exit with 1).
pub async fn run_command(command: super::Command) -> Result<ExitCode, ClientError> {
    match command_result(command).await {
        Err(refused @ ClientError::Refused { .. }) => {
            eprintln!("error: {refused}");
            Ok(REFUSED)
        }
        other => other,
    }
}

async fn command_result(command: super::Command) -> Result<ExitCode, ClientError> {
    match command {
        super::Command::Run(_) => Err(ClientError::Usage(
            "`run` starts a node; it is not a client command".into(),
        )),
        super::Command::Completions { .. } | super::Command::Man => Err(ClientError::Usage(
            "`completions` and `man` print without a node".into(),
        )),
        super::Command::Service(c) => {
            super::service(c)?;
            Ok(0)
        }
        super::Command::Task(c) => task(c).await,
        super::Command::Runs(c) => runs::runs(c).await,
        super::Command::Status { remote } => status(&remote).await,
        super::Command::Node(c) => node(c).await,
        super::Command::Activity { limit, remote } => {
            let api = Api::new(&remote)?;
            let changes: Vec<Activity> = api.read(&format!("/api/activity?limit={limit}")).await?;
            if remote.output == super::Output::Json {
                print_json(&serde_json::to_value(&changes).unwrap_or_default());
                return Ok(0);
            }
            println!(
                "{:<20} {:<12} {:<28} {:<12} BY",
                "WHEN", "WHAT", "TO", "DETAIL"
            );
            for a in &changes {
                println!(
                    "{:<20} {:<12} {:<28} {:<12} {}",
                    iso(&a.origin.at),
                    a.what,
                    a.subject,
                    a.detail,
                    a.origin.who(),
                );
            }
            Ok(0)
        }
        super::Command::Cron(c) => {
            let (verb, remote) = match c {
                super::CronCommand::Pause { remote } => ("pause", remote),
                super::CronCommand::Resume { remote } => ("resume", remote),
            };
            let api = Api::new(&remote)?;
            let pause: CronPause = api
                .call(Method::POST, &format!("/api/cron/{verb}"), None)
                .await?;
            match (remote.output, pause.since) {
                (super::Output::Json, _) => {
                    print_json(&serde_json::to_value(&pause).unwrap_or_default())
                }
                (_, Some(since)) => println!("cron paused since {}", iso(&since)),
                (_, None) => println!("cron runs"),
            }
            Ok(0)
        }
        super::Command::Settings(c) => settings(c).await,
        super::Command::Notify(super::NotifyCommand::Test { channel, remote }) => {
            let api = Api::new(&remote)?;
            let answer: ChannelTested = api
                .call(
                    Method::POST,
                    &format!("/api/channels/{}/test", enc(&channel)),
                    None,
                )
                .await?;
            println!("test message delivered to {channel} ({})", answer.kind);
            Ok(0)
        }
        super::Command::LoginUrl { remote } => {
            let api = Api::new(&remote)?;
            let link: LoginLink = api.call(Method::POST, "/api/login-links", None).await?;
            println!("{}", link.url);
            Ok(0)
        }
        super::Command::Token(super::TokenCommand::Rotate { remote }) => {
            let api = Api::new(&remote)?;
            let answer: TokenRotated = api.call(Method::POST, "/api/token/rotate", None).await?;
            println!(
                "access token rotated: the new one is in {} on the node; every browser session ended",
                answer.token_file
            );
            Ok(0)
        }
        super::Command::Token(super::TokenCommand::Add {
            name,
            read_only,
            expires_in,
            remote,
        }) => {
            let api = Api::new(&remote)?;
            let body = serde_json::json!({
                "name": name,
                "read_only": read_only,
                "expires_in": expires_in.map(|d| d.to_string()),
            });
            let made: NewToken = api.call(Method::POST, "/api/tokens", Some(body)).await?;
            if remote.output == super::Output::Json {
                print_json(&serde_json::to_value(&made).unwrap_or_default());
                return Ok(0);
            }
            println!("{}", made.token);
            eprintln!(
                "token '{}' made ({}{}); it is shown this once, keep it: send it as `Authorization: Bearer <token>`, or give it to the CLI in TASKMESH_TOKEN or --token-file",
                made.name,
                if made.read_only {
                    "read-only"
                } else {
                    "full rights"
                },
                made.expires
                    .map(|at| format!(", until {}", iso(&at)))
                    .unwrap_or_default()
            );
            Ok(0)
        }
        super::Command::Token(super::TokenCommand::Ls { remote }) => {
            let api = Api::new(&remote)?;
            let tokens: Vec<TokenInfo> = api.read("/api/tokens").await?;
            if remote.output == super::Output::Json {
                print_json(&serde_json::to_value(&tokens).unwrap_or_default());
                return Ok(0);
            }
            println!("{:<32} {:<10} {:<20} EXPIRES", "NAME", "RIGHTS", "CREATED");
            let now = chrono::Utc::now();
            for t in &tokens {
                let rights = if t.read_only { "read-only" } else { "full" };
                let expires = match t.expires {
                    None => "never".to_owned(),
                    Some(at) if at <= now => format!("{} (expired)", iso(&at)),
                    Some(at) => iso(&at),
                };
                println!(
                    "{:<32} {:<10} {:<20} {expires}",
                    t.name,
                    rights,
                    iso(&t.created)
                );
            }
            Ok(0)
        }
        super::Command::Token(super::TokenCommand::Rm { name, remote }) => {
            let api = Api::new(&remote)?;
            api.send(Method::DELETE, &format!("/api/tokens/{}", enc(&name)), None)
                .await?;
            println!("token '{name}' removed: it no longer works on any node");
            Ok(0)
        }
        super::Command::Key(super::KeyCommand::Gen) => {
            let key = crate::mesh::ClusterKey::generate().map_err(|source| ClientError::Io {
                context: "reading random bytes".into(),
                source,
            })?;
            println!("{key}");
            Ok(0)
        }
    }
}

/// `taskmesh node drain|undrain`.
async fn node(command: super::NodeCommand) -> Result<ExitCode, ClientError> {
    let (key, drained, wait, remote) = match command {
        super::NodeCommand::Drain { node, wait, remote } => (node, true, wait, remote),
        super::NodeCommand::Undrain { node, remote } => (node, false, false, remote),
    };
    let api = Api::new(&remote)?;
    let key = match key {
        Some(key) => key,
        None => {
            let peers: PeersView = api.read("/api/peers?limit=1").await?;
            peers.this.peer_id.ok_or_else(|| {
                ClientError::Api("the node has no p2p endpoint, so no PeerId to drain".into())
            })?
        }
    };
    let verb = if drained { "drain" } else { "undrain" };
    let path = format!("/api/peers/{}/", enc(&key));
    let mut drain: NodeDrain = api
        .call(Method::POST, &format!("{path}{verb}"), None)
        .await?;
    loop {
        if remote.output == super::Output::Json {
            print_json(&serde_json::to_value(&drain).unwrap_or_default());
        } else {
            println!("{}", drain_text(&drain));
        }
        if !wait || drain.complete() {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain = api.read(&format!("{path}drain")).await?;
    }
}

/// "lab-2 (12D3…) drained: 2 runs still running, always-tasks still held: web".
fn drain_text(drain: &NodeDrain) -> String {
    let name = drain.name.as_deref().unwrap_or("?");
    if !drain.drained {
        return format!("{name} ({}) takes runs", drain.peer_id);
    }
    let mut left = Vec::new();
    if drain.unfinished_runs > 0 {
        left.push(format!("{} runs still running", drain.unfinished_runs));
    }
    if !drain.always_tasks.is_empty() {
        left.push(format!(
            "always-tasks still held: {}",
            drain.always_tasks.join(", ")
        ));
    }
    match left.is_empty() {
        true => format!("{name} ({}) drained: nothing runs there", drain.peer_id),
        false => format!("{name} ({}) drained: {}", drain.peer_id, left.join(", ")),
    }
}

/// `taskmesh status`: what `/api/health`, `/api/peers` and the unfinished runs say, for people
/// or (`--output json`) as one object.
async fn status(remote: &super::Remote) -> Result<ExitCode, ClientError> {
    let api = Api::new(remote)?;
    let health: Health = api.read("/api/health").await?;
    let peers: PeersView = api.read("/api/peers?limit=1000").await?;
    let running: Vec<Run> = api.read("/api/runs?status=running&limit=1000").await?;
    let queued: Vec<Run> = api.read("/api/runs?status=queued&limit=1000").await?;
    if remote.output == super::Output::Json {
        print_json(&serde_json::json!({
            "health": health,
            "this": peers.this,
            "cluster": peers.cluster,
            "peers": peers.peers,
            "running": running,
            "queued": queued,
        }));
        return Ok(0);
    }
    let this = &peers.this;
    let cluster = &peers.cluster;
    println!(
        "node     {} ({}), taskmesh {}, up since {}",
        this.name,
        this.peer_id.as_deref().unwrap_or("no p2p endpoint"),
        health.version,
        health
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let members = &cluster.members;
    let name_of = |peer_id: &str| {
        members
            .iter()
            .find(|m| m.peer_id == peer_id)
            .and_then(|m| m.name.as_deref())
            .unwrap_or(peer_id)
            .to_owned()
    };
    match &cluster.cluster {
        Some(id) => println!(
            "cluster  {id}, term {}, {} here, leader {}",
            cluster.term,
            cluster.role,
            cluster
                .leader
                .as_deref()
                .map_or("none (no quorum)".to_owned(), name_of),
        ),
        None => println!("cluster  not joined yet"),
    }
    let voters = members.iter().filter(|m| m.voter).count();
    let down: Vec<String> = members
        .iter()
        .filter(|m| !m.live)
        .map(|m| name_of(&m.peer_id))
        .collect();
    println!(
        "members  {voters} voters, {} learners{}",
        members.len() - voters,
        if down.is_empty() {
            ", all live".to_owned()
        } else {
            format!(", down: {}", down.join(", "))
        }
    );
    let drained: Vec<String> = members
        .iter()
        .filter(|m| m.drained)
        .map(|m| name_of(&m.peer_id))
        .collect();
    if !drained.is_empty() {
        println!("drained  {}", drained.join(", "));
    }
    if let Some(since) = cluster.cron_paused_since {
        println!("cron     paused since {}", iso(&since));
    }
    println!("peers    {} live", peers.peers.len());
    for p in &peers.peers {
        let a = &p.announcement;
        println!(
            "         {:<20} {}/{} running, load {:.2}",
            a.name, a.running, a.slots_total, a.load,
        );
    }
    let runs: Vec<&Run> = running.iter().chain(&queued).collect();
    println!("runs     {} running or queued", runs.len());
    for r in runs {
        println!(
            "         {:<20} {:<8} on {:<16} run {}",
            r.task_name,
            r.status.to_string(),
            Some(r.node.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or("(waiting)"),
            r.id,
        );
    }
    Ok(0)
}

async fn task(command: TaskCommand) -> Result<ExitCode, ClientError> {
    match command {
        TaskCommand::Ls { label, remote } => {
            let api = Api::new(&remote)?;
            let label = label
                .map(|l| format!("&label={}", enc(&l)))
                .unwrap_or_default();
            // Each task with its newest run, from the ledger's index (one read for the list).
            let tasks: Vec<TaskListItem> = api
                .get_all(&format!("/api/tasks?last_run=true{label}"))
                .await?;
            if remote.output == super::Output::Json {
                print_json(&serde_json::to_value(&tasks).unwrap_or_default());
                return Ok(0);
            }
            println!("{:<24} {:<36} {:<8} LAST RUN", "NAME", "WHEN", "ENABLED");
            for TaskListItem { task: t, last_run } in &tasks {
                let last = last_run
                    .iter()
                    .flatten()
                    .map(|r| format!("{} {}", r.status, iso(&r.created_at)))
                    .next()
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<36} {:<8} {last}",
                    t.name,
                    when_text(&t.when),
                    if t.enabled { "yes" } else { "no" },
                );
            }
            Ok(0)
        }
        TaskCommand::Show { task, remote } => {
            let api = Api::new(&remote)?;
            let t: Task = api.read(&format!("/api/tasks/{}", enc(&task))).await?;
            print_json(&serde_json::to_value(&t).unwrap_or_default());
            let runs: Vec<Run> = api
                .read(&format!("/api/runs?task={}&limit=10", enc(&t.id.0)))
                .await?;
            if !runs.is_empty() {
                println!("\nrecent runs:");
                for r in &runs {
                    println!(
                        "  {}  {:<10} {:<18} exit {}",
                        r.id,
                        r.status.to_string(),
                        iso(&r.created_at),
                        r.exit_code.map_or("-".into(), |c| c.to_string())
                    );
                }
            }
            Ok(0)
        }
        TaskCommand::Add(args) => add(args).await,
        TaskCommand::Edit { task, file, remote } => {
            let api = Api::new(&remote)?;
            let current: Task = api.read(&format!("/api/tasks/{}", enc(&task))).await?;
            let text = match file {
                Some(path) => read(&path)?,
                None => edit_in_editor(&editable(&current))?,
            };
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| ClientError::Usage(format!("the edited task is not JSON: {e}")))?;
            let saved: Task = api
                .call(
                    Method::PUT,
                    &format!("/api/tasks/{}", enc(&current.id.0)),
                    Some(body),
                )
                .await?;
            println!("saved {}", saved.name);
            Ok(0)
        }
        TaskCommand::Run {
            task,
            follow,
            params,
            remote,
        } => {
            let api = Api::new(&remote)?;
            let body = match params.is_empty() {
                true => None,
                false => Some(json!({ "parameters": parameters(&params)? })),
            };
            let run: Run = api
                .call(
                    Method::POST,
                    &format!("/api/tasks/{}/run", enc(&task)),
                    body,
                )
                .await?;
            let id = run.id.0;
            if !follow {
                println!("{id}");
                return Ok(0);
            }
            eprintln!("run {id} of {task}");
            runs::follow_log(&api, &id).await
        }
        TaskCommand::Rm { task, remote } => {
            let api = Api::new(&remote)?;
            let removed: Task = api
                .call(Method::DELETE, &format!("/api/tasks/{}", enc(&task)), None)
                .await?;
            println!("removed {}", removed.name);
            Ok(0)
        }
        TaskCommand::Enable { task, remote } => set_enabled(&remote, &task, true).await,
        TaskCommand::Disable { task, remote } => set_enabled(&remote, &task, false).await,
        TaskCommand::Log {
            task,
            follow,
            remote,
        } => runs::task_log(&remote, &task, follow).await,
        TaskCommand::Export { out, remote } => apply::export(&remote, out.as_deref()).await,
        TaskCommand::Apply {
            file,
            prune,
            dry_run,
            remote,
        } => apply::apply(&remote, &file, prune, dry_run).await,
    }
}

/// `-p NAME=VALUE` arguments as the API's parameters (each value a string).
fn parameters(given: &[String]) -> Result<serde_json::Map<String, Value>, ClientError> {
    given
        .iter()
        .map(|p| match p.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), json!(value))),
            _ => Err(ClientError::Usage(format!(
                "-p {p}: write a parameter as NAME=VALUE"
            ))),
        })
        .collect()
}

async fn set_enabled(remote: &Remote, task: &str, enabled: bool) -> Result<ExitCode, ClientError> {
    let api = Api::new(remote)?;
    let action = if enabled { "enable" } else { "disable" };
    let saved: Task = api
        .call(
            Method::POST,
            &format!("/api/tasks/{}/{action}", enc(task)),
            None,
        )
        .await?;
    println!("{} {action}d", saved.name);
    Ok(0)
}

/// The fields of a task a user edits (what the API takes back).
fn editable(task: &Task) -> Value {
    json!({
        "name": task.name,
        "description": task.description,
        "labels": task.labels,
        "spec": task.spec,
        "when": task.when,
        "placement": task.placement,
        "exit_rules": task.exit_rules,
        "enabled": task.enabled,
    })
}

/// A time as the API writes it, to the second.
fn iso(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn edit_in_editor(task: &Value) -> Result<String, ClientError> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| ClientError::Io { context, source }
    };
    // A new file with an unguessable name, private from its creation: in a folder every user
    // can write to, a name another user guessed could be a link to a file of root's choosing.
    let suffix = crate::api::auth::random_hex(8)
        .map_err(|e| ClientError::Usage(format!("reading random bytes: {e}")))?;
    let path = std::env::temp_dir().join(format!("taskmesh-edit-{suffix}.json"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("creating the edit file"))?;
        file.write_all(
            serde_json::to_string_pretty(task)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(io("writing the edit file"))?;
    }
    let status = std::process::Command::new(&editor)
        .arg(&path)
        .status()
        .map_err(io(&format!("starting {editor}")))?;
    let text = std::fs::read_to_string(&path).map_err(io("reading the edit file"));
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(ClientError::Usage(format!(
            "{editor} exited with {status}; nothing saved"
        )));
    }
    text
}

async fn add(args: AddArgs) -> Result<ExitCode, ClientError> {
    let api = Api::new(&args.remote)?;
    let body = match &args.file {
        Some(path) => {
            let text = read(path)?;
            serde_json::from_str(&text)
                .map_err(|e| ClientError::Usage(format!("{}: not JSON: {e}", path.display())))?
        }
        None => {
            let name = args
                .name
                .clone()
                .ok_or_else(|| ClientError::Usage("give the task a name (or use --file)".into()))?;
            let spec = match (&args.shell, args.argv.is_empty()) {
                (Some(script), true) => json!({ "shell": script }),
                (None, false) => json!({ "command": args.argv }),
                _ => {
                    return Err(ClientError::Usage(
                        "say what to run: --shell 'script' or -- program args…".into(),
                    ));
                }
            };
            let when = match (&args.cron, args.always) {
                (Some(schedule), _) => {
                    json!({ "mode": "cron", "schedule": schedule, "timezone": args.timezone })
                }
                (None, true) => json!({ "mode": "always" }),
                (None, false) => json!({ "mode": "manual" }),
            };
            json!({
                "name": name,
                "description": args.description.clone().unwrap_or_default(),
                "labels": args.labels,
                "spec": spec,
                "when": when,
            })
        }
    };
    let task: Task = api.call(Method::POST, "/api/tasks", Some(body)).await?;
    println!("added {} ({})", task.name, task.id);
    Ok(0)
}

async fn settings(command: SettingsCommand) -> Result<ExitCode, ClientError> {
    match command {
        SettingsCommand::Export {
            secrets,
            file,
            remote,
        } => {
            let api = Api::new(&remote)?;
            let settings = api
                .get(&format!("/api/settings/export?secrets={secrets}"))
                .await?;
            let text = serde_json::to_string_pretty(&settings).unwrap_or_default() + "\n";
            match file {
                Some(path) => std::fs::write(&path, text).map_err(|source| ClientError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        SettingsCommand::Import { file, remote } => {
            let api = Api::new(&remote)?;
            let text = read(&file)?;
            api.send(
                Method::POST,
                "/api/settings/import",
                Some(("application/json", text.into_bytes())),
            )
            .await?;
            println!("imported {}", file.display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// clap checks a command line's shape only when a command is parsed (two arguments of one
    /// name panic then): every subcommand is checked here instead.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn the_next_page_is_read_from_a_link_header() {
        let cases = [
            (
                r#"</api/tasks?after=a&limit=2>; rel="next""#,
                Some("/api/tasks?after=a&limit=2"),
            ),
            (r#"</x>; rel="prev", </y>; rel="next""#, Some("/y")),
            (r#"</x>; rel="prev""#, None),
            ("garbage", None),
        ];
        for (link, want) in cases {
            assert_eq!(next_page(link).as_deref(), want, "{link}");
        }
    }

    fn remote(token_file: Option<&str>, data_dir: Option<&str>) -> Remote {
        Remote {
            url: "http://127.0.0.1:8080".into(),
            token_file: token_file.map(PathBuf::from),
            data_dir: data_dir.map(PathBuf::from),
            ca_cert: None,
            output: crate::cli::Output::Text,
        }
    }

    #[test]
    fn the_token_comes_from_the_flag_then_the_environment_then_the_data_dir() {
        let cases = [
            (
                remote(Some("/t"), Some("/d")),
                Some("env"),
                TokenSource::File("/t".into()),
            ),
            (
                remote(None, Some("/d")),
                Some(" env "),
                TokenSource::Given("env".into()),
            ),
            (
                remote(None, Some("/d")),
                Some(""),
                TokenSource::File("/d/access-token".into()),
            ),
            (
                remote(None, Some("/d")),
                None,
                TokenSource::File("/d/access-token".into()),
            ),
        ];
        for (remote, env, want) in cases {
            assert_eq!(remote.token_source(env.map(str::to_owned)), want, "{env:?}");
        }
    }

    #[test]
    fn a_missing_token_file_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("access-token");
        let why = read_token(&TokenSource::File(path.clone())).expect_err("missing");
        assert!(why.contains(&path.display().to_string()), "{why}");
        std::fs::write(&path, "abc\n").expect("write");
        assert_eq!(read_token(&TokenSource::File(path)), Ok("abc".into()));
    }

    #[test]
    fn a_failed_request_is_told_by_the_tls_error_among_its_causes() {
        use std::io::{Error, ErrorKind};
        let wrapped = |inner: rustls::Error| {
            // As the TLS connector hands it over: an io::Error around tokio-rustls' io::Error.
            Error::other(Error::new(ErrorKind::InvalidData, inner))
        };
        let untrusted = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let not_tls = wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        let refused = Error::new(ErrorKind::ConnectionRefused, "refused");
        let cases: [(&Error, Failure); 3] = [
            (
                &untrusted,
                Failure::Certificate("invalid peer certificate: UnknownIssuer".into()),
            ),
            (&not_tls, Failure::NotTls),
            (&refused, Failure::Other),
        ];
        for (error, want) in cases {
            assert_eq!(failure_kind(error, true), want, "{error}");
        }
    }

    #[test]
    fn a_name_is_one_path_segment() {
        assert_eq!(enc("nightly backup"), "nightly%20backup");
        assert_eq!(enc("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(enc("grüße-1.0_~"), "gr%C3%BC%C3%9Fe-1.0_~");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_why() {
        assert!(
            certificates(b"root:x:0:0::/root:/bin/sh\n")
                .expect_err("no PEM")
                .contains("no certificate")
        );
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        assert_eq!(
            certificates(made.cert.pem().as_bytes())
                .expect("a certificate")
                .len(),
            1
        );
    }
}
