//! The agreed task list: tasks by id, with their names indexed.

use std::ops::Index;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use taskmesh_core::model::{Task, TaskId, When};

/// Tasks by id (ids are time-ordered, so this is also the order they were created in), which
/// task has which name, and which enabled tasks the scheduler looks at on each pass (cron and
/// always-tasks; a manual task costs it nothing).
///
/// All maps are persistent: a copy of the state shares them, and a change copies only the paths
/// it touches. It serialises as the map of tasks by id alone; the indexes are read back from the
/// tasks.
#[derive(Clone, Default)]
pub struct Tasks {
    by_id: OrdMap<TaskId, Arc<Task>>,
    by_name: OrdMap<String, TaskId>,
    cron: OrdSet<TaskId>,
    always: OrdSet<TaskId>,
    /// The wrapping sum of every task's [`super::json_hash`] (its share of the state's digest).
    hash_sum: u64,
}

impl Tasks {
    pub fn get(&self, id: &TaskId) -> Option<&Arc<Task>> {
        self.by_id.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Task>> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }

    pub fn contains_key(&self, id: &TaskId) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Oldest first.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Task>> {
        self.by_id.values()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &TaskId> {
        self.by_id.keys()
    }

    /// The wrapping sum of every task's hash, kept up to date by each change.
    pub fn hash_sum(&self) -> u64 {
        self.hash_sum
    }

    /// The enabled cron tasks, oldest first.
    pub fn enabled_cron(&self) -> impl Iterator<Item = &Arc<Task>> {
        self.cron.iter().filter_map(|id| self.by_id.get(id))
    }

    /// The enabled always-tasks, oldest first.
    pub fn enabled_always(&self) -> impl Iterator<Item = &Arc<Task>> {
        self.always.iter().filter_map(|id| self.by_id.get(id))
    }

    /// The tasks after `after` (all without it), oldest first: one page of the list.
    pub fn after(&self, after: Option<&TaskId>) -> impl Iterator<Item = &Arc<Task>> {
        use std::ops::Bound::{self, Excluded, Unbounded};
        let from: Bound<&TaskId> = after.map_or(Unbounded, Excluded);
        self.by_id
            .range::<_, TaskId>((from, Unbounded))
            .map(|(_, task)| task)
    }

    /// Adds or replaces a task (by id); the caller has checked that its name is free.
    pub fn insert(&mut self, task: Arc<Task>) -> Option<Arc<Task>> {
        let old = self.by_id.insert(task.id.clone(), task.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&task);
        old
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Arc<Task>> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    fn index(&mut self, task: &Task) {
        self.hash_sum = self.hash_sum.wrapping_add(super::json_hash(task));
        self.by_name.insert(task.name.clone(), task.id.clone());
        match &task.when {
            When::Cron { .. } if task.enabled => {
                self.cron.insert(task.id.clone());
            }
            When::Always if task.enabled => {
                self.always.insert(task.id.clone());
            }
            _ => {}
        }
    }

    fn unindex(&mut self, task: &Task) {
        self.hash_sum = self.hash_sum.wrapping_sub(super::json_hash(task));
        // A name another task has taken since (a rename within one batch) stays that task's.
        if self.by_name.get(&task.name) == Some(&task.id) {
            self.by_name.remove(&task.name);
        }
        self.cron.remove(&task.id);
        self.always.remove(&task.id);
    }
}

impl Index<&TaskId> for Tasks {
    type Output = Arc<Task>;

    fn index(&self, id: &TaskId) -> &Arc<Task> {
        &self.by_id[id]
    }
}

impl FromIterator<Task> for Tasks {
    fn from_iter<I: IntoIterator<Item = Task>>(tasks: I) -> Self {
        tasks.into_iter().map(Arc::new).collect()
    }
}

impl FromIterator<Arc<Task>> for Tasks {
    fn from_iter<I: IntoIterator<Item = Arc<Task>>>(tasks: I) -> Self {
        let mut out = Self::default();
        for task in tasks {
            out.insert(task);
        }
        out
    }
}

impl PartialEq for Tasks {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.by_id.iter()).finish()
    }
}

impl Serialize for Tasks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by_id = OrdMap::<TaskId, Arc<Task>>::deserialize(deserializer)?;
        Ok(by_id.into_iter().map(|(_, task)| task).collect())
    }
}
