//! What a queue operation leaves for its caller to carry out once every lock is
//! released: messages that leave for other queues, and queues to delete.
//!
//! A queue never reaches back into its vhost. Routing a dead letter takes the vhost's
//! registry locks and may lead back into the same queue, so doing it from inside a
//! queue operation (or under a registry lock held by the caller) would take a lock twice
//! on one stack. Instead every operation that can move messages or end the queue adds
//! what must happen to an [`Effects`], and the vhost applies it (`VHost::apply`).

use std::sync::Arc;

use amqp_codec::ShortStr;

use super::Queue;
use super::dead_letter::DeadLetter;

/// Where messages leaving a queue go.
#[derive(Debug, Clone)]
pub enum MoveRoute {
    /// To the queue's dead-letter exchange (`""` for the default exchange), with the
    /// dead-letter routing key or their own keys.
    DeadLetter {
        /// The dead-letter exchange.
        exchange: String,
        /// The dead-letter routing key, replacing the messages' own.
        routing_key: Option<String>,
        /// `x-dead-letter-strategy` `at-least-once`: a message no queue takes goes back
        /// to its source, to be tried again, instead of being dropped.
        at_least_once: bool,
    },
    /// On through the delayed exchange whose hold they waited in, as if published now.
    Delayed {
        /// That exchange.
        exchange: ShortStr,
    },
}

/// Messages that left `source` unconsumed and go elsewhere. Their records stay in the
/// source's log until the copies are durable where they went (at least once).
#[derive(Debug)]
pub struct Move {
    /// The queue they leave.
    pub source: Arc<Queue>,
    /// The partition they leave (0 for a plain queue), whose log holds their records.
    pub partition: u16,
    /// Where they go.
    pub route: MoveRoute,
    /// The messages, each with its position in the source's log.
    pub letters: Vec<DeadLetter>,
}

/// Work a queue operation left for the caller, to do after releasing its locks.
#[derive(Debug, Default)]
#[must_use = "effects must be applied by the vhost once locks are released"]
pub struct Effects {
    /// Messages to move between queues.
    pub moves: Vec<Move>,
    /// Queues whose `x-expires` ran out unused: to delete.
    pub expired: Vec<Arc<Queue>>,
}

impl Effects {
    /// Whether nothing is left to do.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.expired.is_empty()
    }
}
