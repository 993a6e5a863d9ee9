//! A growable bit set of sequence numbers: which messages of one producer a consumer
//! saw, or which a producer got confirms for.

/// A set of `u64` sequence numbers, dense from 0 (one bit each).
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`; returns false if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            let want = (word + 1).next_power_of_two().max(64);
            self.words.resize(want, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many numbers the set holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds every member of `other`; returns how many were already present
    /// (duplicates between the two sets).
    pub fn union_with(&mut self, other: &SeqSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0u64;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.len = self.len + other.len - overlap;
        overlap
    }

    /// How many members are below `limit`.
    pub fn count_below(&self, limit: u64) -> u64 {
        let full = ((limit / 64) as usize).min(self.words.len());
        let mut count: u64 = self.words[..full]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if limit % 64 != 0 {
            if let Some(w) = self.words.get(full) {
                count += u64::from((w & ((1u64 << (limit % 64)) - 1)).count_ones());
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_union_count() {
        let mut a = SeqSet::new();
        assert!(a.insert(0));
        assert!(a.insert(1000));
        assert!(!a.insert(1000));
        assert!(a.contains(1000) && !a.contains(999) && !a.contains(1 << 30));
        let mut b = SeqSet::new();
        b.insert(1000);
        b.insert(5000);
        assert_eq!(a.union_with(&b), 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a.count_below(1000), 1);
        assert_eq!(a.count_below(1001), 2);
        assert_eq!(a.count_below(u64::MAX), 3);
        assert_eq!(SeqSet::new().count_below(10), 0);
    }
}
