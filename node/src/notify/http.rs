//! The notifier's HTTP client: JSON POSTs over HTTP or HTTPS (the crate's client, trusting the
//! system's CA certificates), each with a time limit.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tracing::warn;

/// Answers are read up to this size.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Clone)]
pub struct Http {
    client: crate::https_client::Client<Full<Bytes>>,
}

impl Http {
    pub fn new() -> Self {
        let roots = crate::https_client::system_roots();
        if roots.is_empty() {
            warn!(
                "no CA certificates found; HTTPS notifications will fail (install ca-certificates)"
            );
        }
        Self {
            client: crate::https_client::client(roots),
        }
    }

    /// POSTs `body` as JSON; the answer's status and text, or why there is none (without the
    /// URL, which may hold a token).
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
        limit: Duration,
    ) -> Result<(hyper::StatusCode, String), String> {
        let uri: hyper::Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
        let mut request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("taskmesh/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| crate::error_text::error_text(&e))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", limit.as_secs()))?
    }
}
