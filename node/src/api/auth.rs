//! Who may use the UI and API. On a loopback listener: anyone on the machine. Elsewhere (or when
//! `require_login` is set): holders of the node's access token, sent as `Authorization: Bearer`,
//! or a browser session made by logging in with it at `/login`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "taskmesh_session";
/// A browser session lasts this long.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 10_000;

/// The access rules of one node.
pub struct Access {
    /// None: no login needed.
    token: Option<String>,
    sessions: RwLock<HashMap<String, Instant>>,
}

impl Access {
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            token: None,
            sessions: RwLock::default(),
        })
    }

    pub fn with_token(token: String) -> Arc<Self> {
        Arc::new(Self {
            token: Some(token),
            sessions: RwLock::default(),
        })
    }

    pub fn requires_login(&self) -> bool {
        self.token.is_some()
    }

    /// Reads the node's access token from `path`, creating a random one (mode 0600) if missing.
    pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
        if let Ok(token) = std::fs::read_to_string(path) {
            let token = token.trim().to_owned();
            if token.len() >= 32 {
                return Ok(token);
            }
        }
        let token = random_hex(32)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        Ok(token)
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
    }

    /// Whether the request carries the token or a live session.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|t| self.token_matches(t.trim())) {
            return true;
        }
        let session = cookie(headers, COOKIE);
        session.is_some_and(|s| {
            self.sessions
                .read()
                .expect("sessions lock")
                .get(s)
                .is_some_and(|at| at.elapsed() < SESSION_TTL)
        })
    }

    /// Makes a session for someone who gave the right token.
    pub fn login(&self, token: &str) -> Option<String> {
        if !self.token_matches(token.trim()) {
            return None;
        }
        let id = random_hex(32).ok()?;
        let mut sessions = self.sessions.write().expect("sessions lock");
        sessions.retain(|_, at| at.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        sessions.insert(id.clone(), Instant::now());
        Some(id)
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Paths anyone may reach: the login page, static assets, and the health check.
fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/static/") || path == "/api/health"
}

/// Middleware: lets allowed requests through; API calls get 401, pages a redirect to /login.
pub async fn require(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_public(path) || access.allows(request.headers()) {
        return next.run(request).await;
    }
    if path.starts_with("/api/") {
        return ApiError::new(StatusCode::UNAUTHORIZED, "log in: send `Authorization: Bearer <token>` (the token is in <data dir>/access-token)")
            .into_response();
    }
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Redirect::to(&format!("/login?next={}", percent_encode(target))).into_response()
}

pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after logging in: only paths on this site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/index".to_owned(),
    }
}

/// The Set-Cookie value for a new session.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_sessions() {
        let access = Access::with_token("a".repeat(64));
        let mut headers = HeaderMap::new();
        assert!(!access.allows(&headers));
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", "a".repeat(64))
                .parse()
                .expect("header"),
        );
        assert!(access.allows(&headers));
        assert!(access.login("wrong").is_none());
        let session = access.login(&"a".repeat(64)).expect("session");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={session}").parse().expect("header"),
        );
        assert!(access.allows(&headers));
        assert!(Access::open().allows(&HeaderMap::new()));
        assert_eq!(safe_next(Some("//evil.example")), "/index");
        assert_eq!(safe_next(Some("/runs/1")), "/runs/1");
    }

    #[test]
    fn the_token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("access-token");
        let a = Access::load_or_create_token(&path).expect("create");
        let b = Access::load_or_create_token(&path).expect("read");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
