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
//! its state has caught up with the leader's (its applied index reached the leader's commit
//! index in the first Raft append request it took after its start or the lapse), so that a
//! node restarted with an old state does not start a daemon the leader has moved away
//! meanwhile, even in the moment before the leader announces its progress.
//!
//! A node whose process dies takes its daemons with it (see `executor::reaper`); the lease is for
//! the node that lives on without the cluster.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::{Consensus, LeaderContact};
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

/// Keeps the lease's current value in a watch.
pub struct LeaseKeeper {
    pub consensus: Consensus,
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    pub peer_id: String,
    pub held: watch::Sender<bool>,
    pub cancel: CancellationToken,
}

/// What one check of the lease goes by.
#[derive(Debug, Clone, Copy)]
struct Check {
    /// The state machine has applied what its log held at start.
    caught_up: bool,
    /// This node leads and a majority acknowledged it within the term.
    leading: bool,
    /// This node leads (acknowledged or not).
    leads: bool,
    hears_majority: bool,
    applied: u64,
    contact: LeaderContact,
}

/// The lease's memory between checks.
#[derive(Debug)]
struct Lease {
    /// The leader's contacts before this node's start or the lease's lapse.
    contacts_before: u64,
    /// The leader's commit index in the first contact after that.
    catch_up_to: Option<u64>,
    /// The state has applied up to `catch_up_to` (or this node leads).
    fresh: bool,
    held: bool,
}

impl Lease {
    fn new(contact: LeaderContact) -> Self {
        Self {
            contacts_before: contact.count,
            catch_up_to: None,
            fresh: false,
            held: false,
        }
    }

    /// Whether the lease is held after `c`. The state is fresh once it has applied what the
    /// leader had committed when it sent its first append request after the start or the
    /// lapse: an announcement can be older than a decision the leader just made.
    fn check(&mut self, c: Check) -> bool {
        if !self.fresh && c.caught_up {
            if self.catch_up_to.is_none() && c.contact.count > self.contacts_before {
                self.catch_up_to = Some(c.contact.committed);
            }
            self.fresh = c.leading || self.catch_up_to.is_some_and(|target| c.applied >= target);
        }
        let held = self.fresh && (c.leading || (!c.leads && c.hears_majority));
        if !held && self.held {
            *self = Self::new(c.contact);
        }
        self.held = held;
        held
    }
}

impl LeaseKeeper {
    pub async fn run(self) {
        let mut lease = Lease::new(self.consensus.leader_contact());
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
            let held = lease.check(Check {
                caught_up: state.caught_up,
                leading: self.consensus.leads_a_majority_within(term),
                leads: self.consensus.leads(),
                hears_majority: hears_majority(
                    &self.peer_id,
                    &self.consensus.voters(),
                    &peers,
                    term,
                ),
                applied: self.consensus.applied(),
                contact: self.consensus.leader_contact(),
            });
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

    fn follower(applied: u64, count: u64, committed: u64) -> Check {
        Check {
            caught_up: true,
            leading: false,
            leads: false,
            hears_majority: true,
            applied,
            contact: LeaderContact { count, committed },
        }
    }

    #[test]
    fn a_restarted_node_holds_only_once_it_applied_what_the_leader_committed_after_its_start() {
        let mut lease = Lease::new(LeaderContact::default());
        // Hearing the voters is not enough before the leader's first request since the start.
        assert!(!lease.check(follower(636, 0, 0)));
        // The first one says 790 was committed (a move of this node's daemon among it).
        assert!(
            !lease.check(follower(700, 1, 790)),
            "behind the leader's commit"
        );
        assert!(
            !lease.check(follower(789, 5, 800)),
            "the target is the first contact's"
        );
        assert!(lease.check(follower(790, 6, 800)));
        // Not caught up with its own log yet: not fresh, whatever the contact says.
        let mut lease = Lease::new(LeaderContact::default());
        let replaying = Check {
            caught_up: false,
            ..follower(900, 1, 10)
        };
        assert!(!lease.check(replaying));
    }

    #[test]
    fn after_a_lapse_the_lease_waits_for_a_new_contact_and_a_leader_holds_at_once() {
        let mut lease = Lease::new(LeaderContact::default());
        assert!(lease.check(follower(10, 1, 10)));
        let cut = Check {
            hears_majority: false,
            ..follower(10, 3, 10)
        };
        assert!(!lease.check(cut), "lapsed");
        // Hearing the voters again, with no append request taken since the lapse.
        assert!(!lease.check(follower(10, 3, 10)));
        assert!(
            !lease.check(follower(10, 4, 12)),
            "the leader had committed 12"
        );
        assert!(lease.check(follower(12, 4, 12)));
        // A leader acknowledged by a majority holds at once; one that is not, does not.
        let mut lease = Lease::new(LeaderContact::default());
        let leading = Check {
            leading: true,
            leads: true,
            hears_majority: false,
            ..follower(0, 0, 0)
        };
        assert!(lease.check(leading));
        let mut lease = Lease::new(LeaderContact::default());
        let alone = Check {
            leading: false,
            ..leading
        };
        assert!(!lease.check(alone));
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
