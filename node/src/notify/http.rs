//! The notifier's HTTP client: JSON POSTs over HTTP or HTTPS (the crate's client, trusting the
//! system's CA certificates), each with a time limit. Its errors never name the URL, which may
//! hold a token (Telegram's `/bot<token>/`, a webhook's path).

use std::time::Duration;

use reqwest::StatusCode;
use tracing::warn;

use crate::http_client::{self, BodyError};

/// Answers are read up to this size.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Self {
        let roots = http_client::system_roots();
        if roots.is_empty() {
            warn!(
                "no CA certificates found; HTTPS notifications will fail (install ca-certificates)"
            );
        }
        let client = http_client::builder(roots)
            .user_agent(concat!("taskmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the notifier's HTTP client builds: its TLS configuration is given");
        Self { client }
    }

    /// POSTs `body` as JSON; the answer's status and text, or why there is none (without the
    /// URL, which may hold a token).
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
        limit: Duration,
    ) -> Result<(StatusCode, String), String> {
        let url = reqwest::Url::parse(url).map_err(|_| "not a valid URL".to_owned())?;
        let mut request = self.client.post(url).json(body).timeout(limit);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let failed = |e: reqwest::Error| match e.is_timeout() {
            true => format!("no answer within {} s", limit.as_secs()),
            false => crate::error_text::error_text(&e.without_url()),
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let body = http_client::body_up_to(response, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                BodyError::Read(e) if e.is_timeout() => failed(e),
                e => crate::error_text::error_text(&e),
            })?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that reads one request and answers `answer` (nothing when `None`,
    /// holding the connection open); its URL.
    async fn one_answer(answer: Option<&'static str>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            match answer {
                Some(answer) => {
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        url
    }

    #[tokio::test]
    async fn a_redirect_is_an_answer_not_followed() {
        let url = one_answer(Some(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let (status, _) = Http::new()
            .post_json(&url, None, &serde_json::json!({}), Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(status, StatusCode::FOUND);
    }

    #[tokio::test]
    async fn a_silent_receiver_is_a_time_out_that_names_no_url() {
        let url = one_answer(None).await;
        let error = Http::new()
            .post_json(
                &format!("{url}/bot123:secret/sendMessage"),
                Some("bearer-secret"),
                &serde_json::json!({}),
                Duration::from_secs(1),
            )
            .await
            .expect_err("no answer");
        assert_eq!(error, "no answer within 1 s");
    }

    #[tokio::test]
    async fn a_refused_connection_names_no_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let error = Http::new()
            .post_json(
                &format!("http://{closed}/bot123:secret/sendMessage"),
                None,
                &serde_json::json!({}),
                Duration::from_secs(5),
            )
            .await
            .expect_err("refused");
        assert!(
            !error.contains("secret") && !error.contains("/bot"),
            "{error}"
        );
        assert!(error.contains("onnect"), "{error}");
    }
}
