//! The live table of peers, built from their announcements.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use taskmesh_core::peer::{Announcement, ClusterBadge, PeerInfo};

/// Reads an announcement gossiped by `source` (a PeerId as text): it must be JSON, describe its
/// sender, and pass [`Announcement::check`]; says what is wrong.
pub fn decode_announcement(data: &[u8], source: &str) -> Result<Announcement, String> {
    let announcement: Announcement =
        serde_json::from_slice(data).map_err(|e| format!("unreadable announcement: {e}"))?;
    if announcement.peer_id != source {
        return Err("an announcement for another peer id".into());
    }
    announcement.check()?;
    Ok(announcement)
}

/// The 1-minute load average, rounded to a tenth (so that noise does not count as a change).
pub fn load_average() -> f32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f32>().ok())
        .map_or(0.0, |l| (l * 10.0).round() / 10.0)
}

struct Entry {
    announcement: Announcement,
    /// When this node last heard the peer itself.
    seen: Instant,
    /// When a voter last named the peer live with this announcement ([`PeerTable::vouch`]).
    vouched: Option<Instant>,
}

impl Entry {
    /// When the peer was last known alive, heard or vouched for.
    fn alive(&self) -> Instant {
        self.vouched.map_or(self.seen, |v| v.max(self.seen))
    }
}

/// Live peers by PeerId: refreshed by announcements and beats, and by voters that vouch for
/// them; expired after silence. Pure data.
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
                        vouched: None,
                    },
                );
                true
            }
        }
    }

    /// Takes a peer's beat: it is alive, its current announcement is number `seq`, and its
    /// load average is `load`. Returns true when that is an announcement this table does not
    /// hold (an unknown peer, or a newer announcement that did not arrive), which the caller
    /// then asks the peer for.
    pub fn beat(&mut self, peer_id: &str, seq: u64, load: f32, now: Instant) -> bool {
        match self.entries.get_mut(peer_id) {
            Some(entry) if entry.announcement.seq == seq => {
                entry.seen = now;
                entry.announcement.load = load;
                false
            }
            Some(entry) => seq > entry.announcement.seq,
            None => true,
        }
    }

    /// Takes a voter's word that the peer is alive (it heard the peer itself), holding
    /// announcement `seq` of it when it made its list. Returns true, as [`Self::beat`] does,
    /// when that is an announcement this table does not hold: an unknown peer, or a newer one.
    pub fn vouch(&mut self, peer_id: &str, seq: u64, now: Instant) -> bool {
        match self.entries.get_mut(peer_id) {
            Some(entry) => {
                entry.vouched = Some(now);
                seq > entry.announcement.seq
            }
            None => true,
        }
    }

    /// Takes back a voter's word for a peer (the voter no longer names it): it stays listed
    /// only while it is heard, or until another voter vouches for it again.
    pub fn unvouch(&mut self, peer_id: &str) {
        if let Some(entry) = self.entries.get_mut(peer_id) {
            entry.vouched = None;
        }
    }

    /// The peers this node heard itself within `ttl`, with the announcement it holds of each,
    /// in PeerId order: what a voter vouches for.
    pub fn heard_within(&self, now: Instant, ttl: Duration) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) <= ttl)
            .map(|(id, e)| (id.clone(), e.announcement.seq))
            .collect()
    }

    /// Drops peers silent for longer than `ttl` (neither heard nor vouched for); returns their
    /// ids.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.alive()) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.entries.remove(id);
        }
        gone
    }

    /// Drops a peer at once (its process is known to be gone); returns whether it was listed.
    pub fn remove(&mut self, peer_id: &str) -> bool {
        self.entries.remove(peer_id).is_some()
    }

    /// The addresses a listed peer announced.
    pub fn addrs_of(&self, peer_id: &str) -> Vec<String> {
        self.entries
            .get(peer_id)
            .map(|e| e.announcement.addrs.clone())
            .unwrap_or_default()
    }

    pub fn contains(&self, peer_id: &str) -> bool {
        self.entries.contains_key(peer_id)
    }

    /// The announcement held of a peer.
    pub fn get(&self, peer_id: &str) -> Option<&Announcement> {
        self.entries.get(peer_id).map(|e| &e.announcement)
    }

    /// The peers with their ages as of `now`, by name.
    pub fn snapshot(&self, now: Instant, connected: impl Fn(&str) -> bool) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .entries
            .values()
            .map(|e| PeerInfo {
                announcement: e.announcement.clone(),
                last_seen_ms: now.saturating_duration_since(e.alive()).as_millis() as u64,
                heard_ms: now.saturating_duration_since(e.seen).as_millis() as u64,
                connected: connected(&e.announcement.peer_id),
            })
            .collect();
        peers.sort_by(|a, b| a.announcement.name.cmp(&b.announcement.name));
        peers
    }
}

/// The peers as the mesh actor last published them, and the instant their ages were taken.
///
/// The actor publishes when something changes, not as time passes, so a snapshot can be old
/// when it is read: [`PeerList::as_of`] adds the time since to every age. A peer nobody has
/// heard since then looks exactly as old as it is (what the always-task lease and placement
/// count), however long the actor had nothing to publish.
#[derive(Clone, Debug)]
pub struct PeerList {
    taken: Instant,
    peers: Arc<Vec<PeerInfo>>,
}

impl PeerList {
    pub fn new(taken: Instant, peers: Vec<PeerInfo>) -> Self {
        Self {
            taken,
            peers: Arc::new(peers),
        }
    }

    /// The peers with their ages as of `now` (never younger than when they were taken).
    pub fn as_of(&self, now: Instant) -> Arc<Vec<PeerInfo>> {
        let since = now.saturating_duration_since(self.taken).as_millis() as u64;
        if since == 0 {
            return self.peers.clone();
        }
        Arc::new(
            self.peers
                .iter()
                .map(|p| PeerInfo {
                    last_seen_ms: p.last_seen_ms.saturating_add(since),
                    heard_ms: p.heard_ms.saturating_add(since),
                    ..p.clone()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_announcements_win_and_silent_peers_expire() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        assert!(table.observe(Announcement::sample("a", 2), t0));
        assert!(
            !table.observe(Announcement::sample("a", 2), t0),
            "same data is no change"
        );
        assert!(
            !table.observe(Announcement::sample("a", 1), t0),
            "older is ignored"
        );
        let mut busy = Announcement::sample("a", 3);
        busy.running = 2;
        assert!(table.observe(busy, t0));
        table.observe(Announcement::sample("b", 1), t0 + Duration::from_secs(5));
        let gone = table.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(gone, vec!["a".to_string()]);
        assert!(table.contains("b"));
        let snap = table.snapshot(t0 + Duration::from_secs(11), |_| true);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].last_seen_ms, 6000);
    }

    #[test]
    fn a_published_list_ages_as_it_waits_to_be_read() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.observe(Announcement::sample("a", 1), t0);
        let t1 = t0 + Duration::from_millis(300);
        let list = PeerList::new(t1, table.snapshot(t1, |_| true));
        assert_eq!(list.as_of(t1)[0].heard_ms, 300);
        // Nothing published for 6 s: the peer reads 6.3 s old, not 0.3 s.
        let later = list.as_of(t1 + Duration::from_secs(6))[0].clone();
        assert_eq!((later.heard_ms, later.last_seen_ms), (6_300, 6_300));
        assert_eq!(list.as_of(t0)[0].heard_ms, 300, "never younger than taken");
    }

    #[test]
    fn a_beat_keeps_its_peer_only_if_it_names_the_announcement_held() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.observe(Announcement::sample("a", 5), t0);
        let t1 = t0 + Duration::from_secs(8);
        assert!(
            !table.beat("a", 5, 1.5, t1),
            "the announcement held: nothing to ask"
        );
        assert!(!table.beat("a", 4, 9.0, t1), "an old beat: nothing to ask");
        assert!(
            table.beat("a", 6, 9.0, t1),
            "a newer announcement was missed: ask for it"
        );
        assert!(
            table.beat("b", 1, 0.0, t1),
            "an unknown peer: ask who it is"
        );
        assert!(
            table
                .expire(t0 + Duration::from_secs(12), Duration::from_secs(10))
                .is_empty(),
            "the beat at 8 s kept a alive"
        );
        let a = &table.snapshot(t1, |_| true)[0];
        assert_eq!(a.last_seen_ms, 0);
        assert_eq!(
            a.announcement.load, 1.5,
            "the load of the beat that matched"
        );
    }

    #[test]
    fn a_vouch_keeps_a_peer_listed_but_not_heard() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut table = PeerTable::default();
        table.observe(Announcement::sample("a", 5), t0);
        table.observe(Announcement::sample("b", 2), t0);
        let t1 = t0 + Duration::from_secs(8);
        assert!(!table.vouch("a", 5, t1), "the announcement held");
        assert!(table.vouch("a", 6, t1), "a newer one: ask for it");
        assert!(table.vouch("c", 1, t1), "an unknown peer: ask who it is");
        assert!(
            !table.contains("c"),
            "a vouch lists no peer it does not know"
        );
        let t2 = t0 + Duration::from_secs(12);
        assert_eq!(table.expire(t2, ttl), vec!["b".to_string()]);
        let a = &table.snapshot(t2, |_| true)[0];
        assert_eq!((a.last_seen_ms, a.heard_ms), (4000, 12000));
        assert!(
            table.heard_within(t2, ttl).is_empty(),
            "a voter vouches only for what it heard itself"
        );
        assert_eq!(table.heard_within(t1, ttl), vec![("a".to_string(), 5)]);
        table.unvouch("a");
        assert_eq!(
            table.expire(t2, ttl),
            vec!["a".to_string()],
            "without the word, a peer not heard for 12 s is gone"
        );
    }
}
