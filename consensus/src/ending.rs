//! What the leader knows of runs that ended before its state shows it, for counting slots.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Change;
use taskmesh_core::model::RunId;

/// The runs this leader knows to have ended before the state shows it: those that changes on
/// their way through it end (from when it takes such a change until the change is applied or
/// refused), and those their node said had ended while their report waited for an earlier one
/// (`RaftRpc::Ended`). The scheduler counts them as ended, so their slots are given again sooner.
/// The node has freed the slot already, and each node's executor bounds its own runs whatever
/// the leader counts.
#[derive(Debug, Default)]
pub struct Ending {
    inner: Mutex<EndingInner>,
    /// Sent when runs are added.
    added: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct EndingInner {
    /// Each run with the number of changes on their way that end it.
    held: HashMap<RunId, usize>,
    /// Runs their node said had ended, until when that counts.
    hinted: HashMap<RunId, Instant>,
}

/// How long a run's node's word that it ended counts; its report commits long before.
const HINT_TTL: Duration = Duration::from_secs(5);
/// At most this many such runs are kept.
const MAX_HINTS: usize = 10_000;

impl Ending {
    /// The runs known to have ended.
    pub fn runs(&self) -> HashSet<RunId> {
        let now = Instant::now();
        let inner = self.lock();
        let hinted = inner.hinted.iter().filter(|(_, until)| **until > now);
        inner
            .held
            .keys()
            .chain(hinted.map(|(id, _)| id))
            .cloned()
            .collect()
    }

    /// Changes when runs are added.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.added.subscribe()
    }

    /// Notes the runs `change` ends until the returned guard drops.
    pub(super) fn hold(&self, change: &Change) -> EndingGuard<'_> {
        let ids: Vec<RunId> = change.ended_runs().cloned().collect();
        if !ids.is_empty() {
            let mut inner = self.lock();
            for id in &ids {
                *inner.held.entry(id.clone()).or_default() += 1;
            }
            drop(inner);
            self.added.send_replace(());
        }
        EndingGuard { ending: self, ids }
    }

    /// Notes runs that their node says have ended, for [`HINT_TTL`].
    pub(super) fn hint(&self, ids: &[RunId]) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.hinted.retain(|_, until| *until > now);
        let room = MAX_HINTS.saturating_sub(inner.hinted.len());
        inner
            .hinted
            .extend(ids.iter().take(room).map(|id| (id.clone(), now + HINT_TTL)));
        drop(inner);
        self.added.send_replace(());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndingInner> {
        self.inner
            .lock()
            .expect("the ending lock is never poisoned")
    }
}

pub(super) struct EndingGuard<'a> {
    ending: &'a Ending,
    ids: Vec<RunId>,
}

impl Drop for EndingGuard<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut inner = self.ending.lock();
        for id in &self.ids {
            if let Some(count) = inner.held.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    inner.held.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmesh_core::model::{Outcome, Run, TaskId, Trigger};

    fn run(ended: bool) -> Run {
        let mut run = Run::new(
            TaskId("t".into()),
            "t".into(),
            Trigger::Manual,
            1,
            "a".into(),
        );
        if ended {
            run.finish(Outcome::Exited { code: 0 }, chrono::Utc::now());
        }
        run
    }

    #[test]
    fn ending_holds_the_runs_a_change_ends_until_it_is_done() {
        let ending = Ending::default();
        let mut added = ending.subscribe();
        let (ended, running) = (run(true), run(false));
        let starts = Change::Runs(vec![running.clone()]);
        let ends = Change::Runs(vec![ended.clone(), running]);

        drop(ending.hold(&starts));
        assert!(
            !added.has_changed().unwrap(),
            "a change that ends nothing is not news"
        );

        let first = ending.hold(&ends);
        assert!(added.has_changed().unwrap());
        added.mark_unchanged();
        assert_eq!(ending.runs(), HashSet::from([ended.id.clone()]));
        let again = ending.hold(&ends);
        drop(first);
        assert_eq!(
            ending.runs(),
            HashSet::from([ended.id.clone()]),
            "held while any change that ends it is on its way"
        );
        drop(again);
        assert!(ending.runs().is_empty());
    }

    #[test]
    fn ending_takes_a_nodes_word_that_runs_ended_up_to_a_bound() {
        let ending = Ending::default();
        let added = ending.subscribe();
        let ids: Vec<RunId> = (0..MAX_HINTS + 10).map(|_| run(true).id).collect();
        ending.hint(&ids[..2]);
        assert!(added.has_changed().unwrap());
        assert_eq!(ending.runs(), ids[..2].iter().cloned().collect());
        ending.hint(&ids[2..]);
        assert_eq!(ending.runs().len(), MAX_HINTS, "bounded");
    }
}
