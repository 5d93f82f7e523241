//! Who may use the UI and API: holders of the node's access token or of a named token the
//! cluster keeps (`State::tokens`, by hash), sent as `Authorization: Bearer`, or a browser
//! session made at `/login` (with either, or with a one-time login link). Loopback is no
//! exception: other local users are attackers too. A read-only named token, and a session it
//! made, may read but not change anything, and not read secrets. `/metrics` also takes the
//! node's read-only metrics token (`node.metrics_token`), when one is set, and only `/metrics`
//! does.
//!
//! Invariants: the token lives in `<data dir>/access-token` (0600, written atomically on
//! rotation); sessions and login codes live in memory only, are bounded in number, expire, and
//! all die when the token is rotated; a session made with a named token dies with the token.
//! Failed logins are counted per client address; an address with [`MAX_FAILURES`] failures in
//! [`FAILURE_WINDOW`] is refused (429) before its next guess is even checked.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::ApiError;
use crate::model::NodeSettings;
use tokio::sync::watch;

/// The session cookie's name.
pub const COOKIE: &str = "taskmesh_session";
/// Browser sessions alive at once; the oldest is dropped for a new one beyond it.
const MAX_SESSIONS: usize = 10_000;
/// A login link works once, within this time.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// Unused login links kept at once; the oldest is dropped for a new one beyond it.
const MAX_CODES: usize = 100;
/// Failed logins an address may make within [`FAILURE_WINDOW`] before it is refused.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures are remembered at once.
const MAX_TRACKED: usize = 4096;

/// How a node's access is set up.
#[derive(Debug, Clone)]
pub struct AccessOptions {
    /// `<data dir>/access-token`.
    pub token_path: PathBuf,
    pub session_ttl: Duration,
    /// Cookies get `Secure` (the UI is served over TLS).
    pub secure_cookies: bool,
    /// The node's UI address (`http://127.0.0.1:8080`), for login links.
    pub ui_url: String,
    /// The node's settings, whose `metrics_token` (when set) also opens [`METRICS_PATH`].
    pub node: Option<watch::Receiver<NodeSettings>>,
    /// The replicated state, whose named tokens are let in too.
    pub state: Option<watch::Receiver<Arc<crate::consensus::State>>>,
}

/// Whose credentials a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The named token's name; `None` for the node's own access token (or a login link).
    pub token: Option<String>,
    /// It may read everything but secrets, and change nothing.
    pub read_only: bool,
    /// The named token's hash, so that a session ends with its token.
    hash: Option<String>,
}

impl Principal {
    /// The node's own access token: everything.
    const NODE: Principal = Principal {
        token: None,
        read_only: false,
        hash: None,
    };
}

/// A session made at the login page: its id (the cookie's value) and the named token it was
/// made with (`None` for the node's own token or a login link), and whether that token only
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub token: Option<String>,
    pub read_only: bool,
}

/// SHA-256 of a token, as the state keeps a named token: 64 lowercase hex digits.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref())
}

/// `bytes` as lowercase hex digits.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one path the metrics token opens.
pub const METRICS_PATH: &str = "/metrics";

/// The access rules of one node.
pub struct Access {
    options: AccessOptions,
    token: RwLock<String>,
    /// Session id → when it expires, and whose it is.
    sessions: Mutex<HashMap<String, (Instant, Principal)>>,
    /// Login code → when it expires.
    codes: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// Why a login did not make a session.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoginRefused {
    #[error("that is not this node's access token")]
    WrongToken,
    #[error("the token '{name}' expired at {at}; ask for a new one")]
    Expired {
        name: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[error(
        "this login link is not valid: it was used already, has expired, or is from another node (run `taskmesh login-url` for a new one)"
    )]
    BadCode,
    #[error("too many failed logins from {client}; try again in {} s", retry_after.as_secs())]
    Limited {
        client: IpAddr,
        retry_after: Duration,
    },
    #[error("no random bytes: {0}")]
    Random(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading or creating the access token {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making a random access token: {0}")]
    Random(String),
}

impl Access {
    /// Loads the token file (creating it, 0600, if missing or too short).
    pub fn start(options: AccessOptions) -> Result<Arc<Self>, TokenError> {
        let token = load_or_create_token(&options.token_path)?;
        Ok(Arc::new(Self {
            options,
            token: RwLock::new(token),
            sessions: Mutex::default(),
            codes: Mutex::default(),
            failures: Mutex::default(),
        }))
    }

    pub fn options(&self) -> &AccessOptions {
        &self.options
    }

    /// Whose token `given` is: the node's own, or a named token the cluster keeps. A wrong
    /// token counts as a failed login of `client`; an expired one is refused as such, not
    /// counted (its holder had it, and guesses nothing).
    fn principal_of(&self, given: &str, client: IpAddr) -> Result<Principal, LoginRefused> {
        let own = {
            let token = self.token.read().expect("token lock");
            bool::from(token.as_bytes().ct_eq(given.trim().as_bytes()))
        };
        if own {
            return Ok(Principal::NODE);
        }
        let named = self.options.state.as_ref().and_then(|state| {
            let state = state.borrow();
            if state.tokens.is_empty() {
                return None;
            }
            let hash = token_hash(given);
            state
                .tokens
                .values()
                .find(|t| bool::from(t.hash.as_bytes().ct_eq(hash.as_bytes())))
                .cloned()
        });
        match named {
            None => Err(self.failed(client, LoginRefused::WrongToken)),
            Some(t) => match t.expires.filter(|_| t.expired(chrono::Utc::now())) {
                Some(at) => {
                    warn!(client = %client, token = %t.name, "login with an expired token");
                    Err(LoginRefused::Expired { name: t.name, at })
                }
                None => Ok(Principal {
                    token: Some(t.name),
                    read_only: t.read_only,
                    hash: Some(t.hash),
                }),
            },
        }
    }

    /// Whether `principal`'s token still works: a named token may have been removed, or have
    /// expired.
    fn still_valid(&self, principal: &Principal) -> bool {
        let (Some(name), Some(hash)) = (&principal.token, &principal.hash) else {
            return true;
        };
        self.options.state.as_ref().is_some_and(|s| {
            s.borrow()
                .tokens
                .get(name)
                .is_some_and(|t| &t.hash == hash && !t.expired(chrono::Utc::now()))
        })
    }

    /// Whose token or live session the request carries; a wrong bearer token counts as a
    /// failed login of `client`.
    pub fn check(&self, headers: &HeaderMap, client: IpAddr) -> Result<Principal, Denied> {
        if let Some(given) = bearer(headers) {
            self.limited(client).map_err(Denied::Login)?;
            return self.principal_of(given, client).map_err(Denied::Login);
        }
        if let Some(principal) = self.session_of(headers) {
            return Ok(principal);
        }
        Err(Denied::NoCredentials)
    }

    /// Like [`Access::check`], for [`METRICS_PATH`]: the metrics token, when the node has one,
    /// is let in too (a wrong one counts as a failed login like a wrong access token).
    pub fn check_metrics(&self, headers: &HeaderMap, client: IpAddr) -> Result<Principal, Denied> {
        if let Some(given) = bearer(headers) {
            self.limited(client).map_err(Denied::Login)?;
            if self.metrics_token_matches(given) {
                return Ok(Principal {
                    token: None,
                    read_only: true,
                    hash: None,
                });
            }
        }
        self.check(headers, client)
    }

    fn metrics_token_matches(&self, given: &str) -> bool {
        let Some(node) = &self.options.node else {
            return false;
        };
        let settings = node.borrow();
        match settings.metrics_token.as_deref() {
            // The mask is what the settings page shows in its place, never a token.
            Some(token) if token != crate::model::MASK && !token.trim().is_empty() => {
                bool::from(token.trim().as_bytes().ct_eq(given.trim().as_bytes()))
            }
            _ => false,
        }
    }

    /// Whose live session the request carries, if any.
    fn session_of(&self, headers: &HeaderMap) -> Option<Principal> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(id) {
            Some((expires, principal))
                if *expires > Instant::now() && self.still_valid(principal) =>
            {
                Some(principal.clone())
            }
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Makes a session for someone who gave the node's token or a named one.
    pub fn login_with_token(&self, token: &str, client: IpAddr) -> Result<Session, LoginRefused> {
        self.limited(client)?;
        let principal = self.principal_of(token, client)?;
        self.new_session(principal)
    }

    /// Makes a session for someone who brought an unused, unexpired login code; the code is
    /// used up.
    pub fn login_with_code(&self, code: &str, client: IpAddr) -> Result<Session, LoginRefused> {
        self.limited(client)?;
        let valid = {
            let mut codes = self.codes.lock().expect("codes lock");
            codes
                .remove(code)
                .is_some_and(|expires| expires > Instant::now())
        };
        if !valid {
            return Err(self.failed(client, LoginRefused::BadCode));
        }
        self.new_session(Principal::NODE)
    }

    fn new_session(&self, principal: Principal) -> Result<Session, LoginRefused> {
        let id = random_hex(32).map_err(LoginRefused::Random)?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, (expires, _)| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (expires, _))| *expires)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        let session = Session {
            id: id.clone(),
            token: principal.token.clone(),
            read_only: principal.read_only,
        };
        sessions.insert(id, (now + self.options.session_ttl, principal));
        Ok(session)
    }

    /// Ends the session the request carries, if any.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.sessions.lock().expect("sessions lock").remove(id);
        }
    }

    /// A new one-time login code.
    pub fn new_code(&self) -> Result<String, LoginRefused> {
        let code = random_hex(32).map_err(LoginRefused::Random)?;
        let now = Instant::now();
        let mut codes = self.codes.lock().expect("codes lock");
        codes.retain(|_, expires| *expires > now);
        if codes.len() >= MAX_CODES
            && let Some(oldest) = codes
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(c, _)| c.clone())
        {
            codes.remove(&oldest);
        }
        codes.insert(code.clone(), now + CODE_TTL);
        Ok(code)
    }

    /// The login link for `code`.
    pub fn login_url(&self, code: &str) -> String {
        format!(
            "{}/login?code={code}",
            self.options.ui_url.trim_end_matches('/')
        )
    }

    /// Replaces the token (the file first, atomically, 0600), and ends every session and
    /// unused login link: the old token stops working at once.
    pub fn rotate(&self) -> Result<(), TokenError> {
        let token = random_hex(32).map_err(TokenError::Random)?;
        write_token(&self.options.token_path, &token).map_err(|source| TokenError::Io {
            path: self.options.token_path.clone(),
            source,
        })?;
        *self.token.write().expect("token lock") = token;
        self.sessions.lock().expect("sessions lock").clear();
        self.codes.lock().expect("codes lock").clear();
        Ok(())
    }

    /// Refuses an address that failed too often lately.
    fn limited(&self, client: IpAddr) -> Result<(), LoginRefused> {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("failures lock");
        let Some(times) = failures.get_mut(&client) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            times.pop_front();
        }
        if times.len() < MAX_FAILURES {
            return Ok(());
        }
        let oldest = *times.front().expect("full");
        let retry_after = (oldest + FAILURE_WINDOW).saturating_duration_since(now);
        Err(LoginRefused::Limited {
            client,
            retry_after: retry_after.max(Duration::from_secs(1)),
        })
    }

    /// Counts and logs a failed login (never what was given).
    fn failed(&self, client: IpAddr, why: LoginRefused) -> LoginRefused {
        warn!(client = %client, reason = %why, "login failed");
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&client) {
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
            if failures.len() >= MAX_TRACKED
                && let Some(stalest) = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(ip, _)| *ip)
            {
                failures.remove(&stalest);
            }
        }
        let times = failures.entry(client).or_default();
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
        why
    }

    /// The Set-Cookie value for a new session.
    pub fn session_cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
            self.options.session_ttl.as_secs(),
            if self.options.secure_cookies {
                "; Secure"
            } else {
                ""
            }
        )
    }

    /// The Set-Cookie value that deletes the session cookie.
    pub fn cleared_cookie(&self) -> String {
        format!(
            "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
            if self.options.secure_cookies {
                "; Secure"
            } else {
                ""
            }
        )
    }
}

/// Why a request was not let in.
#[derive(Debug)]
pub enum Denied {
    /// Neither a token nor a session.
    NoCredentials,
    /// A wrong token, or too many wrong ones.
    Login(LoginRefused),
}

impl LoginRefused {
    /// The answer to a refused API call: 401, or 429 with Retry-After.
    pub fn api_response(&self) -> Response {
        match self {
            LoginRefused::Limited { retry_after, .. } => (
                [(header::RETRY_AFTER, retry_after.as_secs().to_string())],
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            )
                .into_response(),
            LoginRefused::Random(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string()).into_response()
            }
            _ => ApiError::new(StatusCode::UNAUTHORIZED, self.to_string()).into_response(),
        }
    }
}

/// How a request that passed [`Access::check`] authenticated: with the token (`cli` when the
/// taskmesh command sent it, else `api`), or with a browser session (`ui`).
fn via(headers: &HeaderMap) -> &'static str {
    let cli = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("taskmesh-cli/"));
    match (bearer(headers).is_some(), cli) {
        (true, true) => "cli",
        (true, false) => "api",
        (false, _) => "ui",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Reads the node's access token from `path`, creating a random one (mode 0600) if missing.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(token) if token.trim().len() >= 32 => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the access token file was readable by others; made it 0600 (consider `taskmesh token rotate`)");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            return Ok(token.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let token = random_hex(32).map_err(TokenError::Random)?;
    write_token(path, &token).map_err(io)?;
    Ok(token)
}

/// Writes the token to a new file created 0600 beside `path`, then renames it over `path`.
fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "access-token".into());
    let tmp = path.with_file_name(format!(".{name}.new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `bytes` random bytes from the operating system, as hex.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| e.to_string())?;
    Ok(hex(&buf))
}

/// The client's address (set by the web server); unspecified when the request did not come
/// through it (router tests).
pub fn client_of(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Paths anyone may reach: the login page, static assets, and the health check (which tells
/// nothing secret: the node's name, version, start time and counts).
fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/logout" | "/api/health") || path.starts_with("/static/")
}

/// Middleware: lets allowed requests through; API calls get 401 (or 429), pages a redirect to
/// /login.
pub async fn require(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_public(path) {
        return next.run(request).await;
    }
    let client = client_of(&request);
    let checked = match path == METRICS_PATH {
        true => access.check_metrics(request.headers(), client),
        false => access.check(request.headers(), client),
    };
    let denied = match checked {
        Ok(principal) => {
            if principal.read_only
                && let Some(why) = beyond_reading(&request)
            {
                let name = principal.token.as_deref().unwrap_or("metrics");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("the token '{name}' is read-only: it cannot {why}"),
                )
                .into_response();
            }
            let caller = crate::caller::Caller {
                via: via(request.headers()),
                client: client.to_string(),
                token: principal.token,
                read_only: principal.read_only,
            };
            return crate::caller::scope(caller, next.run(request)).await;
        }
        Err(denied) => denied,
    };
    if path.starts_with("/api/") || path == METRICS_PATH {
        return match denied {
            Denied::Login(refused) => refused.api_response(),
            Denied::NoCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "log in: send `Authorization: Bearer <token>` (the token is in <data dir>/access-token)",
            )
            .into_response(),
        };
    }
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    redirect(&format!(
        "/login?next={}",
        utf8_percent_encode(target, NEXT_ENCODED)
    ))
}

/// Why a read-only token may not make `request`, if it may not: anything but reading, and
/// reading a secret (the cluster key, settings exported with their secrets).
fn beyond_reading(request: &Request) -> Option<&'static str> {
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Some("change anything");
    }
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    let with_secrets = query
        .split('&')
        .any(|pair| matches!(pair, "secrets=true" | "secrets=1" | "secrets"));
    match path {
        "/api/cluster-key" => Some("read the cluster key"),
        "/api/settings/export" if with_secrets => Some("export the settings with their secrets"),
        _ => None,
    }
}

/// A 303 to a local path; a path that cannot be a header value goes to /index instead.
pub fn redirect(to: &str) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/index"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// What the `next` parameter of a login redirect percent-encodes: all but the unreserved
/// characters of RFC 3986 and `/`. The page's own `?`, `&` and `=` are encoded, so its query
/// stays inside `next`.
const NEXT_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Where to go after logging in: only paths on this site. Refused (→ `/index`): anything not
/// starting with one `/`, `//` and `/\` (other hosts to a browser), and any control character,
/// whitespace, backslash or non-ASCII byte (browsers drop tabs and newlines, so `/\t/evil` would
/// be `//evil`; CR/LF would split the header).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/index".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;

    fn access(dir: &Path) -> Arc<Access> {
        Access::start(AccessOptions {
            token_path: dir.join("access-token"),
            session_ttl: Duration::from_secs(60),
            secure_cookies: false,
            ui_url: "http://127.0.0.1:8080".into(),
            node: None,
            state: None,
        })
        .expect("access")
    }

    fn with_bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        headers
    }

    fn with_session(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={id}").parse().expect("header"),
        );
        headers
    }

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn tokens_sessions_and_codes() {
        let dir = tempfile::tempdir().expect("tmp");
        let access = access(dir.path());
        let token = std::fs::read_to_string(dir.path().join("access-token")).expect("token");
        let token = token.trim();
        assert!(matches!(
            access.check(&HeaderMap::new(), HOME),
            Err(Denied::NoCredentials)
        ));
        assert!(access.check(&with_bearer(token), HOME).is_ok());
        assert_eq!(
            access.login_with_token("wrong", HOME),
            Err(LoginRefused::WrongToken)
        );
        let session = access.login_with_token(token, HOME).expect("session");
        assert!(access.check(&with_session(&session.id), HOME).is_ok());
        access.logout(&with_session(&session.id));
        assert!(access.check(&with_session(&session.id), HOME).is_err());

        let code = access.new_code().expect("code");
        assert!(
            access
                .login_url(&code)
                .ends_with(&format!("/login?code={code}"))
        );
        let session = access.login_with_code(&code, HOME).expect("first use");
        assert_eq!(
            access.login_with_code(&code, HOME),
            Err(LoginRefused::BadCode),
            "a code works once"
        );
        access.rotate().expect("rotate");
        assert!(access.check(&with_session(&session.id), HOME).is_err());
        assert!(access.check(&with_bearer(token), HOME).is_err());
        let new = std::fs::read_to_string(dir.path().join("access-token")).expect("token");
        assert_ne!(new.trim(), token);
        assert!(access.check(&with_bearer(new.trim()), HOME).is_ok());
    }

    #[test]
    fn named_tokens_open_until_removed_or_expired_and_their_sessions_end_with_them() {
        use crate::consensus::State;
        use crate::model::NamedToken;
        let dir = tempfile::tempdir().expect("tmp");
        let now = chrono::Utc::now();
        let named = |name: &str, token: &str, expires| NamedToken {
            name: name.into(),
            read_only: name == "viewer",
            hash: token_hash(token),
            created: now - chrono::Duration::days(1),
            expires,
        };
        let with = |tokens: Vec<NamedToken>| {
            Arc::new(State {
                tokens: tokens.into_iter().map(|t| (t.name.clone(), t)).collect(),
                ..State::default()
            })
        };
        let viewer = named("viewer", "viewer-secret", None);
        let old = named("old", "old-secret", Some(now - chrono::Duration::hours(1)));
        let soon = named(
            "soon",
            "soon-secret",
            Some(now + chrono::Duration::hours(1)),
        );
        let (state, watched) = watch::channel(with(vec![viewer.clone(), old, soon.clone()]));
        let access = Access::start(AccessOptions {
            state: Some(watched),
            ..access(dir.path()).options().clone()
        })
        .expect("access");
        let principal = access
            .check(&with_bearer("viewer-secret"), HOME)
            .expect("let in");
        assert_eq!(
            (principal.token.as_deref(), principal.read_only),
            (Some("viewer"), true)
        );
        let full = access.check(&with_bearer("soon-secret"), HOME).expect("in");
        assert!(!full.read_only);
        // Expired: refused as such, and not counted as a guess (five would lock the address).
        for _ in 0..MAX_FAILURES + 1 {
            match access.check(&with_bearer("old-secret"), HOME) {
                Err(Denied::Login(LoginRefused::Expired { name, .. })) => assert_eq!(name, "old"),
                other => panic!("an expired token got {other:?}"),
            }
        }
        assert!(access.check(&with_bearer("viewer-secret"), HOME).is_ok());
        // A session made with a named token ends when the token goes.
        let session = access
            .login_with_token("viewer-secret", HOME)
            .expect("session");
        assert_eq!(
            access
                .check(&with_session(&session.id), HOME)
                .expect("alive")
                .token
                .as_deref(),
            Some("viewer")
        );
        state.send_replace(with(vec![soon]));
        assert!(access.check(&with_session(&session.id), HOME).is_err());
        assert!(matches!(
            access.check(&with_bearer("viewer-secret"), HOME),
            Err(Denied::Login(LoginRefused::WrongToken))
        ));
        // A token made again under the same name is another token: the old session stays ended.
        state.send_replace(with(vec![named("viewer", "new-secret", None)]));
        assert!(access.check(&with_session(&session.id), HOME).is_err());
    }

    #[test]
    fn the_metrics_token_opens_metrics_only_and_only_when_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let (node, settings) = watch::channel(NodeSettings::default());
        let access = Access::start(AccessOptions {
            node: Some(settings),
            ..access(dir.path()).options().clone()
        })
        .expect("access");
        let scrape = "scrape-0123456789abcdef";
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        // Not set: the would-be token is a wrong one (and counts as a failure).
        assert!(matches!(
            access.check_metrics(&with_bearer(scrape), other),
            Err(Denied::Login(LoginRefused::WrongToken))
        ));
        node.send_modify(|n| n.metrics_token = Some(scrape.into()));
        assert!(access.check_metrics(&with_bearer(scrape), HOME).is_ok());
        assert!(
            matches!(
                access.check(&with_bearer(scrape), HOME),
                Err(Denied::Login(LoginRefused::WrongToken))
            ),
            "the metrics token opens nothing else"
        );
        assert!(access.check_metrics(&with_bearer("wrong"), HOME).is_err());
        // The access token still opens /metrics.
        let token = std::fs::read_to_string(dir.path().join("access-token")).expect("token");
        assert!(
            access
                .check_metrics(&with_bearer(token.trim()), HOME)
                .is_ok()
        );
        // The mask shown in its place is no token.
        node.send_modify(|n| n.metrics_token = Some(crate::model::MASK.into()));
        assert!(
            access
                .check_metrics(&with_bearer(crate::model::MASK), HOME)
                .is_err()
        );
    }

    #[test]
    fn failed_logins_are_limited_per_address() {
        let dir = tempfile::tempdir().expect("tmp");
        let access = access(dir.path());
        let token = std::fs::read_to_string(dir.path().join("access-token")).expect("token");
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                access.login_with_token("wrong", HOME),
                Err(LoginRefused::WrongToken)
            );
        }
        // Even the right token is not checked while the address is limited.
        let refused = access.login_with_token(token.trim(), HOME);
        assert!(
            matches!(refused, Err(LoginRefused::Limited { retry_after, .. }) if retry_after <= FAILURE_WINDOW),
            "{refused:?}"
        );
        assert!(access.login_with_token(token.trim(), other).is_ok());
    }

    #[test]
    fn only_local_paths_are_next() {
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\\evil.example",
            "\\\\evil",
            "/a\r\nSet-Cookie: x=1",
            "/ spaced",
            "https://evil.example",
            "/é",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/index", "{bad:?}");
        }
        assert_eq!(safe_next(Some("/runs/1?x=2")), "/runs/1?x=2");
        assert_eq!(safe_next(None), "/index");
    }

    #[test]
    fn next_carries_the_whole_page_address() {
        let page = "/runs/1?x=a b&y=é#top";
        let encoded = utf8_percent_encode(page, NEXT_ENCODED).to_string();
        assert_eq!(encoded, "/runs/1%3Fx%3Da%20b%26y%3D%C3%A9%23top");
        let Query(back) = Query::<std::collections::HashMap<String, String>>::try_from_uri(
            &format!("/login?next={encoded}&code=1")
                .parse()
                .expect("uri"),
        )
        .expect("query");
        assert_eq!(back["next"], page);
    }

    #[test]
    fn the_token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("access-token");
        let a = load_or_create_token(&path).expect("create");
        let b = load_or_create_token(&path).expect("read");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
