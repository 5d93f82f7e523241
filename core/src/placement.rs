//! Where a run goes: the leader's choice among the live nodes, as a pure function (the caller
//! gathers the candidates, loads included).
//!
//! A node can take a task when its dependencies include all of the task's. Among those, the one
//! with the most free slots wins, then the lower load, then the lower PeerId (so that every
//! leader picks the same). Placement `all` takes every matching node, whatever its slots (each
//! node queues beyond its slots itself). A node an operator drained takes none.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::model::{NodeSettings, Placement, Task};
use crate::peer::PeerInfo;

/// A peer whose announcement is younger than this is live (it can take runs).
pub const LIVE: Duration = Duration::from_secs(5);

/// A live node as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub peer_id: String,
    pub name: String,
    pub dependencies: Vec<String>,
    pub slots: u32,
    pub load: f32,
    /// The node's current start, as it announces it (`Announcement::start`).
    pub start: Option<u64>,
    /// Drained by an operator: it takes no new run.
    pub drained: bool,
}

impl Candidate {
    /// This node, from its settings, its start and its current load (the caller reads it).
    pub fn this_node(peer_id: &str, node: &NodeSettings, start: Option<u64>, load: f32) -> Self {
        Self {
            peer_id: peer_id.to_owned(),
            name: node.name.clone(),
            dependencies: node.fulfilled(),
            slots: node.slots,
            load,
            start,
            drained: false,
        }
    }
}

/// The nodes that can take runs: `this` and the live peers of the same cluster, each marked
/// when it is in `drained` (PeerIds).
pub fn live(
    this: Candidate,
    peers: &[PeerInfo],
    cluster: Option<u64>,
    drained: &BTreeSet<String>,
) -> Vec<Candidate> {
    let others = peers
        .iter()
        .filter(|p| Duration::from_millis(p.last_seen_ms) < LIVE)
        .filter(|p| p.announcement.cluster.map(|b| b.id) == cluster)
        .map(|p| {
            let a = &p.announcement;
            Candidate {
                peer_id: a.peer_id.clone(),
                name: a.name.clone(),
                dependencies: a.dependencies.clone(),
                slots: a.slots_total,
                load: a.load,
                start: a.start,
                drained: false,
            }
        });
    std::iter::once(this)
        .chain(others)
        .map(|mut c| {
            c.drained = drained.contains(&c.peer_id);
            c
        })
        .collect()
}

/// Why no live node can run `task`, if none can.
pub fn why_not(task: &Task, candidates: &[Candidate]) -> Option<String> {
    match place(task, candidates, &HashMap::new()) {
        Err(NoPlace::NoMatch(why)) => Some(why),
        _ => None,
    }
}

/// Why a run has no place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlace {
    /// No live node fulfils the task's dependencies; says which ones are missing.
    NoMatch(String),
    /// Matching nodes exist, but none has a free slot: the run waits.
    Full,
}

impl std::fmt::Display for NoPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPlace::NoMatch(why) => write!(f, "{why}"),
            NoPlace::Full => write!(f, "every matching node is busy"),
        }
    }
}

/// The nodes that take a run of `task`. `busy` counts the runs each node (by PeerId) already
/// has.
pub fn place<'a>(
    task: &Task,
    candidates: &'a [Candidate],
    busy: &HashMap<String, u32>,
) -> Result<Vec<&'a Candidate>, NoPlace> {
    let needs = &task.spec.dependencies;
    let fulfils = |c: &&Candidate| needs.iter().all(|d| c.dependencies.contains(d));
    let matching: Vec<&Candidate> = candidates
        .iter()
        .filter(fulfils)
        .filter(|c| !c.drained)
        .collect();
    if matching.is_empty() {
        let drained: Vec<&str> = candidates
            .iter()
            .filter(fulfils)
            .map(|c| c.name.as_str())
            .collect();
        return Err(NoPlace::NoMatch(match drained.is_empty() {
            true => missing(needs, candidates),
            false => format!(
                "every live node that could run it is drained: {}",
                drained.join(", ")
            ),
        }));
    }
    if task.placement == Placement::All {
        return Ok(matching);
    }
    let free = |c: &Candidate| {
        c.slots
            .saturating_sub(busy.get(&c.peer_id).copied().unwrap_or(0))
    };
    let best = matching.into_iter().filter(|c| free(c) > 0).max_by(|a, b| {
        free(a)
            .cmp(&free(b))
            .then(b.load.total_cmp(&a.load))
            .then(b.peer_id.cmp(&a.peer_id))
    });
    best.map(|c| vec![c]).ok_or(NoPlace::Full)
}

/// "no live node has gpu=nvidia", or, when each dependency is somewhere but never all on one
/// node, "no live node has all of a, b".
fn missing(needs: &[String], candidates: &[Candidate]) -> String {
    let absent: Vec<&str> = needs
        .iter()
        .filter(|d| !candidates.iter().any(|c| c.dependencies.contains(d)))
        .map(String::as_str)
        .collect();
    match absent.is_empty() {
        false => format!("no live node has {}", absent.join(", ")),
        true => format!("no live node has all of {}", needs.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, deps: &[&str], slots: u32, load: f32) -> Candidate {
        Candidate {
            peer_id: id.into(),
            name: format!("node-{id}"),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
            slots,
            load,
            start: None,
            drained: false,
        }
    }

    fn task(deps: &[&str], placement: Placement) -> Task {
        let mut t = Task::sample("t", "t");
        t.spec.dependencies = deps.iter().map(|d| d.to_string()).collect();
        t.placement = placement;
        t
    }

    fn ids(placed: Result<Vec<&Candidate>, NoPlace>) -> Result<Vec<String>, NoPlace> {
        placed.map(|v| v.iter().map(|c| c.peer_id.clone()).collect())
    }

    #[test]
    fn runs_go_to_matching_nodes_by_free_slots_then_load() {
        let nodes = [
            node("a", &["os=linux"], 4, 0.1),
            node("b", &["os=linux", "gpu=nvidia"], 4, 0.9),
            node("c", &["os=linux", "gpu=nvidia"], 4, 0.2),
        ];
        let none = HashMap::new();
        let gpu = task(&["gpu=nvidia"], Placement::One);
        assert_eq!(
            ids(place(&gpu, &nodes, &none)),
            Ok(vec!["c".into()]),
            "lower load"
        );
        let busy = HashMap::from([("c".to_string(), 3)]);
        assert_eq!(
            ids(place(&gpu, &nodes, &busy)),
            Ok(vec!["b".into()]),
            "more free slots"
        );
        let full = HashMap::from([("b".to_string(), 4), ("c".to_string(), 4)]);
        assert_eq!(ids(place(&gpu, &nodes, &full)), Err(NoPlace::Full));
        let all = task(&["gpu=nvidia"], Placement::All);
        assert_eq!(
            ids(place(&all, &nodes, &full)),
            Ok(vec!["b".into(), "c".into()]),
            "all ignores slots"
        );
        let any = task(&[], Placement::One);
        assert_eq!(ids(place(&any, &nodes, &none)), Ok(vec!["a".into()]));
    }

    #[test]
    fn a_drained_node_takes_no_run_and_a_task_only_it_could_run_says_so() {
        let mut nodes = [
            node("a", &["os=linux"], 4, 0.0),
            node("b", &["os=linux", "gpu=nvidia"], 4, 0.9),
        ];
        nodes[0].drained = true;
        let none = HashMap::new();
        let any = task(&[], Placement::One);
        assert_eq!(ids(place(&any, &nodes, &none)), Ok(vec!["b".into()]));
        let all = task(&["os=linux"], Placement::All);
        assert_eq!(ids(place(&all, &nodes, &none)), Ok(vec!["b".into()]));
        nodes[1].drained = true;
        assert_eq!(
            place(&any, &nodes, &none),
            Err(NoPlace::NoMatch(
                "every live node that could run it is drained: node-a, node-b".into()
            ))
        );
        let gpu = task(&["arch=riscv64"], Placement::One);
        assert_eq!(
            place(&gpu, &nodes, &none),
            Err(NoPlace::NoMatch("no live node has arch=riscv64".into())),
            "what is missing comes before what is drained"
        );
    }

    #[test]
    fn live_marks_the_drained_nodes() {
        let this = node("a", &[], 4, 0.0);
        let drained = BTreeSet::from(["a".to_string()]);
        assert!(live(this.clone(), &[], None, &drained)[0].drained);
        assert!(!live(this, &[], None, &BTreeSet::new())[0].drained);
    }

    #[test]
    fn an_unplaceable_task_says_what_is_missing() {
        let nodes = [
            node("a", &["os=linux"], 4, 0.0),
            node("b", &["gpu=nvidia"], 4, 0.0),
        ];
        let none = HashMap::new();
        let t = task(&["os=linux", "arch=riscv64"], Placement::One);
        assert_eq!(
            place(&t, &nodes, &none),
            Err(NoPlace::NoMatch("no live node has arch=riscv64".into()))
        );
        let t = task(&["os=linux", "gpu=nvidia"], Placement::One);
        assert_eq!(
            place(&t, &nodes, &none),
            Err(NoPlace::NoMatch(
                "no live node has all of os=linux, gpu=nvidia".into()
            ))
        );
    }
}
