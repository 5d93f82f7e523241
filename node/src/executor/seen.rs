//! The run ids this node's executor has started lately, so that a repeated start request (a
//! retry whose first answer was lost, or an order resent after a leader change) is
//! acknowledged and not run twice.
//!
//! A busy node starts hundreds of runs a second and keeps the last [`Seen::CAPACITY`] ids, so
//! each is kept as the 128-bit number it spells (a run id is a UUID in hex): 16 bytes, where
//! the id as a `String` took 24 bytes and a 48-byte allocation, in the set and in the queue
//! each. At capacity that is about 4 MB instead of about 16 MB. An id of another shape (none
//! that this program makes) is kept as the first 128 bits of its SHA-256.

use std::collections::{HashSet, VecDeque};

use crate::model::RunId;

#[derive(Default)]
pub(super) struct Seen {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl Seen {
    pub(super) const CAPACITY: usize = 100_000;

    /// Remembers `id`; whether it is new. The oldest id is forgotten past [`Self::CAPACITY`].
    pub(super) fn insert(&mut self, id: &RunId) -> bool {
        let key = key(id);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

fn key(id: &RunId) -> u128 {
    id.as_u128().unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, id.0.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest.as_ref()[..16]);
        u128::from_be_bytes(first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once_until_it_falls_out_of_the_window() {
        let mut seen = Seen::default();
        let first = RunId::generate();
        assert!(seen.insert(&first));
        assert!(!seen.insert(&first), "a repeated id is not new");
        assert!(
            !seen.insert(&RunId(first.0.to_ascii_uppercase())),
            "the same number in capitals is the same id"
        );
        for _ in 0..Seen::CAPACITY - 1 {
            assert!(seen.insert(&RunId::generate()));
        }
        assert!(!seen.insert(&first), "still within the window");
        assert!(seen.insert(&RunId::generate()));
        assert!(
            seen.insert(&first),
            "forgotten once CAPACITY newer ids came"
        );
        assert_eq!(seen.order.len(), Seen::CAPACITY);
        assert_eq!(seen.set.len(), Seen::CAPACITY);
    }

    #[test]
    fn ids_of_other_shapes_are_kept_apart() {
        let mut seen = Seen::default();
        // "f" and "0f" would be one number; neither is a run id's shape, so each is hashed.
        for id in ["f", "0f", "seeded", "seeded ", ""] {
            assert!(seen.insert(&RunId(id.into())), "{id:?} is new");
        }
        for id in ["f", "0f", "seeded", "seeded ", ""] {
            assert!(!seen.insert(&RunId(id.into())), "{id:?} was seen");
        }
        let hex = "0123456789abcdef0123456789abcdef";
        assert!(seen.insert(&RunId(hex.into())));
        assert!(!seen.insert(&RunId(hex.to_ascii_uppercase())));
    }
}
