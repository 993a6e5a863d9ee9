//! Publisher confirm bookkeeping for one channel: which delivery tags the broker acked
//! or nacked, from single and `multiple` confirms in any order.
//!
//! Delivery tags count from 1 on a channel in confirm mode; message `seq` (from 0) of
//! the producer has tag `seq + 1`.

use anyhow::{Result, bail};

use super::seqset::SeqSet;

/// Confirms received so far on one channel.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    /// Tags (as sequence numbers) acked or nacked.
    resolved: SeqSet,
    /// Sequence numbers nacked.
    nacked: SeqSet,
    /// Lowest sequence number not yet resolved.
    low: u64,
}

impl ConfirmTracker {
    /// A tracker with nothing confirmed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a `basic.ack` (`nack == false`) or `basic.nack` for `tag`, given that
    /// `published` messages have been sent; returns how many messages it resolved.
    ///
    /// # Errors
    /// A tag of 0 or beyond what was published.
    pub fn record(&mut self, tag: u64, multiple: bool, nack: bool, published: u64) -> Result<u64> {
        if tag == 0 || tag > published {
            bail!(
                "broker confirmed delivery tag {tag}, but only {published} messages were published"
            );
        }
        let seq = tag - 1;
        let mut resolved = 0;
        let first = if multiple { self.low } else { seq };
        for s in first..=seq {
            if self.resolved.insert(s) {
                resolved += 1;
                if nack {
                    self.nacked.insert(s);
                }
            }
        }
        while self.resolved.contains(self.low) {
            self.low += 1;
        }
        Ok(resolved)
    }

    /// Messages acked or nacked so far.
    pub fn resolved(&self) -> u64 {
        self.resolved.len()
    }

    /// Messages nacked so far.
    pub fn nacked(&self) -> u64 {
        self.nacked.len()
    }

    /// Messages acked so far.
    pub fn acked(&self) -> u64 {
        self.resolved() - self.nacked()
    }

    /// Whether the broker acked message `seq` (a positive confirm).
    pub fn is_acked(&self, seq: u64) -> bool {
        self.resolved.contains(seq) && !self.nacked.contains(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_multiple_and_nacks() {
        let mut t = ConfirmTracker::new();
        assert_eq!(t.record(3, false, false, 10).expect("ok"), 1);
        assert_eq!(t.record(5, true, false, 10).expect("ok"), 4);
        assert_eq!(t.record(6, false, true, 10).expect("ok"), 1);
        assert_eq!(t.record(5, true, false, 10).expect("ok"), 0);
        assert_eq!((t.resolved(), t.acked(), t.nacked()), (6, 5, 1));
        assert!(t.is_acked(0) && t.is_acked(4) && !t.is_acked(5) && !t.is_acked(6));
        assert!(t.record(11, false, false, 10).is_err());
        assert!(t.record(0, true, false, 10).is_err());
    }
}
