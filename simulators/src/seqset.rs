//! A set of seqs stored as disjoint inclusive ranges, so millions of contiguous seqs cost a
//! few bytes.

use std::collections::BTreeMap;

/// A set of `u32` kept as disjoint, non-adjacent inclusive ranges `start -> end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    ranges: BTreeMap<u32, u32>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; returns whether it was new.
    pub(crate) fn insert(&mut self, seq: u32) -> bool {
        let before = self.ranges.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = before
            && end >= seq
        {
            return false;
        }
        let joins_before = before.filter(|&(_, end)| end.checked_add(1) == Some(seq));
        let after = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|&end| (next, end)));
        match (joins_before, after) {
            (Some((start, _)), Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(start, end);
            }
            (Some((start, _)), None) => {
                self.ranges.insert(start, seq);
            }
            (None, Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(seq, end);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        self.len += 1;
        true
    }

    /// How many seqs the set holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Every seq, ascending.
    pub(crate) fn to_vec(&self) -> Vec<u32> {
        self.ranges.iter().flat_map(|(&s, &e)| s..=e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_and_count() {
        let mut set = SeqSet::default();
        for seq in [5, 7, 6, 1, 2, 9, u32::MAX, u32::MAX - 1, 0] {
            assert!(set.insert(seq), "{seq}");
        }
        assert!(!set.insert(6));
        assert!(!set.insert(u32::MAX));
        assert_eq!(set.len(), 9);
        assert_eq!(set.ranges.len(), 4, "{:?}", set.ranges);
        assert_eq!(set.to_vec(), [0, 1, 2, 5, 6, 7, 9, u32::MAX - 1, u32::MAX]);
    }
}
