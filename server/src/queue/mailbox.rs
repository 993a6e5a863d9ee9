//! The hand-off from queues to a consumer's connection: one mailbox per connection.
//!
//! Queues run on whichever task published or acked; they push deliveries here and wake the
//! consumer's connection once per batch. The connection swaps the whole batch out under one
//! short lock and writes it to its socket.
//!
//! A connection takes at most [`Paging::connection_unwritten`] deliveries ahead of what it
//! has written, over all its consumers: a connection with hundreds of consumers, each with
//! its own prefetch window, would otherwise take every window's worth at once and hold
//! it in this mailbox and its pending list (hundreds of bytes a delivery, twice, plus the
//! lists' spare room) rather than leave it in the queues. A queue that finds the
//! connection full asks to be dispatched again ([`Mailbox::stall`]); the connection kicks
//! those queues once it has written half of what it held ([`Mailbox::written`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::paging::Paging;
use crate::message::QueuedMessage;
use crate::queue::{ConsumerId, Credit, Queue};

/// Something a queue tells a consumer's connection.
#[derive(Debug)]
pub enum Outgoing {
    /// Deliver `message` from `queue` to the consumer.
    Deliver {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer: ConsumerId,
        /// The queue it came from, to ack or requeue it later.
        queue: Arc<Queue>,
        /// The consumer's credit, taken for this delivery.
        credit: Arc<Credit>,
        /// The message.
        message: QueuedMessage,
    },
    /// A partition was assigned to or revoked from a group member that asked to hear
    /// of it (`x-group-notify`): an empty control delivery, in order with its data.
    GroupEvent {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer: ConsumerId,
        /// The partitioned queue.
        queue: Arc<Queue>,
        /// What happened.
        event: GroupEvent,
        /// To which partition.
        partition: u16,
        /// The group's name, if it has one.
        group: Option<String>,
    },
    /// `queue` has more for a consumer of this connection: kick it from the
    /// connection's task (a stream after a commit, or a stream read cut short).
    Wake {
        /// The queue to kick.
        queue: Arc<Queue>,
    },
    /// The queue went away under the consumer (`basic.cancel` from the server).
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer: ConsumerId,
    },
}

/// What happened to a group member's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEvent {
    /// It is the member's now: its messages follow.
    Assigned,
    /// It is no longer the member's: no more of its messages come.
    Revoked,
}

impl GroupEvent {
    /// The `x-group-event` header's value.
    pub fn name(self) -> &'static str {
        match self {
            GroupEvent::Assigned => "assigned",
            GroupEvent::Revoked => "revoked",
        }
    }
}

/// A connection's inbox of deliveries and notices from queues.
#[derive(Debug, Default)]
pub struct Mailbox {
    items: Mutex<Vec<Outgoing>>,
    wake: Notify,
    /// Deliveries handed to the connection and not yet written (or given back).
    unwritten: AtomicU32,
    /// Queues that found the connection full, with the credit of their consumer here.
    stalled: Mutex<Vec<(Arc<Queue>, Arc<Credit>)>>,
}

impl Mailbox {
    /// Adds an item, waking the connection if the mailbox was empty. A delivery counts
    /// against the connection's room until [`Mailbox::written`] says it left.
    pub fn push(&self, item: Outgoing) {
        if matches!(item, Outgoing::Deliver { .. }) {
            self.unwritten.fetch_add(1, Ordering::AcqRel);
        }
        let was_empty = {
            let mut items = self.items.lock();
            items.push(item);
            items.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Moves everything pending into `into` (which should be empty), keeping capacity.
    pub fn drain_into(&self, into: &mut Vec<Outgoing>) {
        std::mem::swap(&mut *self.items.lock(), into);
    }

    /// Resolves when items may be pending.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Whether the connection has written enough of what it was handed to take more.
    pub fn has_room(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) < Paging::current().connection_unwritten
    }

    /// Records that `queue` found the connection full while its consumer here (whose
    /// credit is `credit`) could take more, so that the connection kicks it once it
    /// has room. Returns whether there is room by now after all (the connection may
    /// have written in between): then the caller goes on dispatching.
    pub fn stall(&self, queue: &Arc<Queue>, credit: &Arc<Credit>) -> bool {
        if !credit.stall() {
            self.stalled.lock().push((queue.clone(), credit.clone()));
        }
        self.has_room()
    }

    /// Counts `n` handed deliveries as written (or given back). Once at most half the
    /// room is taken, hands each queue that stalled on the connection to `kick`.
    pub fn written(&self, n: u32, mut kick: impl FnMut(&Arc<Queue>)) {
        if n > 0 {
            let _ = self
                .unwritten
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                });
        }
        if self.unwritten.load(Ordering::Acquire) > Paging::current().connection_unwritten / 2 {
            return;
        }
        let stalled = std::mem::take(&mut *self.stalled.lock());
        for (queue, credit) in stalled {
            credit.unstall();
            kick(&queue);
        }
    }
}
