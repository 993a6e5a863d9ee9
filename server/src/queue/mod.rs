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
use crate::store::{PendingSync, QueueLog, SegmentPosition, StoreError, StoredMessage, SyncTarget};

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
    /// Deliveries are settled as they are sent (`no_ack`).
    pub no_ack: bool,
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

/// Most ready messages a queue keeps in memory; beyond this (or [`READY_BYTES`]) a
/// durable queue's new messages stay only in its log and are paged in as consumers
/// catch up, so a backlog larger than memory works.
const READY_MESSAGES: usize = 4096;
/// Most body bytes of ready messages a queue keeps in memory.
const READY_BYTES: usize = 8 << 20;
/// When fewer ready messages than this remain in memory, the next page is read.
const REFILL_BELOW: usize = 1024;
/// Messages read from the log per page.
const PAGE_MESSAGES: usize = 2048;
/// Body bytes read from the log per page.
const PAGE_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
struct QueueState {
    /// Ready messages held in memory, oldest first.
    ready: VecDeque<QueuedMessage>,
    /// Body bytes of `ready`.
    ready_bytes: usize,
    /// Ready messages that are only in the log, all after `ready`'s.
    paged: u64,
    /// The newest log position ever loaded into memory: paging resumes after it.
    last_loaded: Option<SegmentPosition>,
    /// The durable log (durable queues only).
    log: Option<QueueLog>,
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

/// The ordering key of a logged message: its log position, which grows in publish order.
fn position_offset(pos: SegmentPosition) -> u64 {
    (u64::from(pos.segment) << 32) | u64::from(pos.offset)
}

impl QueueState {
    fn push_ready(&mut self, message: QueuedMessage) {
        self.ready_bytes += message.message.body.len();
        self.ready.push_back(message);
    }

    fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let message = self.ready.pop_front()?;
        self.ready_bytes -= message.message.body.len();
        Some(message)
    }

    fn ready_count(&self) -> u64 {
        self.ready.len() as u64 + self.paged
    }

    /// Reads the next page of logged messages into memory when memory runs low.
    fn refill(&mut self, queue: &str) {
        if self.paged == 0 || self.ready.len() >= REFILL_BELOW {
            return;
        }
        let Some(log) = self.log.as_mut() else {
            self.paged = 0;
            return;
        };
        let page = match log.read(self.last_loaded, PAGE_MESSAGES, PAGE_BYTES) {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(queue, %error, "cannot read messages from the log");
                return;
            }
        };
        if page.is_empty() {
            tracing::error!(
                queue,
                missing = self.paged,
                "the log holds fewer messages than counted"
            );
            self.paged = 0;
            return;
        }
        for (pos, stored) in page {
            let redelivered = log.was_delivered(pos);
            self.last_loaded = Some(pos);
            self.paged = self.paged.saturating_sub(1);
            self.ready_bytes += stored.body.len();
            self.ready.push_back(QueuedMessage {
                offset: position_offset(pos),
                position: Some(pos),
                redelivered,
                message: Message {
                    exchange: stored.exchange,
                    routing_key: stored.routing_key,
                    properties: stored.properties,
                    body: stored.body,
                },
            });
        }
    }

    /// Records in the log that a message leaves the queue for good.
    fn forget(&mut self, message: &QueuedMessage) {
        if let (Some(log), Some(pos)) = (self.log.as_mut(), message.position) {
            let _ = log.ack(pos);
        }
    }

    /// Records in the log that a message goes out for the first time, so it comes back
    /// flagged `redelivered` after a restart.
    fn mark_delivered(&mut self, message: &QueuedMessage) {
        if !message.redelivered
            && let (Some(log), Some(pos)) = (self.log.as_mut(), message.position)
        {
            let _ = log.mark_delivered(pos);
        }
    }
}

impl Queue {
    /// A new, empty queue; durable queues bring their (new or recovered) log and the
    /// number of messages recovered in it.
    pub fn new(
        name: ShortStr,
        vhost: &str,
        settings: QueueSettings,
        log: Option<QueueLog>,
        recovered: u64,
    ) -> Self {
        Self {
            name,
            vhost: vhost.to_owned(),
            settings,
            state: Mutex::new(QueueState {
                log,
                paged: recovered,
                ..QueueState::default()
            }),
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

    /// Whether it keeps a durable log.
    pub fn is_logged(&self) -> bool {
        self.state.lock().log.is_some()
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
        u32::try_from(self.state.lock().ready_count()).unwrap_or(u32::MAX)
    }

    /// Registered consumers.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.state.lock().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Enqueues a message and hands it to a consumer with credit, if any. Returns whether
    /// the message went to the durable log and needs a group commit to be safe.
    ///
    /// # Errors
    /// The log could not take it (disk full, I/O error): the message is not enqueued.
    pub fn publish(
        self: &Arc<Self>,
        message: Message,
        persistent: bool,
    ) -> Result<bool, StoreError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(false);
        }
        let Some(log) = st.log.as_mut() else {
            let offset = st.next_offset;
            st.next_offset += 1;
            st.push_ready(QueuedMessage {
                offset,
                position: None,
                redelivered: false,
                message,
            });
            self.dispatch(&mut st);
            return Ok(false);
        };
        let pos = log.append(&StoredMessage {
            persistent,
            expires_at_ms: 0,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties: message.properties.clone(),
            body: message.body.clone(),
        })?;
        if st.paged > 0 || st.ready.len() >= READY_MESSAGES || st.ready_bytes >= READY_BYTES {
            st.paged += 1;
        } else {
            st.last_loaded = Some(pos);
            st.push_ready(QueuedMessage {
                offset: position_offset(pos),
                position: Some(pos),
                redelivered: false,
                message,
            });
        }
        self.dispatch(&mut st);
        Ok(persistent)
    }

    /// Takes the oldest ready message for `basic.get`, with the count left behind. With
    /// `no_ack` the message leaves the queue for good at once.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        st.refill(&self.name);
        let message = st.pop_ready()?;
        if no_ack {
            st.forget(&message);
        } else {
            st.mark_delivered(&message);
        }
        let left = u32::try_from(st.ready_count()).unwrap_or(u32::MAX);
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
            st.ready_bytes += message.message.body.len();
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

    /// Records that delivered messages were acked or dropped: they leave the log.
    pub fn settle(&self, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        if st.log.is_none() {
            return;
        }
        for message in messages {
            st.forget(&message);
        }
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

    /// Drops all ready messages (in memory and paged out); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let count = st.ready_count();
        while let Some(message) = st.pop_ready() {
            st.forget(&message);
        }
        while st.paged > 0 {
            let before = st.paged;
            st.refill(&self.name);
            while let Some(message) = st.pop_ready() {
                st.forget(&message);
            }
            if st.paged == before {
                break;
            }
        }
        st.paged = 0;
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, drops its messages and its log, and tells its consumers'
    /// connections. Returns the number of ready messages it held.
    pub fn delete(&self) -> u32 {
        let (count, consumers, log) = {
            let mut st = self.state.lock();
            st.deleted = true;
            let count = st.ready_count();
            st.ready.clear();
            st.ready_bytes = 0;
            st.paged = 0;
            (count, std::mem::take(&mut st.consumers), st.log.take())
        };
        if let Some(log) = log
            && let Err(error) = log.delete()
        {
            tracing::error!(queue = %self.name, %error, "cannot remove the queue's log");
        }
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
        while without_credit < n {
            if st.ready.is_empty() {
                st.refill(&self.name);
                if st.ready.is_empty() {
                    break;
                }
            }
            let at = st.next_consumer % n;
            st.next_consumer = at + 1;
            if !st.consumers[at].credit.try_acquire() {
                without_credit += 1;
                continue;
            }
            without_credit = 0;
            let Some(message) = st.pop_ready() else {
                break;
            };
            if st.consumers[at].no_ack {
                st.forget(&message);
            } else {
                st.mark_delivered(&message);
            }
            let consumer = &st.consumers[at];
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

impl SyncTarget for Queue {
    fn begin_sync(&self) -> Option<crate::store::Result<PendingSync>> {
        let mut st = self.state.lock();
        let log = st.log.as_mut()?;
        Some(log.begin_sync().inspect_err(|error| {
            tracing::error!(queue = %self.name, %error, "cannot write the queue's log");
        }))
    }

    fn complete_sync(&self, pending: PendingSync, result: crate::store::Result<()>) -> bool {
        let mut st = self.state.lock();
        let Some(log) = st.log.as_mut() else {
            return false;
        };
        match log.complete_sync(pending, result) {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(queue = %self.name, %error, "cannot sync the queue's log");
                false
            }
        }
    }
}
