//! The settings page (`/settings`): cluster-wide and node settings as one JSON editor, with
//! export and import.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

use super::view::{Layout, Moment};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::{NodeSettings, Settings, TokenInfo};

/// Each `cluster` key with a one-line meaning.
pub const CLUSTER_HELP: &[(&str, &str)] = &[
    (
        "daily_logs",
        "also write each task's output to <log path>/<task>/<date>.log",
    ),
    (
        "retention_days",
        "logs older than this many days are deleted",
    ),
    (
        "max_retries",
        "how often a retry rule re-runs a failed run (and a lost run is re-placed)",
    ),
    (
        "retry_backoff",
        "first retry delay, e.g. \"1s\"; it doubles per attempt, up to 5 minutes",
    ),
    (
        "kill_grace",
        "time between SIGTERM and SIGKILL when a run is stopped or times out",
    ),
    ("history_per_task", "runs kept in each task's history"),
    (
        "telegram",
        "bot_token (secret) and api_base of the Telegram bot used by notify rules; a changed api_base needs the token again",
    ),
    (
        "slack",
        "bot_token (secret) and api_base of the Slack bot used by notify rules; a changed api_base needs the token again",
    ),
    (
        "notify",
        "template: the text of notifications, with {task} {status} {node} {exit_code} {duration} {attempt} {trigger} {run_id} {link} {log_tail}; ui_url: the UI address for links (default: the node that ran it)",
    ),
    (
        "channels",
        "named notification targets for notify rules: {\"kind\": \"telegram\", \"chat_id\"}, {\"kind\": \"slack\", \"channel\" or \"webhook_url\"}, {\"kind\": \"webhook\", \"url\"}; webhook URLs are secrets (they carry a token)",
    ),
    (
        "mysql",
        "null, or host, port, user, password (secret), database, log_lines: run records also go to MySQL/MariaDB; a changed host, port, user or database needs the password again",
    ),
    (
        "peer_timeout",
        "a peer that has not announced itself for this long (e.g. \"10s\") counts as gone",
    ),
    (
        "voter_timeout",
        "a voting member unreachable for this long (e.g. \"30s\") gives its vote to a live node",
    ),
];

/// Each `node` key with a one-line meaning.
pub const NODE_HELP: &[(&str, &str)] = &[
    (
        "name",
        "this node's name, shown in the UI and recorded on runs",
    ),
    (
        "log_path",
        "where run logs and daily logs go (absolute); null means <data dir>/logs",
    ),
    (
        "peers",
        "addresses of the other nodes (host:port), the \"IPs of the clients\"",
    ),
    (
        "dependencies",
        "what this node fulfils besides the detected os=, arch= and host=",
    ),
    (
        "slots",
        "how many manual and cron runs this node runs at once; more wait in a queue",
    ),
    (
        "mdns",
        "find other nodes on the LAN by multicast DNS (true/false)",
    ),
    (
        "cluster_key",
        "the mesh's shared secret (secret): only nodes with the same key can connect; saving a new one reconnects at once",
    ),
    (
        "metrics_token",
        "a read-only token for Prometheus (secret, 16+ characters): as a bearer token it reads /metrics and nothing else; null means /metrics needs the access token",
    ),
];

#[derive(Template, WebTemplate)]
#[template(path = "settings.html")]
pub struct SettingsTemplate {
    pub layout: Layout,
    /// The masked settings, pretty JSON.
    pub settings_text: String,
    pub cluster_help: &'static [(&'static str, &'static str)],
    pub node_help: &'static [(&'static str, &'static str)],
    pub deps: Dependencies,
    pub key: ClusterKeyView,
    /// The cluster's named access tokens.
    pub tokens: Vec<TokenRow>,
}

/// A named access token as the settings page lists it.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub read_only: bool,
    pub created: Moment,
    /// When it stops working, if it does.
    pub expires: Option<Moment>,
    pub expired: bool,
}

impl TokenRow {
    pub fn of(tokens: Vec<TokenInfo>) -> Vec<Self> {
        let now = chrono::Utc::now();
        tokens
            .into_iter()
            .map(|t| TokenRow {
                name: t.name,
                read_only: t.read_only,
                created: Moment::new(t.created, now),
                expires: t.expires.map(|at| Moment::new(at, now)),
                expired: t.expires.is_some_and(|at| at <= now),
            })
            .collect()
    }
}

/// The cluster key as pages show it: its fingerprint; the key itself only on request.
#[derive(Debug, Clone, Default)]
pub struct ClusterKeyView {
    pub fingerprint: Option<String>,
    pub peer_id: Option<String>,
}

impl ClusterKeyView {
    pub fn of(node: &impl NodeView) -> Self {
        let view = node.peers();
        Self {
            fingerprint: view.this.key_fingerprint,
            peer_id: view.this.peer_id,
        }
    }
}

/// What this node fulfils: detected by itself, and configured in `node.dependencies`.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    pub detected: Vec<String>,
    pub configured: Vec<String>,
}

impl Dependencies {
    pub fn of(node: &NodeSettings) -> Self {
        let configured = node.dependencies.clone();
        Self {
            detected: node
                .fulfilled()
                .into_iter()
                .filter(|d| !configured.contains(d))
                .collect(),
            configured,
        }
    }
}

impl SettingsTemplate {
    pub fn new(layout: Layout, settings: &Settings, key: ClusterKeyView) -> Self {
        Self {
            key,
            tokens: Vec::new(),
            layout,
            settings_text: serde_json::to_string_pretty(settings).unwrap_or_else(|_| "{}".into()),
            cluster_help: CLUSTER_HELP,
            node_help: NODE_HELP,
            deps: Dependencies::of(&settings.node),
        }
    }
}

pub async fn view_settings_get<N: NodeView>(State(node): State<N>, lang: Lang) -> SettingsTemplate {
    SettingsTemplate {
        tokens: TokenRow::of(node.tokens()),
        ..SettingsTemplate::new(
            Layout::new(&node, "settings", lang),
            &node.settings(false),
            ClusterKeyView::of(&node),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings hint writes the mask out (in both languages); it must be the real one.
    #[test]
    fn the_hint_shows_the_mask_secrets_have() {
        use taskmesh_core::model::MASK;
        let html = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/settings.html"),
        )
        .expect("template");
        assert!(html.contains(&format!("shown as <code>{MASK}</code>")));
    }
    use crate::view::sample::EVIL;

    #[test]
    fn renders_editor_help_and_transfer() {
        let mut settings = Settings::default();
        settings.cluster.telegram.bot_token = Some("123:very-secret".into());
        settings.cluster.channels.insert(
            "web".into(),
            taskmesh_core::model::NotifyChannel::Webhook {
                url: "https://hooks.example/very-secret-hook".into(),
            },
        );
        settings.node.dependencies = vec!["python3".into()];
        let html = SettingsTemplate::new(
            Layout::named("node-a", "settings"),
            &settings.masked(),
            ClusterKeyView {
                fingerprint: Some("a1b2c3".into()),
                peer_id: None,
            },
        )
        .render()
        .expect("render");
        for needle in [
            "id=\"settings-editor\"",
            "&#34;retention_days&#34;: 14",
            "********",
            "retention_days",
            "history_per_task",
            "peers",
            "slots",
            "python3",
            "os=",
            "href=\"/api/settings/export\"",
            "include secrets",
            "type=\"file\"",
            ">Save<",
            "aria-current=\"page\">Settings<",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(
            !html.contains("very-secret"),
            "a secret or webhook URL is shown"
        );
        assert!(
            html.contains("&#34;web&#34;"),
            "the channel itself is shown"
        );
    }

    #[test]
    fn user_text_is_escaped() {
        let mut settings = Settings::default();
        settings.node.name = EVIL.into();
        settings.node.dependencies = vec![EVIL.into()];
        let html = SettingsTemplate::new(
            Layout::named(EVIL, "settings"),
            &settings,
            ClusterKeyView::default(),
        )
        .render()
        .expect("render");
        assert!(!html.contains(EVIL));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    }
}
