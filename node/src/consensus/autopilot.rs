//! Autopilot decisions, as pure functions over what a node knows (issue 4; not wired yet): whether
//! an uninitialised node bootstraps, joins or waits; which cluster gives way when two meet; and
//! which members should be voters.
//!
//! The effects (Raft `initialize`, `add_learner`, `change_membership`, the hand-over of a merge)
//! happen around these decisions; see docs/consensus.md.

use std::collections::BTreeSet;
use std::time::Duration;

/// At most this many voters; more members stay learners.
pub const MAX_VOTERS: usize = 5;

/// A cluster as announcements describe it: its id (the first leader's node id) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterSeen {
    pub id: u64,
    pub members: usize,
}

/// A peer as the autopilot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeen {
    pub peer_id: String,
    pub cluster: Option<ClusterSeen>,
}

/// What an uninitialised node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Keep looking (the discovery window is open, or a lower peer will bootstrap).
    Wait,
    /// Become a one-node cluster; the others will join it.
    Bootstrap,
    /// Ask this peer's cluster to take us in (as a learner first).
    Join { via: String, cluster: u64 },
}

/// For a node with no Raft state: join the largest cluster in sight; if there is none, after the
/// discovery window the lowest PeerId among the uninitialised nodes bootstraps.
pub fn start(me: &str, peers: &[PeerSeen], waited: Duration, window: Duration) -> Start {
    let best = peers
        .iter()
        .filter_map(|p| p.cluster.map(|c| (c, p)))
        // The largest cluster; among equals the lowest id, so every node picks the same one; and
        // through its lowest PeerId.
        .max_by(|(a, pa), (b, pb)| {
            a.members
                .cmp(&b.members)
                .then(b.id.cmp(&a.id))
                .then(pb.peer_id.cmp(&pa.peer_id))
        });
    if let Some((cluster, peer)) = best {
        return Start::Join {
            via: peer.peer_id.clone(),
            cluster: cluster.id,
        };
    }
    if waited < window {
        return Start::Wait;
    }
    let lowest = peers
        .iter()
        .filter(|p| p.cluster.is_none())
        .map(|p| p.peer_id.as_str())
        .min();
    if lowest.is_none_or(|l| me < l) {
        Start::Bootstrap
    } else {
        Start::Wait
    }
}

/// When two clusters with the same key meet, the smaller gives way (hands its tasks to the other
/// and joins it); between equal sizes the one with the higher id does. Returns the cluster to
/// merge into, if it is this one's turn to give way.
pub fn merge_into(mine: ClusterSeen, others: &[ClusterSeen]) -> Option<ClusterSeen> {
    others
        .iter()
        .filter(|o| o.id != mine.id)
        .filter(|o| o.members > mine.members || (o.members == mine.members && o.id < mine.id))
        .max_by(|a, b| a.members.cmp(&b.members).then(b.id.cmp(&a.id)))
        .copied()
}

/// The voters a cluster should have: as many live members as possible, at most [`MAX_VOTERS`],
/// always an odd number; current live voters keep their seat, then live learners by id. Voters
/// that have been unreachable past the limit (`dead`) lose theirs.
pub fn desired_voters(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    dead: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let live_voters = voters.iter().filter(|v| !dead.contains(v));
    let live_learners = learners.iter().filter(|l| !dead.contains(l));
    let candidates: Vec<u64> = live_voters.chain(live_learners).copied().collect();
    let mut count = candidates.len().min(MAX_VOTERS);
    if count % 2 == 0 {
        count = count.saturating_sub(1);
    }
    if count == 0 {
        // Nobody is live: change nothing (a membership without voters is no cluster).
        return voters.clone();
    }
    candidates.into_iter().take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, cluster: Option<(u64, usize)>) -> PeerSeen {
        PeerSeen {
            peer_id: id.into(),
            cluster: cluster.map(|(id, members)| ClusterSeen { id, members }),
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn start_decisions() {
        let window = Duration::from_secs(2);
        let early = Duration::from_millis(500);
        let late = Duration::from_secs(3);
        let cases: Vec<(&str, Vec<PeerSeen>, Duration, Start)> = vec![
            ("b", vec![], early, Start::Wait),
            ("b", vec![], late, Start::Bootstrap),
            ("b", vec![peer("a", None)], late, Start::Wait),
            (
                "a",
                vec![peer("b", None), peer("c", None)],
                late,
                Start::Bootstrap,
            ),
            ("a", vec![peer("b", None)], early, Start::Wait),
            (
                "c",
                vec![peer("b", Some((7, 1)))],
                early,
                Start::Join {
                    via: "b".into(),
                    cluster: 7,
                },
            ),
            (
                "a",
                vec![
                    peer("b", Some((7, 1))),
                    peer("c", Some((9, 3))),
                    peer("d", Some((9, 3))),
                ],
                early,
                Start::Join {
                    via: "c".into(),
                    cluster: 9,
                },
            ),
            (
                "a",
                vec![peer("b", Some((7, 2))), peer("c", Some((5, 2)))],
                early,
                Start::Join {
                    via: "c".into(),
                    cluster: 5,
                },
            ),
        ];
        for (me, peers, waited, expected) in cases {
            assert_eq!(
                start(me, &peers, waited, window),
                expected,
                "{me} {peers:?} {waited:?}"
            );
        }
    }

    #[test]
    fn the_smaller_cluster_gives_way() {
        let small = ClusterSeen { id: 3, members: 2 };
        let big = ClusterSeen { id: 9, members: 4 };
        assert_eq!(merge_into(small, &[big]), Some(big));
        assert_eq!(merge_into(big, &[small]), None);
        let twin = ClusterSeen { id: 5, members: 2 };
        assert_eq!(
            merge_into(small, &[twin]),
            None,
            "equal size: the higher id gives way"
        );
        assert_eq!(merge_into(twin, &[small]), Some(small));
        assert_eq!(merge_into(small, &[small]), None, "not into itself");
    }

    #[test]
    fn voters_stay_odd_at_most_five_and_live() {
        let cases = [
            // voters, learners, dead → voters
            (set(&[1]), set(&[]), set(&[]), set(&[1])),
            (set(&[1]), set(&[2]), set(&[]), set(&[1])),
            (set(&[1]), set(&[2, 3]), set(&[]), set(&[1, 2, 3])),
            (
                set(&[1, 2, 3]),
                set(&[4, 5, 6, 7]),
                set(&[]),
                set(&[1, 2, 3, 4, 5]),
            ),
            (set(&[1, 2, 3]), set(&[4]), set(&[2]), set(&[1, 3, 4])),
            (set(&[1, 2, 3]), set(&[]), set(&[3]), set(&[1])),
            (
                set(&[1, 2, 3, 4, 5]),
                set(&[6]),
                set(&[2, 4]),
                set(&[1, 3, 5]),
            ),
            (set(&[1, 2, 3]), set(&[]), set(&[1, 2, 3]), set(&[1, 2, 3])),
        ];
        for (voters, learners, dead, expected) in cases {
            let got = desired_voters(&voters, &learners, &dead);
            assert_eq!(
                got, expected,
                "voters {voters:?} learners {learners:?} dead {dead:?}"
            );
            assert!(got.len() % 2 == 1 && got.len() <= MAX_VOTERS);
        }
    }
}
