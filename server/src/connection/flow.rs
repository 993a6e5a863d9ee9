//! Flow control of publishers: a connection whose last batch fed queues that hold a
//! large backlog for their consumers stops reading until they have worked it off, as
//! RabbitMQ's credit flow holds a fast publisher back (its connections' `flow` state).
//!
//! Without it a publisher that outruns the consumers of many queues lets every queue
//! grow a backlog, and the broker's memory with it (1,000 queues fed round-robin held
//! ~200k ready messages at the peak). The pause ends when the backlog falls to half
//! the limit, or as soon as a look finds the queues handed out nothing since the last
//! one: consumers that are stuck must not stall their publishers, whose messages then
//! queue (and spill to disk) as before.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::Queue;

/// Ready messages, over the queues a batch fed, from which the publisher waits.
const HIGH_MESSAGES: u64 = 16_384;
/// Ready body bytes from which the publisher waits.
const HIGH_BYTES: u64 = 16 << 20;

/// How often a waiting connection looks at its queues again.
const POLL: Duration = Duration::from_millis(1);

/// What the queues a batch fed hold for their consumers, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Backlog {
    messages: u64,
    bytes: u64,
    /// Deliveries the queues have handed out so far.
    handed: u64,
}

impl Backlog {
    fn of(queues: &[Arc<Queue>]) -> Self {
        queues.iter().fold(Self::default(), |sum, q| Self {
            messages: sum.messages + q.flow().ready(),
            bytes: sum.bytes + q.flow().ready_bytes(),
            handed: sum.handed.wrapping_add(q.flow().handed()),
        })
    }

    fn above(&self, messages: u64, bytes: u64) -> bool {
        self.messages >= messages || self.bytes >= bytes
    }
}

/// Whether a connection that saw `then` at its last look waits on when it sees `now`:
/// while the backlog is above half the limit and still being delivered.
fn keep_waiting(then: Backlog, now: Backlog) -> bool {
    now.above(HIGH_MESSAGES / 2, HIGH_BYTES / 2) && now.handed != then.handed
}

/// A connection's flow state.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// The queues waited on, what they held at the last look, and when to look again.
    waiting: Option<(Vec<Arc<Queue>>, Backlog, Instant)>,
}

impl Flow {
    /// Whether the connection waits (reads nothing).
    pub(super) fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// When a waiting connection looks at its queues again.
    pub(super) fn next_look(&self) -> Option<Instant> {
        self.waiting.as_ref().map(|(_, _, at)| *at)
    }

    /// After a batch that published to `backlogged` (which it empties): starts waiting
    /// if their backlog is above the limit.
    pub(super) fn after_batch(&mut self, backlogged: &mut Vec<Arc<Queue>>) {
        if backlogged.is_empty() {
            return;
        }
        backlogged.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        backlogged.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let backlog = Backlog::of(backlogged);
        if backlog.above(HIGH_MESSAGES, HIGH_BYTES) {
            self.waiting = Some((std::mem::take(backlogged), backlog, Instant::now() + POLL));
        } else {
            backlogged.clear();
        }
    }

    /// Looks at the queues waited on again; true when reading may resume.
    pub(super) fn poll(&mut self) -> bool {
        let Some((queues, then, at)) = &mut self.waiting else {
            return true;
        };
        let now = Backlog::of(queues);
        if keep_waiting(*then, now) {
            *then = now;
            *at = Instant::now() + POLL;
            false
        } else {
            self.waiting = None;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(messages: u64, bytes: u64, handed: u64) -> Backlog {
        Backlog {
            messages,
            bytes,
            handed,
        }
    }

    #[test]
    fn a_publisher_waits_while_the_backlog_drains_and_is_above_half_the_limit() {
        let then = backlog(HIGH_MESSAGES, 0, 100);
        assert!(keep_waiting(then, backlog(HIGH_MESSAGES / 2 + 1, 0, 200)));
        assert!(keep_waiting(then, backlog(10, HIGH_BYTES / 2, 200)));
        assert!(!keep_waiting(then, backlog(HIGH_MESSAGES / 2 - 1, 0, 200)));
    }

    #[test]
    fn stuck_consumers_do_not_stall_the_publisher() {
        let then = backlog(HIGH_MESSAGES * 4, 0, 100);
        assert!(!keep_waiting(then, backlog(HIGH_MESSAGES * 4, 0, 100)));
    }

    #[test]
    fn a_batch_that_fed_no_backlog_leaves_the_connection_reading() {
        let mut flow = Flow::default();
        flow.after_batch(&mut Vec::new());
        assert!(!flow.is_waiting());
        assert!(flow.poll());
    }
}
