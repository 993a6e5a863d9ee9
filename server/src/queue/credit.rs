//! Prefetch accounting shared by a consumer's queue and its channel.
//!
//! The queue takes credit when it hands a message to a consumer; the channel gives it
//! back on ack (or, for `no_ack` consumers, once the delivery is written). Atomics let
//! queues on other connections' tasks check credit without a lock.
//!
//! Apart from prefetch, a consumer may have at most [`UNWRITTEN_LIMIT`] deliveries
//! handed to its connection and not yet written: a consumer without a prefetch limit
//! then takes a backlog in steps as its connection writes, instead of in one lock hold
//! that pages the whole backlog into memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::paging::Paging;

/// How many deliveries a queue hands one consumer's connection ahead of what it has
/// written.
pub const UNWRITTEN_LIMIT: u32 = 1024;

/// A limit on messages in flight; a limit of 0 means unlimited.
#[derive(Debug, Default)]
pub struct Limit {
    limit: AtomicU32,
    in_flight: AtomicU32,
}

impl Limit {
    /// A limit of `limit` in-flight messages (0: unlimited).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Changes the limit; in-flight messages above it stay until acked.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The limit (0: unlimited).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Messages currently counted against the limit.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// One consumer's credit: its own limit and, with `basic.qos global=true`, its channel's.
#[derive(Debug)]
pub struct Credit {
    own: Limit,
    channel: Option<Arc<Limit>>,
    /// Deliveries handed to the connection and not yet written (or given back).
    unwritten: AtomicU32,
    /// Its queue waits in its connection's mailbox for room ([`Mailbox::stall`](super::Mailbox::stall)).
    stalled: AtomicBool,
}

impl Credit {
    /// Credit limited to `own` in-flight messages and, if given, by a channel-wide limit.
    pub fn new(own: u32, channel: Option<Arc<Limit>>) -> Self {
        Self {
            own: Limit::new(own),
            channel,
            unwritten: AtomicU32::new(0),
            stalled: AtomicBool::new(false),
        }
    }

    /// Whether the connection has written enough of what it was handed to take more.
    pub fn has_room(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) < Paging::current().unwritten
    }

    /// Counts a delivery handed to the connection.
    pub fn handed(&self) {
        self.unwritten.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a handed delivery as written (or given back); true when that makes room
    /// again, so that the queue must be asked to dispatch.
    pub fn written(&self) -> bool {
        let before = self
            .unwritten
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        before >= Paging::current().unwritten
    }

    /// Marks the consumer's queue as waiting for room on the connection; returns whether
    /// it was already, so that it is registered once.
    pub fn stall(&self) -> bool {
        self.stalled.swap(true, Ordering::AcqRel)
    }

    /// Clears the mark [`Credit::stall`] set, once the queue has been kicked.
    pub fn unstall(&self) {
        self.stalled.store(false, Ordering::Release);
    }

    /// Takes one unit of credit if both limits allow it.
    pub fn try_acquire(&self) -> bool {
        if !self.own.try_acquire() {
            return false;
        }
        if let Some(channel) = &self.channel
            && !channel.try_acquire()
        {
            self.own.release(1);
            return false;
        }
        true
    }

    /// Gives back `n` units (acked, rejected, requeued, or written without ack).
    pub fn release(&self, n: u32) {
        self.own.release(n);
        if let Some(channel) = &self.channel {
            channel.release(n);
        }
    }

    /// Messages in flight for this consumer.
    pub fn in_flight(&self) -> u32 {
        self.own.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_channel_limits_both_bind() {
        let channel = Arc::new(Limit::new(3));
        let a = Credit::new(2, Some(channel.clone()));
        let b = Credit::new(2, Some(channel.clone()));
        assert!(a.try_acquire());
        assert!(a.try_acquire());
        assert!(!a.try_acquire(), "own limit");
        assert!(b.try_acquire());
        assert!(!b.try_acquire(), "channel limit");
        a.release(1);
        assert!(b.try_acquire());
        assert_eq!(channel.in_flight(), 3);
    }

    #[test]
    fn zero_means_unlimited() {
        let c = Credit::new(0, None);
        for _ in 0..10_000 {
            assert!(c.try_acquire());
        }
    }
}
