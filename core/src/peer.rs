//! What nodes announce about themselves over the mesh, and a peer as the other layers see it.

use serde::{Deserialize, Serialize};

/// What a node gossips about itself, on change and every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Announcement {
    pub peer_id: String,
    pub name: String,
    pub version: String,
    /// Configured plus detected (`os=`, `arch=`, `host=`).
    pub dependencies: Vec<String>,
    pub slots_total: u32,
    pub slots_free: u32,
    /// 1-minute load average, as of this announcement; it travels with the node's beats (the
    /// peers it beats hold the newest), and moving is no news.
    pub load: f32,
    /// Runs in progress on the node.
    pub running: u32,
    pub ui_url: String,
    /// Where its p2p endpoint listens (multiaddrs); how others learn to reach it.
    pub addrs: Vec<String>,
    /// Increases with every announcement of one node start; older ones are ignored.
    pub seq: u64,
    /// Where the node stands in the replicated state; `None` while it has no cluster.
    #[serde(default)]
    pub cluster: Option<ClusterBadge>,
    /// This start of the node: when its process started, in microseconds since the epoch, new
    /// at every start. The leader notes it on each run it places there (`Run::node_start`).
    /// `None` from versions without it.
    #[serde(default)]
    pub start: Option<u64>,
}

/// A node's place in its Raft cluster, as it announces it: enough for every other node to run the
/// autopilot's decisions and to show leader, voters and lag from mesh data alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterBadge {
    /// The cluster's id (see `model::ClusterIdentity`).
    pub id: u64,
    pub term: u64,
    pub voter: bool,
    pub leader: bool,
    /// The index of the last change this node has applied.
    pub applied: u64,
    /// The index of the last entry in this node's log.
    pub last_log: u64,
    /// The digest of its agreed state at `applied` (consensus `State::digest`): nodes that
    /// applied the same entries announce the same one. `None` from versions without it.
    #[serde(default)]
    pub state_hash: Option<u64>,
}

/// Limits on a peer's announcement, so a bad peer cannot flood memory.
const MAX_LIST: usize = 256;
const MAX_TEXT: usize = 512;

impl Announcement {
    /// A node with defaults (`node-<peer_id>`, 4 free slots, no cluster), for the tests of
    /// every layer.
    pub fn sample(peer_id: &str, seq: u64) -> Self {
        Self {
            peer_id: peer_id.into(),
            name: format!("node-{peer_id}"),
            version: "0".into(),
            dependencies: vec![],
            slots_total: 4,
            slots_free: 4,
            load: 0.0,
            running: 0,
            ui_url: "http://127.0.0.1:8080".into(),
            addrs: vec![],
            seq,
            cluster: None,
            start: None,
        }
    }

    /// Whether this announcement tells peers something `sent` did not, enough to send it at once:
    /// anything but its number, its load (which travels with beats) and the progress of the
    /// node's state (applied and logged index, digest). The progress goes out with the next
    /// refresh; the leader learns a follower's progress from Raft itself.
    pub fn is_news_after(&self, sent: &Announcement) -> bool {
        let mut same = self.clone();
        same.seq = sent.seq;
        same.load = sent.load;
        if let (Some(now), Some(then)) = (same.cluster.as_mut(), sent.cluster.as_ref()) {
            now.applied = then.applied;
            now.last_log = then.last_log;
            now.state_hash = then.state_hash;
        }
        same != *sent
    }

    /// Checks an announcement from the wire; says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.dependencies.len() > MAX_LIST || self.addrs.len() > MAX_LIST {
            return Err("too many dependencies or addresses".into());
        }
        let texts = [&self.peer_id, &self.name, &self.version, &self.ui_url];
        if texts
            .into_iter()
            .chain(&self.dependencies)
            .chain(&self.addrs)
            .any(|t| t.len() > MAX_TEXT)
        {
            return Err("a field is too long".into());
        }
        if !(self.ui_url.is_empty()
            || self.ui_url.starts_with("http://")
            || self.ui_url.starts_with("https://"))
        {
            return Err("ui_url is not an http(s) URL".into());
        }
        Ok(())
    }
}

/// A peer as the UI and the scheduler see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerInfo {
    #[serde(flatten)]
    pub announcement: Announcement,
    /// Milliseconds since it was last known alive: heard itself (its last announcement or
    /// beat), or named live by a voter that hears it (see `docs/ARCHITECTURE.md`, mesh).
    pub last_seen_ms: u64,
    /// Milliseconds since this node last heard it itself (what the always-task lease counts).
    #[serde(default)]
    pub heard_ms: u64,
    /// Whether this node has a direct connection to it.
    pub connected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_peers_act_on_is_news() {
        let sent = Announcement {
            cluster: Some(ClusterBadge {
                id: 1,
                term: 2,
                voter: true,
                leader: false,
                applied: 10,
                last_log: 10,
                state_hash: Some(7),
            }),
            ..Announcement::sample("a", 1)
        };
        let mut later = Announcement {
            seq: 2,
            load: 0.4,
            ..sent.clone()
        };
        let badge = later.cluster.as_mut().unwrap();
        (badge.applied, badge.last_log, badge.state_hash) = (12, 13, Some(8));
        assert!(!later.is_news_after(&sent), "counters and load noise wait");
        later.load = 3.5;
        assert!(!later.is_news_after(&sent), "the load goes with the beats");
        later.load = 0.0;
        later.slots_free = 3;
        assert!(later.is_news_after(&sent), "a slot taken");
        later.slots_free = 4;
        later.cluster.as_mut().unwrap().leader = true;
        assert!(later.is_news_after(&sent), "a new leader");
        later.cluster = None;
        assert!(later.is_news_after(&sent), "left the cluster");
    }

    #[test]
    fn oversized_announcements_are_refused() {
        let mut a = Announcement::sample("a", 1);
        a.dependencies = vec!["x".into(); 1000];
        assert!(a.check().is_err());
        let mut b = Announcement::sample("b", 1);
        b.ui_url = "javascript:alert(1)".into();
        assert!(b.check().is_err());
        assert!(Announcement::sample("c", 1).check().is_ok());
    }
}
