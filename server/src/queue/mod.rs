//! One queue: its ready messages, its consumers and their credit.
//!
//! A queue is shared (`Arc<Queue>`) by the exchanges bound to it and the channels using
//! it; its state sits behind one short, never-awaited lock. Publishing enqueues and
//! dispatches on the publisher's task; the chosen consumers' connections are woken through
//! their [`Mailbox`], so a message makes one cross-task hand-off from publisher to
//! consumer.

pub mod credit;
pub mod mailbox;

use std::collections::VecDeque;
use std::sync::Arc;

use amqp_codec::amq_protocol::types::FieldTable;
use amqp_codec::{ReplyCode, ShortStr};
use parking_lot::Mutex;

pub use credit::{Credit, Limit};
pub use mailbox::{Mailbox, Outgoing};

use crate::error::{AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};

/// Identifies a consumer across the broker (unique for the broker's lifetime).
pub type ConsumerId = u64;

/// Identifies a client connection (unique for the broker's lifetime).
pub type ConnectionId = u64;

/// What a queue knows of a consumer: where to deliver and how much it may take.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    /// Broker-wide consumer id.
    pub id: ConsumerId,
    /// Channel the consumer lives on.
    pub channel: u16,
    /// Whether it asked for exclusive use of the queue.
    pub exclusive: bool,
    /// Its prefetch credit.
    pub credit: Arc<Credit>,
    /// Its connection's mailbox.
    pub mailbox: Arc<Mailbox>,
}

/// The declared properties of a queue, compared on redeclaration.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection and deleted with it.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer goes, once it has had one.
    pub auto_delete: bool,
    /// Optional arguments (`x-…`).
    pub arguments: FieldTable,
}

/// Outcome of removing a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerRemoval {
    /// The consumer was not registered here.
    Unknown,
    /// Removed; the queue stays.
    Removed,
    /// Removed, and the queue is auto-delete and now unused: delete it.
    RemovedLast,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    next_offset: u64,
    consumers: Vec<ConsumerHandle>,
    next_consumer: usize,
    had_consumer: bool,
    deleted: bool,
}

/// A message queue.
#[derive(Debug)]
pub struct Queue {
    name: ShortStr,
    vhost: String,
    settings: QueueSettings,
    state: Mutex<QueueState>,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(name: ShortStr, vhost: &str, settings: QueueSettings) -> Self {
        Self {
            name,
            vhost: vhost.to_owned(),
            settings,
            state: Mutex::new(QueueState::default()),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &ShortStr {
        &self.name
    }

    /// Its declared settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Checks that connection `conn` may use this queue (exclusive queues belong to one).
    ///
    /// # Errors
    /// 405 RESOURCE_LOCKED for any other connection than the owner.
    pub fn check_access(&self, conn: ConnectionId) -> AmqpResult<()> {
        match self.settings.exclusive_owner {
            Some(owner) if owner != conn => {
                Err(crate::error::queue_locked(&self.name, &self.vhost))
            }
            _ => Ok(()),
        }
    }

    /// Ready messages (not counting those delivered and unacked).
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.state.lock().ready.len()).unwrap_or(u32::MAX)
    }

    /// Registered consumers.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Enqueues a message and hands it to a consumer with credit, if any.
    pub fn publish(self: &Arc<Self>, message: Message) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let offset = st.next_offset;
        st.next_offset += 1;
        st.ready.push_back(QueuedMessage {
            offset,
            redelivered: false,
            message,
        });
        self.dispatch(&mut st);
    }

    /// Takes the oldest ready message for `basic.get`, with the count left behind.
    pub fn get(&self) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let message = st.ready.pop_front()?;
        let left = u32::try_from(st.ready.len()).unwrap_or(u32::MAX);
        Some((message, left))
    }

    /// Puts delivered messages back at their original positions, flagged redelivered.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        for mut message in messages {
            message.redelivered = true;
            match st.ready.front() {
                Some(front) if front.offset < message.offset => {
                    let at = st.ready.partition_point(|m| m.offset < message.offset);
                    st.ready.insert(at, message);
                }
                _ => st.ready.push_front(message),
            }
        }
        self.dispatch(&mut st);
    }

    /// Dispatches again after consumers regained credit.
    pub fn kick(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    /// Registers a consumer and starts delivering to it.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED if an exclusive consumer holds the queue, or if an exclusive
    /// consumer is asked for while others exist.
    pub fn add_consumer(self: &Arc<Self>, consumer: ConsumerHandle) -> AmqpResult<()> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                ),
            ));
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch(&mut st);
        Ok(())
    }

    /// Unregisters a consumer; messages already handed to it stay with its channel.
    pub fn remove_consumer(&self, id: ConsumerId) -> ConsumerRemoval {
        let mut st = self.state.lock();
        let Some(at) = st.consumers.iter().position(|c| c.id == id) else {
            return ConsumerRemoval::Unknown;
        };
        st.consumers.remove(at);
        if st.next_consumer > at {
            st.next_consumer -= 1;
        }
        if self.settings.auto_delete && st.consumers.is_empty() && st.had_consumer {
            ConsumerRemoval::RemovedLast
        } else {
            ConsumerRemoval::Removed
        }
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len();
        st.ready.clear();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, drops its messages and tells its consumers' connections.
    /// Returns the number of ready messages it held.
    pub fn delete(&self) -> u32 {
        let (count, consumers) = {
            let mut st = self.state.lock();
            st.deleted = true;
            let count = st.ready.len();
            st.ready.clear();
            (count, std::mem::take(&mut st.consumers))
        };
        for consumer in consumers {
            consumer.mailbox.push(Outgoing::Cancelled {
                channel: consumer.channel,
                consumer: consumer.id,
            });
        }
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Hands ready messages to consumers with credit, round-robin, one at a time.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        let n = st.consumers.len();
        if n == 0 {
            return;
        }
        let mut without_credit = 0;
        while !st.ready.is_empty() && without_credit < n {
            let at = st.next_consumer % n;
            st.next_consumer = at + 1;
            let consumer = &st.consumers[at];
            if !consumer.credit.try_acquire() {
                without_credit += 1;
                continue;
            }
            without_credit = 0;
            let Some(message) = st.ready.pop_front() else {
                break;
            };
            consumer.mailbox.push(Outgoing::Deliver {
                channel: consumer.channel,
                consumer: consumer.id,
                queue: Arc::clone(self),
                credit: consumer.credit.clone(),
                message,
            });
        }
    }
}
