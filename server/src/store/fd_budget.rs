//! A budget of queue logs that may hold open file descriptors at once, so that a broker
//! with 100,000 durable queues stays under the open files limit.
//!
//! A queue log holds up to three descriptors (the segment it appends to, its last ack
//! file, a read-ahead reader). Each log that holds any takes a [`FdTicket`]; when more
//! logs hold descriptors than the budget allows, a log closes its own once a sync has
//! made its writes durable (the moment closing is safe: no write is left whose error only
//! that descriptor could report) and reopens them on demand, and a reader is closed after
//! every page. Under the budget nothing is ever closed, so busy logs pay nothing.
//!
//! The bound holds for logs that get synced (every durable queue that takes persistent
//! messages). A log written but never synced keeps the descriptors its unsynced writes
//! went through until a sync: a spill log (never synced), or an ack file written by
//! acks alone (16 KiB of them) on a queue that nothing publishes to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many logs may hold descriptors at once; see the [module documentation](self).
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    holders: AtomicUsize,
}

impl FdBudget {
    /// A budget of `limit` logs.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            holders: AtomicUsize::new(0),
        })
    }

    /// A budget from the process's open files limit: a quarter of the soft limit (each
    /// log holds up to three descriptors, and connections need theirs), at least 64.
    pub fn from_rlimit() -> Arc<Self> {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        Self::new(usize::try_from(soft / 4).unwrap_or(usize::MAX).max(64))
    }

    /// A ticket for a log that now holds descriptors.
    pub fn ticket(self: &Arc<Self>) -> FdTicket {
        self.holders.fetch_add(1, Ordering::Relaxed);
        FdTicket(self.clone())
    }

    /// Whether more logs hold descriptors than the budget allows.
    pub fn over(&self) -> bool {
        self.holders.load(Ordering::Relaxed) > self.limit
    }

    /// Logs holding descriptors now.
    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Relaxed)
    }
}

/// Held by a log while it holds descriptors; gives its place back when dropped.
#[derive(Debug)]
pub struct FdTicket(Arc<FdBudget>);

impl Drop for FdTicket {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_holders() {
        let budget = FdBudget::new(1);
        let a = budget.ticket();
        assert!(!budget.over());
        let b = budget.ticket();
        assert!(budget.over());
        drop(a);
        assert_eq!(budget.holders(), 1);
        drop(b);
        assert!(FdBudget::from_rlimit().limit >= 64);
    }
}
