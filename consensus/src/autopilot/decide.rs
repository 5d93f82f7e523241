//! The autopilot's decisions, as pure functions over what a node knows: whether a node without a
//! cluster founds one, joins one or waits; which cluster gives way when two meet; which members
//! should be voters; and where a voter change left half done should end. The actor in
//! `autopilot/mod.rs` acts on them.

use std::collections::BTreeSet;
use std::time::Duration;

/// At most this many voters; more members stay learners.
pub const MAX_VOTERS: usize = 5;

/// A peer as the autopilot sees it: its PeerId and the id of its cluster, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeen {
    pub peer_id: String,
    pub cluster: Option<u64>,
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

/// For a node with no Raft state: join the cluster in sight with the lowest id (the one every
/// merge ends in); if there is none, after the discovery window the lowest PeerId among the
/// uninitialised nodes bootstraps.
pub fn start(me: &str, peers: &[PeerSeen], waited: Duration, window: Duration) -> Start {
    let best = peers
        .iter()
        .filter_map(|p| p.cluster.map(|c| (c, p)))
        .min_by(|(a, pa), (b, pb)| a.cmp(b).then(pa.peer_id.cmp(&pb.peer_id)));
    if let Some((cluster, peer)) = best {
        return Start::Join {
            via: peer.peer_id.clone(),
            cluster,
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

/// When clusters with the same key meet, every one but the one with the lowest id gives way:
/// it hands its tasks to that one and its members join it. Returns the cluster to merge into,
/// if it is this one's turn to give way.
///
/// The order is by id alone, never by size: both sides see the same ids, while sizes change and
/// are seen at different moments, so two clusters could each decide that the other is larger,
/// both give way, and both clear their state.
pub fn merge_into(mine: u64, others: &[u64]) -> Option<u64> {
    others.iter().copied().filter(|o| *o < mine).min()
}

/// The voters a cluster should have: as many live members as possible, at most [`MAX_VOTERS`],
/// always an odd number; current live voters keep their seat, then live learners by id. Voters
/// that have been unreachable past the limit (`dead`) lose theirs, unless that would leave fewer
/// than three voters (one live voter is no safer than a group with a dead one, and the group
/// heals by itself when the dead one comes back).
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
    if count == 0 || (count < 3 && count < voters.len()) {
        // Too few live members to replace the dead: change nothing.
        return voters.clone();
    }
    candidates.into_iter().take(count).collect()
}

/// The voters to finish a change with, when `configs` (a membership's configurations, oldest
/// first) is joint: its newest half. A change's second step can lose the race with another
/// membership change (a learner's join) and leave the cluster joint, and nothing else finishes
/// it. A settled membership has one configuration and nothing to finish.
pub fn unfinished_change(configs: &[BTreeSet<u64>]) -> Option<&BTreeSet<u64>> {
    match configs {
        [_, .., newest] => Some(newest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, cluster: Option<u64>) -> PeerSeen {
        PeerSeen {
            peer_id: id.into(),
            cluster,
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
        let join = |via: &str, cluster| Start::Join {
            via: via.into(),
            cluster,
        };
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
            ("c", vec![peer("b", Some(7))], early, join("b", 7)),
            (
                "a",
                vec![peer("b", Some(7)), peer("d", Some(9)), peer("c", Some(7))],
                early,
                join("b", 7),
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
    fn every_cluster_but_the_lowest_gives_way() {
        assert_eq!(merge_into(9, &[3]), Some(3));
        assert_eq!(merge_into(3, &[9]), None);
        assert_eq!(merge_into(9, &[5, 3, 12]), Some(3));
        assert_eq!(merge_into(3, &[3]), None, "not into itself");
        assert_eq!(merge_into(3, &[]), None);
    }

    #[test]
    fn a_joint_membership_is_finished_towards_its_newest_half() {
        assert_eq!(unfinished_change(&[set(&[1, 2, 3])]), None, "settled");
        assert_eq!(unfinished_change(&[]), None);
        assert_eq!(
            unfinished_change(&[set(&[1]), set(&[1, 2, 3])]),
            Some(&set(&[1, 2, 3]))
        );
        assert_eq!(
            unfinished_change(&[set(&[1, 2, 3, 4, 5]), set(&[1, 2, 3])]),
            Some(&set(&[1, 2, 3])),
            "a shrinking change too"
        );
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
            (set(&[1, 2, 3]), set(&[]), set(&[3]), set(&[1, 2, 3])),
            (
                set(&[1, 2, 3, 4, 5]),
                set(&[]),
                set(&[4, 5]),
                set(&[1, 2, 3]),
            ),
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
