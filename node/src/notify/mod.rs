//! Notifications: the `notify` action of exit-code rules, delivered to Telegram, Slack or a
//! webhook (`cluster.channels`).
//!
//! *Who sends:* the node that ran the run. Its supervisor applies the run's exit-code rules once
//! (a run ends on one node), so each notification leaves the mesh once, however many nodes there
//! are. Delivery is tried up to [`TRIES`] times with a doubling pause, in the background; the
//! outcome replaces the rule's note on the run ("notify ops: delivered", or why not), which the
//! run page and the API show. A node that dies while it still tries drops that notification.

mod deliver;
mod http;
mod message;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::State;
use crate::ledger::RunLedger;
use crate::logs::LogPaths;
use crate::metrics::Metrics;
use crate::model::{NodeSettings, Run};
pub use deliver::{Failure, kind};
pub use message::Message;
use taskmesh_core::backoff::Backoff;

/// Attempts per notification.
pub const TRIES: u32 = 5;
/// The pauses between attempts: 1 s after the first failed one, doubling after each further one
/// (1, 2, 4, 8 s for five tries), at most a minute.
const PAUSES: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// Notifications being delivered at once; more wait for a turn.
const AT_ONCE: usize = 16;

/// A notification one exit-code rule asked for.
#[derive(Debug, Clone)]
pub struct Notice {
    pub channel: String,
    pub run: Run,
}

/// The note on the run while a notification is on its way.
pub fn sending_note(channel: &str, kind: &str) -> String {
    format!("notify {channel}: sending ({kind})")
}

/// A cloneable handle that sends notifications.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Made at the first notification: loading the system's CA certificates costs memory that a
    /// node which never notifies need not pay.
    http: std::sync::OnceLock<http::Http>,
    state: watch::Receiver<Arc<State>>,
    node: watch::Receiver<NodeSettings>,
    ledger: RunLedger,
    logs: LogPaths,
    /// The UI of this node, for links when `cluster.notify.ui_url` is not set.
    own_ui: String,
    turns: Semaphore,
    /// Notes on runs are read, changed and written back one at a time: two notifications of
    /// one run that end together must not overwrite each other's note.
    noting: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

/// Why a test notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("there is no channel `{0}` in cluster.channels")]
    NoChannel(String),
    #[error("channel `{channel}` ({kind}): {failure}")]
    Failed {
        channel: String,
        kind: &'static str,
        failure: Failure,
    },
}

impl Notifier {
    pub fn new(
        state: watch::Receiver<Arc<State>>,
        node: watch::Receiver<NodeSettings>,
        ledger: RunLedger,
        logs: LogPaths,
        own_ui: String,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: std::sync::OnceLock::new(),
                state,
                node,
                ledger,
                logs,
                own_ui,
                turns: Semaphore::new(AT_ONCE),
                noting: tokio::sync::Mutex::new(()),
                metrics,
                cancel,
            }),
        }
    }

    /// Delivers `notice` in the background, then notes the outcome on its run. Call it once the
    /// run's record (with [`sending_note`]) is in the ledger.
    pub fn notify(&self, notice: Notice) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let cancel = inner.cancel.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = inner.deliver(notice) => {}
            }
        });
    }

    /// Sends a test message to `channel` once; says how it went.
    pub async fn test(&self, channel: &str) -> Result<&'static str, TestError> {
        let settings = self.inner.state.borrow().settings.clone();
        let target = settings
            .channels
            .get(channel)
            .ok_or_else(|| TestError::NoChannel(channel.to_owned()))?;
        let message = Message::test(&self.inner.node.borrow().name, channel);
        let kind = kind(target);
        deliver::send(self.inner.http(), &settings, target, &message)
            .await
            .map(|()| kind)
            .map_err(|failure| TestError::Failed {
                channel: channel.to_owned(),
                kind,
                failure,
            })
    }
}

impl Inner {
    fn http(&self) -> &http::Http {
        self.http.get_or_init(http::Http::new)
    }

    async fn deliver(&self, notice: Notice) {
        let Ok(_turn) = self.turns.acquire().await else {
            return;
        };
        let settings = self.state.borrow().settings.clone();
        let Some(target) = settings.channels.get(&notice.channel).cloned() else {
            self.metrics.notification("none", false);
            return self
                .note(&notice, "no such channel in the settings (any more)".into())
                .await;
        };
        let kind = kind(&target);
        let base = settings
            .notify
            .ui_url
            .clone()
            .unwrap_or_else(|| self.own_ui.clone());
        let tail = {
            let path = self.logs.run_log(&notice.run.id);
            tokio::task::spawn_blocking(move || message::log_tail(&path))
                .await
                .unwrap_or_default()
        };
        let message = Message::of_run(&notice.run, &settings.notify.template, &base, tail);
        let mut pauses = PAUSES;
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            match deliver::send(self.http(), &settings, &target, &message).await {
                Ok(()) => break Ok(()),
                Err(failure) if failure.transient && tries < TRIES => {
                    info!(channel = %notice.channel, run_id = %notice.run.id, try_no = tries, error = %failure, "notification not delivered; trying again");
                    tokio::time::sleep(pauses.next_wait()).await;
                }
                Err(failure) => break Err(failure),
            }
        };
        self.metrics.notification(kind, outcome.is_ok());
        let tries_text = match tries {
            1 => "1 try".to_owned(),
            n => format!("{n} tries"),
        };
        let note = match outcome {
            Ok(()) => format!("delivered ({kind}, {tries_text})"),
            Err(failure) => {
                warn!(channel = %notice.channel, run_id = %notice.run.id, error = %failure, "notification not delivered");
                format!("not delivered ({kind}, {tries_text}): {failure}")
            }
        };
        self.note(&notice, note).await;
    }

    /// Replaces the rule's "sending" note on the run with `outcome`.
    async fn note(&self, notice: &Notice, outcome: String) {
        let _one_at_a_time = self.noting.lock().await;
        let mut run = match self.ledger.get(&notice.run.id).await {
            Ok(Some(run)) => run,
            _ => notice.run.clone(),
        };
        let prefix = format!("notify {}: sending", notice.channel);
        let note = format!("notify {}: {outcome}", notice.channel);
        match run.actions.iter_mut().find(|a| a.starts_with(&prefix)) {
            Some(sending) => *sending = note,
            None => run.actions.push(note),
        }
        self.ledger.record(&run).await;
    }
}
