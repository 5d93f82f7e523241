//! The MySQL/MariaDB sink: every run this node records also goes to the cluster's MySQL
//! database, through a durable outbox.
//!
//! The run ledger stages each change of a run in the [`Outbox`] (in the node's redb database,
//! committed with the run itself) while `cluster.mysql` is set. The [`Sink`] actor sends what
//! waits, oldest first, with idempotent writes, and removes it from the outbox only after MySQL
//! committed it. While MySQL cannot be reached it retries after [`RETRY_WAITS`], logging one
//! warning when delivery starts failing and one info when it recovers. Each node writes only the
//! runs it executed, so each run reaches MySQL from one node (`docs/mysql.md`).

mod mysql;
mod outbox;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::State;
use crate::error_text::error_text;
use crate::logs::LogPaths;
use crate::model::{MysqlSettings, Run};
use taskmesh_core::backoff::Backoff;

pub use mysql::{SinkError, Target};
pub use outbox::{Entry, LIMIT, Outbox};

/// Runs sent in one MySQL transaction, at most.
const BATCH: usize = 256;

pub use taskmesh_core::view::SinkStatus;

/// The waits between tries while MySQL fails: 0.5 s, doubling, at most 30 s.
pub const RETRY_WAITS: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// An open connection and the settings it was opened with.
struct Link {
    settings: MysqlSettings,
    conn: mysql::Connection,
}

/// The sink actor: one per node.
pub struct Sink {
    pub outbox: Outbox,
    pub state: watch::Receiver<Arc<State>>,
    pub logs: LogPaths,
    pub status: watch::Sender<SinkStatus>,
    /// Where deliveries, failures and the outbox's length are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub cancel: CancellationToken,
}

impl Sink {
    pub async fn run(mut self) {
        let mut link: Option<Link> = None;
        let mut backoff = RETRY_WAITS;
        // Set while failing: when to try again.
        let mut retry_at: Option<Instant> = None;
        let mut seen = self.state.borrow().settings.mysql.clone();
        // At start, what a previous start left in the outbox goes first.
        let mut try_now = true;
        loop {
            if try_now {
                let settings = self.state.borrow().settings.mysql.clone();
                let result = match &settings {
                    Some(settings) => tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => break,
                        result = self.deliver(settings, &mut link) => Some(result),
                    },
                    None => None,
                };
                let target = settings.as_ref().map(|s| Target::of(s).to_string());
                match result {
                    None => {
                        if let Some(old) = link.take() {
                            old.conn.close().await;
                        }
                        retry_at = None;
                        self.status.send_modify(|s| {
                            s.target = None;
                            s.failing = false;
                        });
                    }
                    Some(Ok(())) => {
                        let was_failing = retry_at.take().is_some();
                        backoff.reset();
                        self.status.send_modify(|s| {
                            s.target = target.clone();
                            s.failing = false;
                        });
                        if was_failing {
                            info!(
                                target = target.as_deref().unwrap_or_default(),
                                "MySQL sink recovered: waiting runs were delivered"
                            );
                        }
                    }
                    Some(Err(e)) => {
                        self.metrics.sink_failed();
                        link = None;
                        let error = error_text(&e);
                        if retry_at.is_none() {
                            warn!(
                                target = target.as_deref().unwrap_or_default(),
                                error = %error,
                                "MySQL sink failing: runs wait in the outbox and are retried"
                            );
                        }
                        let wait = backoff.next_wait();
                        retry_at = Some(Instant::now() + wait);
                        self.status.send_modify(|s| {
                            s.target = target.clone();
                            s.failing = true;
                            s.last_error = Some(error);
                            s.last_error_at = Some(Utc::now());
                        });
                    }
                }
                self.refresh_pending().await;
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            try_now = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                changed = self.state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = self.state.borrow_and_update().settings.mysql.clone();
                    let changed = now != seen;
                    if changed {
                        // New settings: try them at once.
                        seen = now;
                        backoff.reset();
                        retry_at = None;
                    }
                    changed
                }
                _ = self.outbox.staged() => {
                    // While failing, new runs wait for the next try.
                    if retry_at.is_some() {
                        self.refresh_pending().await;
                    }
                    retry_at.is_none()
                }
                _ = retry => true,
            };
        }
        if let Some(link) = link {
            link.conn.close().await;
        }
    }

    /// Sends everything waiting. A failure on a connection opened earlier is tried once more on
    /// a new one: the server closes connections that were idle too long (`wait_timeout`).
    async fn deliver(
        &self,
        settings: &MysqlSettings,
        link: &mut Option<Link>,
    ) -> Result<(), SinkError> {
        let reused = link.as_ref().is_some_and(|l| l.settings == *settings);
        match self.send(settings, link).await {
            Err(_) if reused => {
                *link = None;
                self.send(settings, link).await
            }
            result => result,
        }
    }

    /// Sends everything waiting, batch by batch; each batch leaves the outbox once MySQL
    /// committed it.
    async fn send(
        &self,
        settings: &MysqlSettings,
        link: &mut Option<Link>,
    ) -> Result<(), SinkError> {
        if link.as_ref().is_some_and(|l| l.settings != *settings) {
            if let Some(old) = link.take() {
                old.conn.close().await;
            }
        }
        let link = match link {
            Some(link) => link,
            None => link.insert(Link {
                settings: settings.clone(),
                conn: mysql::Connection::open(settings).await?,
            }),
        };
        loop {
            let outbox = self.outbox.clone();
            let entries = blocking(move || outbox.peek(BATCH)).await?;
            if entries.is_empty() {
                return Ok(());
            }
            let runs: Vec<&Run> = entries.iter().map(|e| &e.run).collect();
            link.conn
                .write(&runs, settings.log_lines, &self.logs)
                .await?;
            let count = entries.len() as u64;
            let outbox = self.outbox.clone();
            let pending = blocking(move || {
                outbox.ack(&entries)?;
                outbox.len()
            })
            .await?;
            self.metrics.sink_delivered(count);
            self.metrics
                .sink_state(pending, self.status.borrow().failing);
            self.status.send_modify(|s| {
                s.delivered += count;
                s.pending = pending;
                s.last_delivery_at = Some(Utc::now());
            });
        }
    }

    async fn refresh_pending(&self) {
        let outbox = self.outbox.clone();
        match blocking(move || outbox.len()).await {
            Ok(pending) => {
                self.metrics
                    .sink_state(pending, self.status.borrow().failing);
                self.status.send_if_modified(|s| {
                    let changed = s.pending != pending;
                    s.pending = pending;
                    changed
                });
            }
            Err(e) => warn!(error = %error_text(&e), "reading the MySQL outbox failed"),
        }
    }
}

/// Runs a redb call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(crate::store::StoreError::Db(e.to_string())))
        .map_err(SinkError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_and_resets() {
        let mut b = RETRY_WAITS;
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }
}
