//! The replicated state machine's data and its pure transition function.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{ClusterSettings, Invalid, Task, TaskId};
use crate::store::{Store, StoreError, Write};

/// What every node agrees on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub tasks: BTreeMap<TaskId, Task>,
    pub settings: ClusterSettings,
    /// The newest cron slot each task has fired (committed before the run is dispatched).
    pub last_fired: BTreeMap<TaskId, DateTime<Utc>>,
}

/// One change to the state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Create or replace a task (by id). Names are unique.
    PutTask(Task),
    RemoveTask(TaskId),
    Settings(ClusterSettings),
    /// Record that `slot` of `task` fired; slots only move forward.
    FireSlot {
        task: TaskId,
        slot: DateTime<Utc>,
    },
    SetEnabled {
        task: TaskId,
        enabled: bool,
    },
}

impl State {
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        Ok(Self {
            tasks: store
                .tasks()?
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect(),
            settings: store.cluster_settings()?.unwrap_or_default(),
            last_fired: store.last_fired()?,
        })
    }

    pub fn task_by_name(&self, name: &str) -> Option<&Task> {
        self.tasks.values().find(|t| t.name == name)
    }

    /// Tasks in the order the UI lists them: oldest first (ids are time-ordered).
    pub fn tasks_in_order(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Applies `change` and returns what must be stored, or why it was refused.
    pub fn apply(&mut self, change: Change) -> Result<Vec<Write>, Invalid> {
        match change {
            Change::PutTask(task) => {
                if let Some(other) = self.task_by_name(&task.name).filter(|t| t.id != task.id) {
                    return Err(Invalid::field(
                        "name",
                        format!(
                            "another task ({}) is already called `{}`",
                            other.id, task.name
                        ),
                    ));
                }
                self.tasks.insert(task.id.clone(), task.clone());
                Ok(vec![Write::PutTask(task)])
            }
            Change::RemoveTask(id) => {
                if self.tasks.remove(&id).is_none() {
                    return Err(Invalid::field("id", format!("no task {id}")));
                }
                self.last_fired.remove(&id);
                Ok(vec![Write::RemoveTask(id)])
            }
            Change::Settings(settings) => {
                self.settings = settings.clone();
                Ok(vec![Write::ClusterSettings(settings)])
            }
            Change::FireSlot { task, slot } => {
                if !self.tasks.contains_key(&task) {
                    return Err(Invalid::field("id", format!("no task {task}")));
                }
                if self.last_fired.get(&task).is_some_and(|last| *last >= slot) {
                    return Err(Invalid::field(
                        "slot",
                        format!("slot {slot} of {task} already fired"),
                    ));
                }
                self.last_fired.insert(task.clone(), slot);
                Ok(vec![Write::LastFired(task, slot)])
            }
            Change::SetEnabled { task, enabled } => {
                let Some(t) = self.tasks.get_mut(&task) else {
                    return Err(Invalid::field("id", format!("no task {task}")));
                };
                t.enabled = enabled;
                t.updated_at = Utc::now();
                Ok(vec![Write::PutTask(t.clone())])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, name: &str) -> Task {
        Task::sample(id, name)
    }

    #[test]
    fn names_are_unique_and_slots_move_forward() {
        let mut s = State::default();
        s.apply(Change::PutTask(task("a", "one"))).expect("first");
        assert!(s.apply(Change::PutTask(task("b", "one"))).is_err(), "clash");
        s.apply(Change::PutTask(task("a", "renamed")))
            .expect("rename self");
        let t0 = Utc::now();
        s.apply(Change::FireSlot {
            task: TaskId("a".into()),
            slot: t0,
        })
        .expect("fire");
        assert!(
            s.apply(Change::FireSlot {
                task: TaskId("a".into()),
                slot: t0
            })
            .is_err(),
            "twice"
        );
        assert!(
            s.apply(Change::FireSlot {
                task: TaskId("zz".into()),
                slot: t0
            })
            .is_err()
        );
        s.apply(Change::RemoveTask(TaskId("a".into())))
            .expect("remove");
        assert!(s.last_fired.is_empty());
    }
}
