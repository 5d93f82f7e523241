//! Who changed what: each change an operator made through a node's UI, API or CLI, as the
//! cluster agreed on it (the replicated state keeps the newest [`MAX_ACTIVITY`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The newest changes the replicated state keeps.
pub const MAX_ACTIVITY: usize = 500;

/// Who asked for a change, as the node that took the request saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Origin {
    /// When the node took the request (its clock).
    pub at: DateTime<Utc>,
    /// The node that took it, by name.
    pub node: String,
    /// `ui` (a browser session), `cli` (the taskmesh command) or `api` (the access token).
    pub via: String,
    /// The client's address.
    pub client: String,
    /// The named access token it came with (or the browser session it made); none for a node's
    /// own access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Origin {
    /// Who asked, in words: "cli on lab-1 from 10.0.0.5", "ui (alice) on lab-1 from 10.0.0.5".
    pub fn who(&self) -> String {
        let token = self
            .token
            .as_ref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        format!("{}{token} on {} from {}", self.via, self.node, self.client)
    }
}

/// What an operator did at a node's door. It changes nothing the cluster keeps; wrapped in an
/// operator's change, it is listed in the activity beside the changes, so that who got in
/// where, and when a node's own token was replaced, is on record on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessEvent {
    /// Signed in to the UI with an access token (the node's own or a named one).
    SignInWithToken,
    /// Signed in to the UI with a one-time login link.
    SignInWithLink,
    /// Replaced the node's own access token.
    RotateToken,
}

impl AccessEvent {
    /// The activity's `what`.
    pub fn kind(self) -> &'static str {
        match self {
            AccessEvent::SignInWithToken | AccessEvent::SignInWithLink => "sign_in",
            AccessEvent::RotateToken => "rotate_token",
        }
    }

    /// The activity's `detail`: what a sign-in was made with.
    pub fn detail(self) -> &'static str {
        match self {
            AccessEvent::SignInWithToken => "token",
            AccessEvent::SignInWithLink => "link",
            AccessEvent::RotateToken => "",
        }
    }
}

/// One change an operator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Activity {
    #[serde(flatten)]
    pub origin: Origin,
    /// What was done: `put_task`, `remove_task`, `settings`, `set_enabled`, `stop`, `drain`,
    /// `pause_cron`, …, and at the door `sign_in` and `rotate_token` ([`AccessEvent`]).
    pub what: String,
    /// What it was done to: a task's name, a run's id, a node; empty for the settings.
    pub subject: String,
    /// More about it: `enabled`/`disabled`, `drained`/`undrained`, `paused`/`resumed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}
