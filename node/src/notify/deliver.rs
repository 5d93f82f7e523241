//! One delivery attempt to one channel: Telegram's Bot API, Slack (incoming webhook or
//! `chat.postMessage`), or a generic webhook. Secrets (bot tokens, webhook URLs) never appear in
//! an error.

use std::time::Duration;

use serde_json::{Value, json};

use super::http::Http;
use super::message::Message;
use crate::model::{ClusterSettings, NotifyChannel};

/// One attempt's time limit.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why an attempt failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    pub detail: String,
    /// False for answers that will not change (a bad token, an unknown chat, a bad request).
    pub transient: bool,
}

impl Failure {
    fn permanent(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            transient: false,
        }
    }

    fn transient(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            transient: true,
        }
    }
}

/// What kind of channel it is, for notes on the run.
pub fn kind(channel: &NotifyChannel) -> &'static str {
    match channel {
        NotifyChannel::Telegram { .. } => "telegram",
        NotifyChannel::Slack {
            webhook_url: Some(_),
            ..
        } => "slack webhook",
        NotifyChannel::Slack { .. } => "slack",
        NotifyChannel::Webhook { .. } => "webhook",
    }
}

/// Sends `message` to `channel` once.
pub async fn send(
    http: &Http,
    settings: &ClusterSettings,
    channel: &NotifyChannel,
    message: &Message,
) -> Result<(), Failure> {
    match channel {
        NotifyChannel::Telegram { chat_id } => {
            let token = settings.telegram.bot_token.as_deref().ok_or_else(|| {
                Failure::permanent("no Telegram bot token: set cluster.telegram.bot_token")
            })?;
            let url = format!(
                "{}/bot{token}/sendMessage",
                settings.telegram.api_base.trim_end_matches('/')
            );
            let body =
                json!({"chat_id": chat_id, "text": message.text, "disable_web_page_preview": true});
            let answer = post(http, &url, None, &body, "Telegram").await?;
            // The Bot API answers {"ok": false, "description": …} with an error status, handled
            // by `post`; a 200 without ok is still a failure.
            match answer.get("ok").and_then(Value::as_bool) {
                Some(false) => Err(Failure::permanent(format!(
                    "Telegram: {}",
                    answer["description"].as_str().unwrap_or("refused")
                ))),
                _ => Ok(()),
            }
        }
        NotifyChannel::Slack {
            webhook_url: Some(url),
            ..
        } => post(
            http,
            url,
            None,
            &json!({"text": message.text}),
            "the Slack webhook",
        )
        .await
        .map(|_| ()),
        NotifyChannel::Slack {
            channel: Some(slack_channel),
            ..
        } => {
            let token = settings.slack.bot_token.as_deref().ok_or_else(|| {
                Failure::permanent(
                    "no Slack bot token: set cluster.slack.bot_token, or give the channel a webhook_url",
                )
            })?;
            let url = format!(
                "{}/chat.postMessage",
                settings.slack.api_base.trim_end_matches('/')
            );
            let body = json!({"channel": slack_channel, "text": message.text});
            let answer = post(http, &url, Some(token), &body, "Slack").await?;
            // Slack's Web API answers 200 with {"ok": false, "error": …} on most failures.
            match answer.get("ok").and_then(Value::as_bool) {
                Some(true) => Ok(()),
                _ => {
                    let error = answer["error"].as_str().unwrap_or("no `ok` in the answer");
                    let failure = format!("Slack: {error}");
                    match error == "ratelimited" || error == "internal_error" {
                        true => Err(Failure::transient(failure)),
                        false => Err(Failure::permanent(failure)),
                    }
                }
            }
        }
        NotifyChannel::Slack { .. } => Err(Failure::permanent(
            "the Slack channel has neither webhook_url nor channel",
        )),
        NotifyChannel::Webhook { url } => {
            let body = serde_json::to_value(message).unwrap_or(Value::Null);
            post(http, url, None, &body, "the webhook")
                .await
                .map(|_| ())
        }
    }
}

/// POSTs `body` as JSON; the answer's JSON (or null) when the status is a success. `who` names
/// the receiver in errors, instead of the URL (which may hold a token).
async fn post(
    http: &Http,
    url: &str,
    bearer: Option<&str>,
    body: &Value,
    who: &str,
) -> Result<Value, Failure> {
    let (status, text) = http
        .post_json(url, bearer, body, TIMEOUT)
        .await
        .map_err(|e| Failure::transient(format!("{who} did not answer: {e}")))?;
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(answer);
    }
    let said = answer["description"]
        .as_str()
        .or(answer["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    let detail = format!("{who} answered {status}: {said}");
    let transient = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    Err(Failure { detail, transient })
}
