//! The outermost layer of every answer: the `Host` allowlist (against DNS rebinding) and the
//! security headers (CSP, nosniff, referrer policy, no framing, no caching of what is not a
//! static asset).
//!
//! A rebinding page runs in the victim's browser under the attacker's name (`evil.example`)
//! resolved to the node's address; the browser then calls the node "same-origin", with
//! `Host: evil.example`. Only names the operator chose are let through: IP literals, `localhost`,
//! the machine's host name, the host of `cluster.notify.ui_url`, and `allowed_hosts` from the
//! config. The port is not checked.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::handle::NodeHandle;

pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The host names a node answers to (besides IP literals and those of the settings).
pub struct HostAllowlist {
    /// Lower case, without a trailing dot.
    names: Vec<String>,
    /// For `cluster.notify.ui_url`, which may change while the node runs.
    node: Option<NodeHandle>,
}

impl HostAllowlist {
    /// `localhost`, the machine's host name and `extra` (from `allowed_hosts`).
    pub fn new(extra: &[String], node: Option<NodeHandle>) -> Arc<Self> {
        let mut names: Vec<String> = ["localhost".to_owned(), crate::model::hostname()]
            .into_iter()
            .chain(extra.iter().cloned())
            .map(|n| normalize(&n))
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Arc::new(Self { names, node })
    }

    /// Whether `host` (a Host header's value: a name or IP literal, maybe with a port) is
    /// allowed.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_part(host) else {
            return false;
        };
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalize(name);
        if self.names.contains(&name) {
            return true;
        }
        let ui_url = self
            .node
            .as_ref()
            .and_then(|n| n.state().settings.notify.ui_url.clone());
        ui_url
            .and_then(|u| u.parse::<axum::http::Uri>().ok())
            .and_then(|u| {
                u.host()
                    .map(|h| normalize(h.trim_start_matches('[').trim_end_matches(']')))
            })
            .is_some_and(|h| h == name)
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The host of a Host header value: `name`, `name:port`, `1.2.3.4:port`, `[v6]:port`.
fn host_part(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inside
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
            .then_some(inside);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty()).then_some(name)
}

/// Middleware: refuses foreign hosts (421), then adds the security headers to every answer.
pub async fn guard(
    State(allowlist): State<Arc<HostAllowlist>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match refused_host(&allowlist, &request) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    };
    add_security_headers(response.headers_mut());
    response
}

fn refused_host(allowlist: &HostAllowlist, request: &Request) -> Option<Response> {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let message = match host {
        None => "the request has no Host header".to_owned(),
        Some(h) if allowlist.allows(&h) => return None,
        Some(h) => format!(
            "this node does not answer to the host name `{}` (DNS rebinding protection); \
             use its IP address, or add the name to `allowed_hosts` in the node's config",
            h.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        ),
    };
    Some(if request.uri().path().starts_with("/api/") {
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, message).into_response()
    } else {
        (StatusCode::MISDIRECTED_REQUEST, message).into_response()
    })
}

fn add_security_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // Static assets set their own (long) lifetime; everything else may carry secrets.
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_by_name_not_port() {
        let allow = HostAllowlist::new(&["TaskMesh.Lab.".into()], None);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:8080",
            "LOCALHOST",
            "taskmesh.lab:1",
            "taskmesh.lab.",
        ] {
            assert!(allow.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[evil]:80",
            "[::1]x",
            "localhost:http",
            "",
            ":8080",
        ] {
            assert!(!allow.allows(bad), "{bad}");
        }
    }
}
