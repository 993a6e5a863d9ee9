//! The hand-off from queues to a consumer's connection: one mailbox per connection.
//!
//! Queues run on whichever task published or acked; they push deliveries here and wake the
//! consumer's connection once per batch. The connection swaps the whole batch out under one
//! short lock and writes it to its socket.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

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
    /// The queue went away under the consumer (`basic.cancel` from the server).
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// The consumer.
        consumer: ConsumerId,
    },
}

/// A connection's inbox of deliveries and notices from queues.
#[derive(Debug, Default)]
pub struct Mailbox {
    items: Mutex<Vec<Outgoing>>,
    wake: Notify,
}

impl Mailbox {
    /// Adds an item, waking the connection if the mailbox was empty.
    pub fn push(&self, item: Outgoing) {
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
}
