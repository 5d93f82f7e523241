//! What nodes announce about themselves, and the live table of peers built from it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a node gossips about itself, on change and every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub peer_id: String,
    pub name: String,
    pub version: String,
    /// Configured plus detected (`os=`, `arch=`, `host=`).
    pub dependencies: Vec<String>,
    pub slots_total: u32,
    pub slots_free: u32,
    /// 1-minute load average.
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
}

/// A node's place in its Raft cluster, as it announces it: enough for every other node to run the
/// autopilot's decisions and to show leader, voters and lag from mesh data alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The 1-minute load average, rounded to a tenth (so that noise does not count as a change).
pub fn load_average() -> f32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f32>().ok())
        .map_or(0.0, |l| (l * 10.0).round() / 10.0)
}

/// Limits on a peer's announcement, so a bad peer cannot flood memory.
const MAX_LIST: usize = 256;
const MAX_TEXT: usize = 512;

impl Announcement {
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerInfo {
    #[serde(flatten)]
    pub announcement: Announcement,
    /// Milliseconds since its last announcement.
    pub last_seen_ms: u64,
    /// Whether this node has a direct connection to it.
    pub connected: bool,
}

struct Entry {
    announcement: Announcement,
    seen: Instant,
}

/// Live peers by PeerId: refreshed by announcements, expired after silence. Pure data.
#[derive(Default)]
pub struct PeerTable {
    entries: BTreeMap<String, Entry>,
}

impl PeerTable {
    /// Records an announcement; returns true when the visible data changed.
    pub fn observe(&mut self, announcement: Announcement, now: Instant) -> bool {
        match self.entries.get_mut(&announcement.peer_id) {
            Some(entry) if announcement.seq < entry.announcement.seq => false,
            Some(entry) => {
                let changed = entry.announcement != announcement;
                entry.announcement = announcement;
                entry.seen = now;
                changed
            }
            None => {
                self.entries.insert(
                    announcement.peer_id.clone(),
                    Entry {
                        announcement,
                        seen: now,
                    },
                );
                true
            }
        }
    }

    /// Drops peers silent for longer than `ttl`; returns their ids.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.entries.remove(id);
        }
        gone
    }

    pub fn contains(&self, peer_id: &str) -> bool {
        self.entries.contains_key(peer_id)
    }

    pub fn snapshot(&self, now: Instant, connected: impl Fn(&str) -> bool) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .entries
            .values()
            .map(|e| PeerInfo {
                announcement: e.announcement.clone(),
                last_seen_ms: now.saturating_duration_since(e.seen).as_millis() as u64,
                connected: connected(&e.announcement.peer_id),
            })
            .collect();
        peers.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(id: &str, seq: u64) -> Announcement {
        Announcement {
            peer_id: id.into(),
            name: format!("node-{id}"),
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
        }
    }

    #[test]
    fn newer_announcements_win_and_silent_peers_expire() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        assert!(table.observe(ann("a", 2), t0));
        assert!(!table.observe(ann("a", 2), t0), "same data is no change");
        assert!(!table.observe(ann("a", 1), t0), "older is ignored");
        let mut busy = ann("a", 3);
        busy.running = 2;
        assert!(table.observe(busy, t0));
        table.observe(ann("b", 1), t0 + Duration::from_secs(5));
        let gone = table.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(gone, vec!["a".to_string()]);
        assert!(table.contains("b"));
        let snap = table.snapshot(t0 + Duration::from_secs(11), |_| true);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].last_seen_ms, 6000);
    }

    #[test]
    fn oversized_announcements_are_refused() {
        let mut a = ann("a", 1);
        a.dependencies = vec!["x".into(); 1000];
        assert!(a.check().is_err());
        let mut b = ann("b", 1);
        b.ui_url = "javascript:alert(1)".into();
        assert!(b.check().is_err());
        assert!(ann("c", 1).check().is_ok());
    }
}
