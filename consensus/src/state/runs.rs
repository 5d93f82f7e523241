//! The agreed run ledger: runs by id, with each task's runs in order.

use std::ops::Index;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use taskmesh_core::model::{Run, RunId, RunStatus, TaskId, Trigger};

/// Runs by id, with indexes: each task's runs, the unfinished runs, and the lost runs no retry
/// names yet. Run ids are time-ordered, so every order is oldest first. What the scheduler and
/// the pages ask (the runs that wait or run, the newest run of a task, a task's page of history,
/// the oldest finished runs to prune) is each a walk of the entries asked for, not of the
/// ledger, which holds [`super::RUNS_PER_TASK`] finished runs of every task.
///
/// All maps are persistent: a copy of the state shares them, and a change copies only the paths
/// it touches. It serialises as the map of runs by id alone; the indexes are read back from the
/// runs.
#[derive(Clone, Default)]
pub struct ClusterRuns {
    by_id: OrdMap<RunId, Arc<Run>>,
    by_task: OrdMap<TaskId, OrdSet<RunId>>,
    unfinished: OrdSet<RunId>,
    /// Runs that ended `lost`.
    lost: OrdSet<RunId>,
    /// The runs that a retry in the ledger names as its origin, with how many do.
    retried: OrdMap<RunId, u32>,
    /// The wrapping sum of every run's [`super::json_hash`] (its share of the state's digest).
    hash_sum: u64,
}

impl ClusterRuns {
    pub fn get(&self, id: &RunId) -> Option<&Arc<Run>> {
        self.by_id.get(id)
    }

    pub fn contains_key(&self, id: &RunId) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Oldest first.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Run>> {
        self.by_id.values()
    }

    /// Oldest first.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &RunId> {
        self.by_id.keys()
    }

    /// The runs older than `before` (all without it), newest first.
    pub fn newest_before(&self, before: Option<&RunId>) -> impl Iterator<Item = &Arc<Run>> {
        use std::ops::Bound::{self, Excluded, Unbounded};
        let to: Bound<&RunId> = before.map_or(Unbounded, Excluded);
        self.by_id
            .range::<_, RunId>((Unbounded, to))
            .rev()
            .map(|(_, run)| run)
    }

    /// The runs of `task`, oldest first.
    pub fn of_task(&self, task: &TaskId) -> impl DoubleEndedIterator<Item = &Arc<Run>> {
        self.by_task
            .get(task)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.by_id.get(id))
    }

    /// The runs of `task` older than `before` (all without it), newest first.
    pub fn of_task_before(
        &self,
        task: &TaskId,
        before: Option<&RunId>,
    ) -> impl Iterator<Item = &Arc<Run>> {
        use std::ops::Bound::{self, Excluded, Unbounded};
        let to: Bound<&RunId> = before.map_or(Unbounded, Excluded);
        self.by_task
            .get(task)
            .into_iter()
            .flat_map(move |ids| ids.range::<_, RunId>((Unbounded, to)).rev())
            .filter_map(|id| self.by_id.get(id))
    }

    /// The wrapping sum of every run's hash, kept up to date by each change.
    pub fn hash_sum(&self) -> u64 {
        self.hash_sum
    }

    /// The unfinished runs (waiting, queued or running), oldest first.
    pub fn unfinished(&self) -> impl DoubleEndedIterator<Item = &Arc<Run>> {
        self.unfinished.iter().filter_map(|id| self.by_id.get(id))
    }

    /// The runs that ended `lost` and that no retry in the ledger names, oldest first.
    pub fn lost_unretried(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.lost
            .iter()
            .filter(|id| !self.retried.contains_key(*id))
            .filter_map(|id| self.by_id.get(id))
    }

    /// The newest run of `task`.
    pub fn last_of(&self, task: &TaskId) -> Option<&Arc<Run>> {
        let id = self.by_task.get(task)?.get_max()?;
        self.by_id.get(id)
    }

    /// Adds or replaces a run (by id).
    pub fn insert(&mut self, run: Arc<Run>) -> Option<Arc<Run>> {
        let old = self.by_id.insert(run.id.clone(), run.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&run);
        old
    }

    pub fn remove(&mut self, id: &RunId) -> Option<Arc<Run>> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    /// Removes every run of `task`; returns their ids.
    pub fn remove_task(&mut self, task: &TaskId) -> Vec<RunId> {
        let ids: Vec<RunId> = self
            .by_task
            .get(task)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        for id in &ids {
            self.remove(id);
        }
        ids
    }

    /// Removes the oldest finished runs of `task` beyond `keep`; returns their ids. Unfinished
    /// runs always stay.
    pub fn prune(&mut self, task: &TaskId, keep: usize) -> Vec<RunId> {
        let finished: Vec<RunId> = self
            .of_task(task)
            .filter(|r| r.status.is_final())
            .map(|r| r.id.clone())
            .collect();
        let excess = finished.len().saturating_sub(keep);
        let gone = finished[..excess].to_vec();
        for id in &gone {
            self.remove(id);
        }
        gone
    }

    fn index(&mut self, run: &Run) {
        self.hash_sum = self.hash_sum.wrapping_add(super::json_hash(run));
        self.by_task
            .entry(run.task_id.clone())
            .or_default()
            .insert(run.id.clone());
        if !run.status.is_final() {
            self.unfinished.insert(run.id.clone());
        }
        if run.status == RunStatus::Lost {
            self.lost.insert(run.id.clone());
        }
        if let Trigger::Retry { of, .. } = &run.trigger {
            *self.retried.entry(of.clone()).or_default() += 1;
        }
    }

    fn unindex(&mut self, run: &Run) {
        self.hash_sum = self.hash_sum.wrapping_sub(super::json_hash(run));
        if let Some(ids) = self.by_task.get_mut(&run.task_id) {
            ids.remove(&run.id);
            if ids.is_empty() {
                self.by_task.remove(&run.task_id);
            }
        }
        self.unfinished.remove(&run.id);
        self.lost.remove(&run.id);
        if let Trigger::Retry { of, .. } = &run.trigger
            && let Some(count) = self.retried.get_mut(of)
        {
            *count -= 1;
            if *count == 0 {
                self.retried.remove(of);
            }
        }
    }
}

impl Index<&RunId> for ClusterRuns {
    type Output = Arc<Run>;

    fn index(&self, id: &RunId) -> &Arc<Run> {
        &self.by_id[id]
    }
}

impl FromIterator<Run> for ClusterRuns {
    fn from_iter<I: IntoIterator<Item = Run>>(runs: I) -> Self {
        runs.into_iter().map(Arc::new).collect()
    }
}

impl FromIterator<Arc<Run>> for ClusterRuns {
    fn from_iter<I: IntoIterator<Item = Arc<Run>>>(runs: I) -> Self {
        let mut out = Self::default();
        for run in runs {
            out.insert(run);
        }
        out
    }
}

impl PartialEq for ClusterRuns {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl std::fmt::Debug for ClusterRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.by_id.iter()).finish()
    }
}

impl Serialize for ClusterRuns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClusterRuns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by_id = OrdMap::<RunId, Arc<Run>>::deserialize(deserializer)?;
        Ok(by_id.into_iter().map(|(_, run)| run).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use taskmesh_core::model::{Outcome, Trigger};

    /// Run `n` of `task`, finished when `finished`.
    fn run(task: &str, n: u32, finished: bool) -> Run {
        let mut run = Run::new(
            TaskId(task.into()),
            task.into(),
            Trigger::Manual,
            1,
            "n1".into(),
        );
        run.id = RunId(format!("r{n:04}"));
        if finished {
            run.finish(Outcome::Exited { code: 0 }, Utc::now());
        }
        run
    }

    #[test]
    fn the_index_follows_inserts_removals_and_pruning() {
        let mut runs = ClusterRuns::default();
        for n in 0..6 {
            runs.insert(Arc::new(run("a", n, true)));
            runs.insert(Arc::new(run("b", 100 + n, true)));
        }
        runs.insert(Arc::new(run("a", 50, false)));
        let a = TaskId("a".into());
        assert_eq!(runs.last_of(&a).map(|r| r.id.0.as_str()), Some("r0050"));
        let before: Vec<&str> = runs
            .of_task_before(&a, Some(&RunId("r0004".into())))
            .map(|r| r.id.0.as_str())
            .collect();
        assert_eq!(before, ["r0003", "r0002", "r0001", "r0000"]);
        assert_eq!(
            runs.prune(&a, 2),
            ["r0000", "r0001", "r0002", "r0003"].map(|id| RunId(id.into()))
        );
        let left: Vec<&str> = runs.of_task(&a).map(|r| r.id.0.as_str()).collect();
        assert_eq!(left, ["r0004", "r0005", "r0050"], "the running one stays");
        let newest: Vec<&str> = runs
            .newest_before(Some(&RunId("r0100".into())))
            .map(|r| r.id.0.as_str())
            .collect();
        assert_eq!(newest, ["r0050", "r0005", "r0004"]);
        assert_eq!(runs.remove_task(&a).len(), 3);
        assert_eq!(runs.len(), 6);
        assert!(runs.last_of(&a).is_none());
        // Read back from its JSON, the index is whole again.
        let json = serde_json::to_string(&runs).expect("encode");
        let back: ClusterRuns = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, runs);
        let b = TaskId("b".into());
        assert_eq!(back.of_task(&b).count(), 6);
    }
}
