//! The lease under which a node keeps the always-tasks it holds: at most one instance of a
//! daemon with placement `one`, under crashes and partitions.
//!
//! The leader gives an always-task to one node (`State::holders`) and gives it to another only
//! once the holder has been silent for [`ClusterSettings::daemon_handover`]. A holder cut off
//! from the cluster cannot hear that decision, so it must stop by itself first: it keeps its
//! daemons only while it hears a majority of the voters (their announcements, which come every
//! 2 s, within [`ClusterSettings::lease_term`], half of `peer_timeout`). Once it does not, it
//! stops them (SIGTERM, SIGKILL after the kill grace), well before the hand-over: the hand-over
//! waits for the lease term, the grace and a margin. A node also takes up the lease only once
//! its state has caught up with the leader's (its applied index reached what the leader
//! announced when this node first heard it), so that a node restarted with an old state does
//! not start a daemon the leader has moved away meanwhile.
//!
//! A node whose process dies takes its daemons with it (see `executor::reaper`); the lease is for
//! the node that lives on without the cluster.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::Consensus;
use crate::mesh::{MeshHandle, PeerInfo};
use crate::model::ClusterSettings;

/// How often the lease is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Whether `me` hears a majority of `voters`: itself, and those it heard itself (an
/// announcement or a beat, not another voter's word) within `within`.
pub fn hears_majority(me: &str, voters: &[String], peers: &[PeerInfo], within: Duration) -> bool {
    let heard = voters
        .iter()
        .filter(|v| {
            v.as_str() == me
                || peers.iter().any(|p| {
                    p.announcement.peer_id == **v && Duration::from_millis(p.heard_ms) < within
                })
        })
        .count();
    !voters.is_empty() && heard * 2 > voters.len()
}

/// The applied index announced by the leader of the highest term among the announcements
/// younger than `within`: where this node's state must reach before it may act on it.
fn leader_applied(peers: &[PeerInfo], within: Duration) -> Option<u64> {
    peers
        .iter()
        .filter(|p| Duration::from_millis(p.heard_ms) < within)
        .filter_map(|p| p.announcement.cluster)
        .filter(|b| b.leader)
        .max_by_key(|b| b.term)
        .map(|b| b.applied)
}

/// Keeps the lease's current value in a watch.
pub struct LeaseKeeper {
    pub consensus: Consensus,
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    pub peer_id: String,
    pub held: watch::Sender<bool>,
    pub cancel: CancellationToken,
}

impl LeaseKeeper {
    pub async fn run(self) {
        // Since when this node has not held the lease (its start, or the lapse); the state is
        // fresh again once it has applied what a leader announced after that.
        let mut without_since = tokio::time::Instant::now();
        let mut catch_up_to: Option<u64> = None;
        let mut fresh = false;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let state = self.consensus.state();
            let settings: &ClusterSettings = &state.settings;
            let term = settings.lease_term();
            let peers: Arc<Vec<PeerInfo>> = self
                .mesh
                .borrow()
                .as_ref()
                .map(|m| m.peers())
                .unwrap_or_default();
            let leading = self.consensus.leads_a_majority_within(term);
            if !fresh && state.caught_up {
                if catch_up_to.is_none() {
                    catch_up_to = leader_applied(&peers, without_since.elapsed());
                }
                fresh =
                    leading || catch_up_to.is_some_and(|target| self.consensus.applied() >= target);
            }
            let voters = self.consensus.voters();
            let held = fresh
                && (leading
                    || (!self.consensus.leads()
                        && hears_majority(&self.peer_id, &voters, &peers, term)));
            if !held && *self.held.borrow() {
                without_since = tokio::time::Instant::now();
                catch_up_to = None;
                fresh = false;
            }
            self.held.send_if_modified(|old| {
                if *old == held {
                    return false;
                }
                match held {
                    true => info!("this node holds its lease on always-tasks: it hears a majority of the voters"),
                    false => warn!(?term, "lease on always-tasks lapsed: this node has not heard a majority of the voters; stopping the always-tasks it holds"),
                }
                *old = held;
                true
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Announcement;

    fn peer(id: &str, heard_ms: u64) -> PeerInfo {
        PeerInfo {
            announcement: Announcement::sample(id, 1),
            // Vouched for by a voter just now: only hearing the peer itself counts.
            last_seen_ms: 0,
            heard_ms,
            connected: true,
        }
    }

    #[test]
    fn a_majority_counts_this_node_and_the_voters_heard_within_the_term() {
        let voters: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let term = Duration::from_secs(5);
        let fresh = [peer("b", 100), peer("c", 4_900)];
        assert!(hears_majority("a", &voters, &fresh, term));
        let stale = [peer("b", 100), peer("c", 5_000)];
        assert!(!hears_majority("a", &voters, &stale, term), "c is too old");
        // Peers that are not voters do not count.
        let learners = [peer("b", 100), peer("x", 100), peer("y", 100)];
        assert!(!hears_majority("a", &voters, &learners, term));
        // A single voter hears itself; no voters at all is no cluster, no lease.
        assert!(hears_majority("a", &["a".into()], &[], term));
        assert!(!hears_majority("a", &[], &fresh, term));
        // A learner needs a majority of the voters without itself.
        let three: Vec<String> = ["b", "c", "d"].map(String::from).to_vec();
        assert!(!hears_majority("a", &three, &[peer("b", 1)], term));
        assert!(hears_majority("a", &three, &fresh, term));
    }
}
