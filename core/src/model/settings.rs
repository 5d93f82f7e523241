//! Settings: the cluster's (shared by every node) and this node's own, with secrets masked on the way out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;
use super::validate::{FieldError, Invalid, parse_json};

/// What a secret looks like in the UI and in exports. Sending it back keeps the stored value.
pub const MASK: &str = "********";

/// Everything on /settings: `cluster` is the same on every node, `node` is this node's own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub cluster: ClusterSettings,
    #[serde(default)]
    pub node: NodeSettings,
    /// Set in exports: the node that wrote the file, so that importing it on another node
    /// joins that node's mesh instead of copying its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_by: Option<ExportOrigin>,
}

/// Who exported a settings file, and where it can be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportOrigin {
    pub peer_id: String,
    pub name: String,
    /// Its p2p addresses; the importing node dials them.
    #[serde(default)]
    pub p2p_addrs: Vec<String>,
}

impl Settings {
    /// What importing `self`, exported by another node, means for `current` (this node's
    /// settings): the cluster settings, the cluster key and the way into the mesh are taken;
    /// this node's own name, log path, dependencies and slots stay. Masked secrets in `self`
    /// keep this node's values under the same rule as any save ([`Settings::unmask_from`]).
    pub fn joined_from(mut self, current: &Settings) -> Result<Settings, Invalid> {
        self.unmask_from(current)?;
        let mut node = current.node.clone();
        node.cluster_key = self.node.cluster_key.clone();
        node.mdns = self.node.mdns;
        let mut peers = self.node.peers.clone();
        if let Some(origin) = &self.exported_by {
            peers.extend(origin.p2p_addrs.iter().cloned());
        }
        for peer in peers {
            if !node.peers.contains(&peer) {
                node.peers.push(peer);
            }
        }
        Ok(Settings {
            cluster: self.cluster,
            node,
            exported_by: None,
        })
    }
}

/// Settings shared by the whole cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Also write each task's output to `<log path>/<task>/<YYYY-MM-DD>.log`.
    pub daily_logs: bool,
    /// Logs older than this many days are deleted.
    pub retention_days: u32,
    /// How often a failed run is retried (by a retry rule) or a lost run re-placed.
    pub max_retries: u32,
    /// First retry delay; it doubles per attempt, up to 5 minutes.
    pub retry_backoff: HumanDuration,
    /// Between SIGTERM and SIGKILL when a run is stopped or times out.
    pub kill_grace: HumanDuration,
    /// Runs kept in the history of each task.
    pub history_per_task: u32,
    pub telegram: TelegramSettings,
    pub slack: SlackSettings,
    /// Named notification targets that exit-code rules refer to.
    pub channels: BTreeMap<String, NotifyChannel>,
    /// What notifications say, and where their links point.
    pub notify: NotifySettings,
    /// Run records (and optionally log lines) also go to this MySQL/MariaDB database.
    pub mysql: Option<MysqlSettings>,
    /// A peer that has not announced itself for this long is gone.
    pub peer_timeout: HumanDuration,
    /// A voter unreachable for this long gives its seat to a live learner.
    pub voter_timeout: HumanDuration,
}

/// Which cluster a node's replicated state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterIdentity {
    /// Chosen by the node that bootstrapped the cluster (its Raft node id).
    pub id: u64,
    /// Set when this cluster has handed its tasks to another one, and its members are to join it.
    pub merged_into: Option<u64>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            daily_logs: true,
            retention_days: 14,
            max_retries: 3,
            retry_backoff: HumanDuration::from_secs(1),
            kill_grace: HumanDuration::from_secs(5),
            history_per_task: 200,
            telegram: TelegramSettings::default(),
            slack: SlackSettings::default(),
            channels: BTreeMap::new(),
            notify: NotifySettings::default(),
            mysql: None,
            peer_timeout: HumanDuration::from_secs(10),
            voter_timeout: HumanDuration::from_secs(30),
        }
    }
}

impl ClusterSettings {
    /// How long a holder of an always-task keeps its daemon without hearing a majority of the
    /// voters: half of `peer_timeout`, and at least 3 s (`MIN_LEASE_TERM`).
    pub fn lease_term(&self) -> Duration {
        (self.peer_timeout.0 / 2).max(MIN_LEASE_TERM)
    }

    /// How long a holder must have been silent before the leader gives its always-task of
    /// `task` to another node: `peer_timeout`, and at least the lease term plus the task's kill
    /// grace plus a margin, so that the old holder has stopped its daemon by then.
    pub fn daemon_handover(&self, task: &super::Task) -> Duration {
        self.peer_timeout
            .0
            .max(self.lease_term() + task.kill_grace(self.kill_grace.0) + HANDOVER_MARGIN)
    }
}

/// The shortest lease term. A holder hears each voter once a beat round (every 2 s), so a term
/// shorter than a round and a half would lapse between two rounds of a healthy cluster, and
/// stop the daemon for nothing; half of the shortest `peer_timeout` (3 s) would be 1.5 s.
pub const MIN_LEASE_TERM: Duration = Duration::from_secs(3);

/// Time [`ClusterSettings::daemon_handover`] keeps on top of lease and grace: for the holder's
/// lease check, which runs every 250 ms, and the kernel's last kill.
const HANDOVER_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramSettings {
    pub bot_token: Option<String>,
    pub api_base: String,
}

impl Default for TelegramSettings {
    fn default() -> Self {
        Self {
            bot_token: None,
            api_base: "https://api.telegram.org".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSettings {
    pub bot_token: Option<String>,
    pub api_base: String,
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            bot_token: None,
            api_base: "https://slack.com/api".into(),
        }
    }
}

/// The text of notifications: a template with `{placeholders}`, see [`NOTIFY_PLACEHOLDERS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    pub template: String,
    /// The address people open the UI at (`https://taskmesh.example.com`), for the link to the
    /// run; without it, the link points at the UI of the node that ran it.
    pub ui_url: Option<String>,
}

/// The placeholders a notification template may use.
pub const NOTIFY_PLACEHOLDERS: &[&str] = &[
    "task",
    "status",
    "node",
    "exit_code",
    "duration",
    "attempt",
    "trigger",
    "run_id",
    "link",
    "log_tail",
];

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            template: "taskmesh: {task} {status} on {node} (exit code {exit_code}, {duration}, \
                       attempt {attempt})\n{link}\n\n{log_tail}"
                .into(),
            ui_url: None,
        }
    }
}

/// The `{name}` placeholders in `template`, or where one is not closed.
pub fn template_placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            format!(
                "`{{` at byte {} is not closed",
                template.len() - rest.len() + open
            )
        })?;
        names.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(names)
}

/// Where a notify action delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifyChannel {
    Telegram {
        chat_id: String,
    },
    Slack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_url: Option<String>,
    },
    Webhook {
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MysqlSettings {
    pub host: String,
    #[serde(default = "mysql_port")]
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    pub database: String,
    /// Also write every log line, not only run records.
    #[serde(default)]
    pub log_lines: bool,
}

fn mysql_port() -> u16 {
    3306
}

/// This node's own settings; they are not replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Shown in the UI and recorded on runs; defaults to the host name.
    pub name: String,
    /// Where run logs and daily logs go; defaults to `<data dir>/logs`. Applies at the next start.
    #[schema(value_type = Option<String>)]
    pub log_path: Option<PathBuf>,
    /// Addresses of other nodes ("IPs of the clients"), host:port.
    pub peers: Vec<String>,
    /// Capabilities this node fulfils besides the detected os=, arch= and host=.
    pub dependencies: Vec<String>,
    /// How many manual and cron runs this node runs at once; more wait in a queue.
    pub slots: u32,
    /// Find other nodes on the LAN by multicast DNS.
    pub mdns: bool,
    /// The mesh's shared secret (64 hex digits): only nodes with it can connect.
    pub cluster_key: Option<String>,
    /// A read-only token for scrapers: `Authorization: Bearer <it>` reads this node's
    /// `/metrics` and nothing else. Unset: `/metrics` needs the access token like the API.
    pub metrics_token: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            name: hostname(),
            log_path: None,
            peers: Vec::new(),
            dependencies: Vec::new(),
            slots: 8,
            mdns: true,
            cluster_key: None,
            metrics_token: None,
        }
    }
}

impl NodeSettings {
    /// Everything this node fulfils: the configured dependencies plus the detected `os=`,
    /// `arch=` and `host=`.
    pub fn fulfilled(&self) -> Vec<String> {
        let mut deps = vec![
            format!("os={}", std::env::consts::OS),
            format!("arch={}", std::env::consts::ARCH),
            format!("host={}", hostname()),
        ];
        deps.extend(self.dependencies.iter().cloned());
        deps
    }

    /// The task dependencies this node lacks (empty: it can run the task).
    pub fn missing<'a>(&self, required: &'a [String]) -> Vec<&'a str> {
        let have = self.fulfilled();
        required
            .iter()
            .filter(|r| !have.contains(r))
            .map(String::as_str)
            .collect()
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Settings {
    /// Parses and checks a settings document (the /settings editor, an import file).
    pub fn parse(text: &str) -> Result<Settings, Invalid> {
        let settings: Settings = parse_json(text, "")?;
        let errors = settings.check();
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(Invalid::new("the settings are not valid", errors))
        }
    }

    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let c = &self.cluster;
        if c.retention_days == 0 || c.retention_days > 36_500 {
            errors.push(FieldError::new(
                "cluster.retention_days",
                "between 1 and 36500 days",
            ));
        }
        if c.max_retries > 100 {
            errors.push(FieldError::new("cluster.max_retries", "at most 100"));
        }
        if c.history_per_task == 0 || c.history_per_task > 100_000 {
            errors.push(FieldError::new(
                "cluster.history_per_task",
                "between 1 and 100000",
            ));
        }
        if c.retry_backoff.0.is_zero() {
            errors.push(FieldError::new(
                "cluster.retry_backoff",
                "must be longer than 0s",
            ));
        }
        for (path, base) in [
            ("cluster.telegram.api_base", &c.telegram.api_base),
            ("cluster.slack.api_base", &c.slack.api_base),
        ] {
            if !is_http_url(base) {
                errors.push(FieldError::new(path, "an http:// or https:// URL"));
            }
        }
        match template_placeholders(&c.notify.template) {
            Err(e) => errors.push(FieldError::new("cluster.notify.template", e)),
            Ok(names) => {
                for name in names.iter().filter(|n| !NOTIFY_PLACEHOLDERS.contains(n)) {
                    errors.push(FieldError::new(
                        "cluster.notify.template",
                        format!(
                            "unknown placeholder {{{name}}}; known: {}",
                            NOTIFY_PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
            }
        }
        if c.notify.template.trim().is_empty() {
            errors.push(FieldError::new(
                "cluster.notify.template",
                "must not be empty",
            ));
        }
        if let Some(url) = &c.notify.ui_url {
            if !is_http_url(url) {
                errors.push(FieldError::new(
                    "cluster.notify.ui_url",
                    "an http:// or https:// URL",
                ));
            }
        }
        for (name, channel) in &c.channels {
            let path = format!("cluster.channels.{name}");
            if name.trim().is_empty() {
                errors.push(FieldError::new(&path, "a channel needs a name"));
            }
            match channel {
                NotifyChannel::Telegram { chat_id } if chat_id.trim().is_empty() => {
                    errors.push(FieldError::new(format!("{path}.chat_id"), "the Telegram chat id is empty"));
                }
                NotifyChannel::Slack { channel: None, webhook_url: None } => errors.push(FieldError::new(
                    &path,
                    "a Slack channel needs `webhook_url` (incoming webhook) or `channel` (with cluster.slack.bot_token)",
                )),
                NotifyChannel::Slack { webhook_url: Some(url), .. } | NotifyChannel::Webhook { url }
                    if !is_http_url(url) && url != MASK =>
                {
                    errors.push(FieldError::new(path, "an http:// or https:// URL"));
                }
                _ => {}
            }
        }
        if let Some(m) = &c.mysql {
            for (field, value) in [
                ("host", &m.host),
                ("user", &m.user),
                ("database", &m.database),
            ] {
                if value.trim().is_empty() {
                    errors.push(FieldError::new(
                        format!("cluster.mysql.{field}"),
                        "must not be empty",
                    ));
                }
            }
            if !m
                .database
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                errors.push(FieldError::new(
                    "cluster.mysql.database",
                    "letters, digits and `_` only",
                ));
            }
        }
        if c.peer_timeout.0 < std::time::Duration::from_secs(3) {
            errors.push(FieldError::new(
                "cluster.peer_timeout",
                "at least 3s (nodes announce themselves every 2s)",
            ));
        }
        let n = &self.node;
        if let Some(key) = n.cluster_key.as_deref().filter(|k| *k != MASK) {
            if let Err(e) = key.parse::<crate::cluster_key::ClusterKey>() {
                errors.push(FieldError::new("node.cluster_key", e));
            }
        }
        if n.name.trim().is_empty() {
            errors.push(FieldError::new("node.name", "a node needs a name"));
        }
        if let Some(token) = n.metrics_token.as_deref().filter(|t| *t != MASK) {
            if let Err(why) = check_metrics_token(token) {
                errors.push(FieldError::new("node.metrics_token", why));
            }
        }
        if n.slots == 0 || n.slots > 10_000 {
            errors.push(FieldError::new("node.slots", "between 1 and 10000"));
        }
        for (i, peer) in n.peers.iter().enumerate() {
            if !is_peer_address(peer) {
                errors.push(FieldError::new(
                    format!("node.peers[{i}]"),
                    format!("`{peer}` is not host:port or a multiaddr like /ip4/10.0.0.2/tcp/7946"),
                ));
            }
        }
        for (i, dep) in n.dependencies.iter().enumerate() {
            if dep.trim().is_empty() || dep.trim() != dep {
                errors.push(FieldError::new(
                    format!("node.dependencies[{i}]"),
                    "a dependency is a non-empty word without surrounding spaces",
                ));
            }
        }
        if let Some(path) = &n.log_path {
            if !path.is_absolute() {
                errors.push(FieldError::new("node.log_path", "an absolute path"));
            }
        }
        errors
    }

    /// A copy with every secret replaced by [`MASK`]: tokens, passwords, the cluster key and
    /// webhook URLs (which carry their token in the URL), each as a whole.
    pub fn masked(&self) -> Settings {
        let mut s = self.clone();
        s.for_each_secret(|secret| {
            if secret.value.is_some() {
                *secret.value = Some(MASK.to_owned());
            }
        });
        s
    }

    /// Where `self` holds [`MASK`], takes the secret from `current` (an edit of a masked document
    /// keeps the secrets it did not change), but only while the secret would still go where it
    /// went: a masked secret whose destination changed (`api_base`, the MySQL server), or with
    /// nothing stored at its place (a renamed channel), is refused and must be entered again.
    pub fn unmask_from(&mut self, current: &Settings) -> Result<(), Invalid> {
        let stored = current.clone().secrets_by_path();
        let mut errors = Vec::new();
        self.for_each_secret(|secret| {
            if secret.value.as_deref() != Some(MASK) {
                return;
            }
            let Some((destination, Some(value))) = stored.get(&secret.path) else {
                errors.push(FieldError::new(
                    &secret.path,
                    "no secret is stored here to keep: enter it",
                ));
                return;
            };
            let changed = changed_fields(destination, &secret.destination);
            if changed.is_empty() {
                *secret.value = Some(value.clone());
            } else {
                errors.push(FieldError::new(
                    &secret.path,
                    format!(
                        "the destination changed ({}): enter the secret again",
                        changed.join(", ")
                    ),
                ));
            }
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid::new(
                "a masked secret cannot be kept: enter it again",
                errors,
            ))
        }
    }

    fn secrets_by_path(mut self) -> BTreeMap<String, (Destination, Option<String>)> {
        let mut out = BTreeMap::new();
        self.for_each_secret(|secret| {
            out.insert(secret.path, (secret.destination, secret.value.clone()));
        });
        out
    }

    /// Calls `f` with every secret, its path and its destination.
    fn for_each_secret(&mut self, mut f: impl FnMut(Secret<'_>)) {
        f(Secret {
            path: "node.cluster_key".into(),
            destination: Vec::new(),
            value: &mut self.node.cluster_key,
        });
        f(Secret {
            path: "node.metrics_token".into(),
            destination: Vec::new(),
            value: &mut self.node.metrics_token,
        });
        let c = &mut self.cluster;
        f(Secret {
            path: "cluster.telegram.bot_token".into(),
            destination: vec![("cluster.telegram.api_base", c.telegram.api_base.clone())],
            value: &mut c.telegram.bot_token,
        });
        f(Secret {
            path: "cluster.slack.bot_token".into(),
            destination: vec![("cluster.slack.api_base", c.slack.api_base.clone())],
            value: &mut c.slack.bot_token,
        });
        if let Some(m) = &mut c.mysql {
            f(Secret {
                path: "cluster.mysql.password".into(),
                destination: vec![
                    ("cluster.mysql.host", m.host.clone()),
                    ("cluster.mysql.port", m.port.to_string()),
                    ("cluster.mysql.user", m.user.clone()),
                    ("cluster.mysql.database", m.database.clone()),
                ],
                value: &mut m.password,
            });
        }
        for (name, channel) in &mut c.channels {
            match channel {
                NotifyChannel::Slack { webhook_url, .. } => f(Secret {
                    path: format!("cluster.channels.{name}.webhook_url"),
                    destination: Vec::new(),
                    value: webhook_url,
                }),
                NotifyChannel::Webhook { url } => {
                    let mut value = Some(std::mem::take(url));
                    f(Secret {
                        path: format!("cluster.channels.{name}.url"),
                        destination: Vec::new(),
                        value: &mut value,
                    });
                    *url = value.unwrap_or_default();
                }
                NotifyChannel::Telegram { .. } => {}
            }
        }
    }
}

/// The fields that decide where a secret is sent, with their values. Empty for a secret that
/// is its own destination (a webhook URL, masked as a whole) or never leaves the node (the
/// cluster key).
type Destination = Vec<(&'static str, String)>;

/// One secret of the settings: its field path, where it is sent, and its value.
struct Secret<'a> {
    path: String,
    destination: Destination,
    value: &'a mut Option<String>,
}

/// The destination fields whose values differ between `before` and `after` (both of one secret).
fn changed_fields(before: &Destination, after: &Destination) -> Vec<&'static str> {
    after
        .iter()
        .filter(|(field, value)| {
            before
                .iter()
                .find(|(f, _)| f == field)
                .is_none_or(|(_, v)| v != value)
        })
        .map(|(field, _)| *field)
        .collect()
}

/// The shortest metrics token accepted.
pub const METRICS_TOKEN_MIN: usize = 16;

/// Whether `token` can be a metrics token: long enough to resist guessing, and sendable as an
/// `Authorization` header (visible ASCII, no spaces).
fn check_metrics_token(token: &str) -> Result<(), String> {
    if token.len() < METRICS_TOKEN_MIN {
        return Err(format!(
            "at least {METRICS_TOKEN_MIN} characters (it has {}); `openssl rand -hex 32` makes one",
            token.chars().count()
        ));
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "visible ASCII characters only, without spaces (found {bad:?})"
        ));
    }
    Ok(())
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() - 1
}

fn is_peer_address(s: &str) -> bool {
    if s.starts_with('/') {
        return s.len() > 1 && !s.contains(char::is_whitespace);
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_always_task_is_handed_over_after_the_lease_its_own_grace_and_a_margin() {
        let cluster = ClusterSettings::default();
        let mut task = crate::model::Task::sample("t", "t");
        // peer_timeout 10 s against 5 s + 5 s + 1 s.
        assert_eq!(cluster.daemon_handover(&task), Duration::from_secs(11));
        task.spec.kill_grace = Some(HumanDuration::from_secs(60));
        assert_eq!(cluster.daemon_handover(&task), Duration::from_secs(66));
        // The shortest peer_timeout: the lease outlasts a beat round and a half, and the
        // hand-over waits for that lease.
        let short = ClusterSettings {
            peer_timeout: HumanDuration::from_secs(3),
            ..ClusterSettings::default()
        };
        assert_eq!(short.lease_term(), MIN_LEASE_TERM);
        task.spec.kill_grace = None;
        assert_eq!(short.daemon_handover(&task), Duration::from_secs(3 + 5 + 1));
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = Settings::default();
        assert!(s.check().is_empty(), "{:?}", s.check());
        let text = serde_json::to_string_pretty(&s).expect("json");
        assert_eq!(Settings::parse(&text).expect("parse"), s);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let cases = [
            (
                r#"{"cluster": {"retention_days": 0}}"#,
                "cluster.retention_days",
            ),
            (
                r#"{"cluster": {"retention_days": "x"}}"#,
                "cluster.retention_days",
            ),
            (r#"{"node": {"slots": 0}}"#, "node.slots"),
            (
                r#"{"node": {"metrics_token": "short"}}"#,
                "node.metrics_token",
            ),
            (
                r#"{"node": {"metrics_token": "has a space in it, long enough"}}"#,
                "node.metrics_token",
            ),
            (
                r#"{"node": {"peers": ["10.0.0.1:7946", "nope"]}}"#,
                "node.peers[1]",
            ),
            (
                r#"{"node": {"log_path": "relative/logs"}}"#,
                "node.log_path",
            ),
            (
                r#"{"cluster": {"mysql": {"host": "db", "user": "", "database": "x"}}}"#,
                "cluster.mysql.user",
            ),
            (
                r#"{"cluster": {"channels": {"ops": {"kind": "slack"}}}}"#,
                "cluster.channels.ops",
            ),
            (r#"{"cluster": {"colour": 1}}"#, "cluster.colour"),
        ];
        for (text, path) in cases {
            let err = Settings::parse(text).expect_err(text);
            assert!(err.errors.iter().any(|e| e.path == path), "{text}: {err:?}");
        }
    }

    #[test]
    fn secrets_are_masked_and_kept_on_save() {
        let mut s = Settings::default();
        s.cluster.telegram.bot_token = Some("123:secret".into());
        s.cluster.mysql = Some(MysqlSettings {
            host: "db".into(),
            port: 3306,
            user: "tm".into(),
            password: Some("pw".into()),
            database: "taskmesh".into(),
            log_lines: false,
        });
        let masked = s.masked();
        let text = serde_json::to_string(&masked).expect("json");
        assert!(
            !text.contains("123:secret") && !text.contains("\"pw\""),
            "{text}"
        );
        let mut edited = masked.clone();
        edited.cluster.retention_days = 3;
        edited.unmask_from(&s).expect("unmask");
        assert_eq!(
            edited.cluster.telegram.bot_token.as_deref(),
            Some("123:secret")
        );
        assert_eq!(
            edited
                .cluster
                .mysql
                .as_ref()
                .and_then(|m| m.password.as_deref()),
            Some("pw")
        );
        assert_eq!(edited.cluster.retention_days, 3);
    }
    /// Settings with every kind of secret: both bot tokens, a MySQL password, a Slack incoming
    /// webhook, a generic webhook and a metrics token.
    fn with_secrets() -> Settings {
        let mut s = Settings::default();
        s.node.cluster_key = Some("ab".repeat(32));
        s.node.metrics_token = Some("scrape-secret-0123456789".into());
        s.cluster.telegram.bot_token = Some("123:tg-secret".into());
        s.cluster.slack.bot_token = Some("xoxb-slack-secret".into());
        s.cluster.mysql = Some(MysqlSettings {
            host: "db".into(),
            port: 3306,
            user: "tm".into(),
            password: Some("db-secret".into()),
            database: "taskmesh".into(),
            log_lines: false,
        });
        s.cluster.channels.insert(
            "hook".into(),
            NotifyChannel::Slack {
                channel: None,
                webhook_url: Some("https://hooks.slack.com/services/T1/B2/hook-secret".into()),
            },
        );
        s.cluster.channels.insert(
            "web".into(),
            NotifyChannel::Webhook {
                url: "https://example.com/web?token=web-secret".into(),
            },
        );
        s
    }

    const SECRETS: &[&str] = &[
        "123:tg-secret",
        "xoxb-slack-secret",
        "db-secret",
        "hook-secret",
        "web-secret",
        "scrape-secret",
    ];

    #[test]
    fn every_secret_and_webhook_url_is_masked_as_a_whole() {
        let stored = with_secrets();
        let masked = stored.masked();
        let text = serde_json::to_string(&masked).expect("json");
        for secret in SECRETS
            .iter()
            .chain(&[stored.node.cluster_key.as_deref().expect("key")])
        {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert_eq!(
            masked.cluster.channels["web"],
            NotifyChannel::Webhook { url: MASK.into() }
        );
        assert!(masked.check().is_empty(), "{:?}", masked.check());
        // The masked document round-trips: saved back unchanged, it keeps every secret.
        let mut back = Settings::parse(&text).expect("parse");
        back.unmask_from(&stored).expect("unmask");
        assert_eq!(back, stored);
    }

    /// An edit of the masked settings, and the paths it is refused at (none: accepted).
    type Edit = fn(&mut Settings);

    #[test]
    fn a_masked_secret_is_kept_only_for_its_destination() {
        fn mysql(s: &mut Settings) -> &mut MysqlSettings {
            s.cluster.mysql.as_mut().expect("mysql")
        }
        let cases: &[(&str, Edit, &[&str])] = &[
            ("nothing changed", |_| {}, &[]),
            (
                "another setting changed",
                |s| s.cluster.retention_days = 3,
                &[],
            ),
            (
                "telegram api_base changed",
                |s| s.cluster.telegram.api_base = "https://evil.example".into(),
                &["cluster.telegram.bot_token"],
            ),
            (
                "telegram api_base changed, token entered again",
                |s| {
                    s.cluster.telegram.api_base = "https://tg.example".into();
                    s.cluster.telegram.bot_token = Some("456:new".into());
                },
                &[],
            ),
            (
                "slack api_base changed",
                |s| s.cluster.slack.api_base = "https://evil.example/api".into(),
                &["cluster.slack.bot_token"],
            ),
            (
                "slack api_base changed, token removed",
                |s| {
                    s.cluster.slack.api_base = "https://evil.example/api".into();
                    s.cluster.slack.bot_token = None;
                },
                &[],
            ),
            (
                "mysql host changed",
                |s| mysql(s).host = "evil.example".into(),
                &["cluster.mysql.password"],
            ),
            (
                "mysql port changed",
                |s| mysql(s).port = 3307,
                &["cluster.mysql.password"],
            ),
            (
                "mysql user changed",
                |s| mysql(s).user = "other".into(),
                &["cluster.mysql.password"],
            ),
            (
                "mysql database changed",
                |s| mysql(s).database = "other".into(),
                &["cluster.mysql.password"],
            ),
            (
                "mysql log_lines changed",
                |s| mysql(s).log_lines = true,
                &[],
            ),
            (
                "mysql host changed, password entered again",
                |s| {
                    mysql(s).host = "db2".into();
                    mysql(s).password = Some("pw2".into());
                },
                &[],
            ),
            (
                "webhook channel renamed",
                |s| {
                    let web = s.cluster.channels.remove("web").expect("web");
                    s.cluster.channels.insert("web2".into(), web);
                },
                &["cluster.channels.web2.url"],
            ),
            (
                "slack webhook turned into a generic webhook",
                |s| {
                    s.cluster
                        .channels
                        .insert("hook".into(), NotifyChannel::Webhook { url: MASK.into() });
                },
                &["cluster.channels.hook.url"],
            ),
            (
                "webhook URL entered again",
                |s| {
                    s.cluster.channels.insert(
                        "web".into(),
                        NotifyChannel::Webhook {
                            url: "https://other.example/hook".into(),
                        },
                    );
                },
                &[],
            ),
            (
                "several destinations changed",
                |s| {
                    s.cluster.telegram.api_base = "https://evil.example".into();
                    mysql(s).host = "evil.example".into();
                },
                &["cluster.telegram.bot_token", "cluster.mysql.password"],
            ),
        ];
        let stored = with_secrets();
        for (what, edit, refused) in cases {
            let mut edited = stored.masked();
            edit(&mut edited);
            let expected_plain = {
                // What the edit means with the stored secrets in place of the masks.
                let mut e = stored.clone();
                edit(&mut e);
                e
            };
            match edited.unmask_from(&stored) {
                Ok(()) => {
                    assert!(refused.is_empty(), "{what}: accepted, expected {refused:?}");
                    assert_eq!(edited, expected_plain, "{what}");
                }
                Err(invalid) => {
                    let paths: Vec<&str> = invalid.errors.iter().map(|e| e.path.as_str()).collect();
                    assert_eq!(paths, *refused, "{what}: {invalid}");
                    for error in &invalid.errors {
                        assert!(error.message.contains("enter"), "{what}: {}", error.message);
                    }
                }
            }
        }
    }

    #[test]
    fn the_refusal_names_what_changed() {
        let stored = with_secrets();
        let mut edited = stored.masked();
        edited.cluster.telegram.api_base = "https://evil.example".into();
        let err = edited.unmask_from(&stored).expect_err("refused");
        assert_eq!(
            err.errors,
            vec![FieldError::new(
                "cluster.telegram.bot_token",
                "the destination changed (cluster.telegram.api_base): enter the secret again"
            )]
        );
    }

    #[test]
    fn a_mask_with_nothing_stored_is_refused() {
        let stored = Settings::default();
        let mut edited = stored.clone();
        edited.cluster.telegram.bot_token = Some(MASK.into());
        let err = edited.unmask_from(&stored).expect_err("refused");
        assert_eq!(err.errors[0].path, "cluster.telegram.bot_token");
    }

    #[test]
    fn joining_from_another_nodes_export_follows_the_same_rule() {
        let here = with_secrets();
        let mut other = Settings::default();
        other.node.name = "elsewhere".into();
        other.node.cluster_key = Some("cd".repeat(32));
        other.cluster.telegram.bot_token = Some("999:theirs".into());
        other.exported_by = Some(ExportOrigin {
            peer_id: "12D3KooWother".into(),
            name: "elsewhere".into(),
            p2p_addrs: vec!["/ip4/10.0.0.9/tcp/7946".into()],
        });
        // Their masked export, same destinations as here: this node's secrets are kept.
        let joined = other.masked().joined_from(&here).expect("joined");
        assert_eq!(
            joined.cluster.telegram.bot_token,
            here.cluster.telegram.bot_token
        );
        assert_eq!(joined.node.name, here.node.name);
        assert!(joined.node.peers.contains(&"/ip4/10.0.0.9/tcp/7946".into()));
        // Their export points Telegram elsewhere: this node's token does not follow.
        let mut moved = other.clone();
        moved.cluster.telegram.api_base = "https://evil.example".into();
        let err = moved.masked().joined_from(&here).expect_err("refused");
        assert_eq!(err.errors[0].path, "cluster.telegram.bot_token");
        // With secrets in the file, theirs are taken.
        let joined = moved.joined_from(&here).expect("joined");
        assert_eq!(
            joined.cluster.telegram.bot_token.as_deref(),
            Some("999:theirs")
        );
    }
}
