//! One queue: its ready messages, its consumers and their credit.
//!
//! A queue is shared (`Arc<Queue>`) by the exchanges bound to it and the channels using
//! it; its state sits behind one short, never-awaited lock. Publishing enqueues and
//! dispatches on the publisher's task; the chosen consumers' connections are woken through
//! their [`Mailbox`], so a message makes one cross-task hand-off from publisher to
//! consumer.
//!
//! What the queue's arguments (and policies) ask for is applied under the same lock:
//! length limits, TTLs checked at the head (woken by the broker's timers), priorities,
//! consumer priorities and a single active consumer. Messages that leave unconsumed, and
//! the queue's own expiry, are returned to the caller as [`Effects`]: the queue never
//! reaches back into its vhost, since a dead letter's route takes the vhost's locks and
//! may lead back to this queue.
//!
//! Lock order, outermost first (the broker's one statement of it): a vhost's registries
//! (exchanges, queues), then one queue's state, then what a queue calls while holding
//! its own (its mailbox, the timers' schedule, its log's files). No code takes an outer
//! lock while holding an inner one, and no code holds two queues' locks at once.

pub mod arguments;
pub mod credit;
pub mod dead_letter;
pub mod effects;
pub(crate) mod group;
pub mod mailbox;
#[cfg(test)]
mod model_tests;
mod paging;
pub mod partition_key;
pub mod partitioned;
#[cfg(test)]
mod partitioned_model_tests;
#[cfg(test)]
mod partitioned_tests;
pub mod ready;
pub mod stream;
pub mod stream_groups;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use amqp_codec::amq_protocol::types::FieldTable;
use amqp_codec::{ReplyCode, ShortStr};
use parking_lot::Mutex;

pub use credit::{Credit, Limit};
pub use effects::{Effects, Move, MoveRoute};
pub use mailbox::{GroupEvent, Mailbox, Outgoing};
pub use partitioned::{GroupSnapshot, MemberSnapshot, Membership, PartitionSnapshot};

use crate::error::{AmqpError, AmqpResult};
use crate::message::{Handling, Message, QueuedMessage};
use crate::stats::QueueCounters;
use crate::store::stream_log::StreamFiles;
use crate::store::{
    BrokerStore, MessageRecord, PendingSync, QueueLog, Recovery, SegmentPosition, StoreError,
    SyncTarget,
};
use crate::timers::{Timers, Wake, now_ms};
use arguments::{DeadLetterStrategy, Overflow, QueueArguments, QueueType};
use dead_letter::{DeadLetter, DeathReason};
pub(crate) use paging::Paging;
use partitioned::{Locked, Partitioned};
use ready::Ready;
pub use stream::Retention;
use stream::{Reader, Stream, StreamFilter, StreamStart};
pub use stream_groups::StreamGroupSnapshot;
use stream_groups::Streams;

/// Identifies a consumer across the broker (unique for the broker's lifetime).
pub type ConsumerId = u64;

/// Identifies a client connection (unique for the broker's lifetime).
pub type ConnectionId = u64;

/// What `queue.declare` asks for.
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    /// Queue name (already generated when the client left it empty).
    pub name: ShortStr,
    /// The server generated the name (`amq.gen-…`), so the reserved prefix is allowed.
    pub server_named: bool,
    /// Only check that it exists.
    pub passive: bool,
    /// Survive restarts.
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Optional arguments.
    pub arguments: FieldTable,
}

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
    /// Its priority (`x-priority`): higher ones are served first while they have credit.
    pub priority: i32,
}

/// The declared properties of a queue, compared on redeclaration. The default is a
/// plain transient queue.
#[derive(Debug, Clone, Default)]
pub struct QueueSettings {
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection and deleted with it.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer goes, once it has had one.
    pub auto_delete: bool,
    /// Optional arguments (`x-…`) as declared, compared on redeclaration and stored.
    pub arguments: FieldTable,
    /// The same arguments, validated.
    pub parsed: QueueArguments,
    /// For the hidden queue of a delayed exchange: that exchange. Messages then wait in
    /// due-time order and are routed through it when their delay is over.
    pub holds_for: Option<ShortStr>,
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

/// How many ready messages a queue keeps in memory before the rest stay only in its log
/// (a durable queue's) or spill to disk (a transient queue's), to be paged in as consumers
/// catch up: so that a backlog larger than memory works.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// A durable queue's: its messages are on disk anyway.
    Durable,
    /// A transient queue's: larger, because spilling is extra work that a short burst
    /// should not cost.
    Transient,
    /// Any queue's while the broker's queued messages take more memory than the spill
    /// budget: then many queues with backlogs still fit.
    Tight,
}

impl Window {
    /// (messages, body bytes) at most.
    fn limits(self) -> (usize, usize) {
        let paging = Paging::current();
        match self {
            Window::Durable => paging.durable,
            Window::Transient => paging.transient,
            Window::Tight => paging.tight,
        }
    }
}

/// What a ready message costs in memory besides its body: its queue entry and the
/// header and size-class rounding of the one allocation it keeps, for the memory alarm.
const MESSAGE_FOOTPRINT: usize = std::mem::size_of::<QueuedMessage>() + 64;

/// The log record of `message` as a queue writes it.
fn record(message: &Message, persistent: bool, expires_at_ms: u64) -> MessageRecord<'_> {
    MessageRecord {
        persistent,
        expires_at_ms,
        exchange: message.exchange(),
        routing_key: message.routing_key(),
        properties: message.raw_properties(),
        body: message.body(),
    }
}

/// How long dead letters that no queue took wait before they are tried again
/// (`at-least-once`).
const DEAD_LETTER_RETRY_MS: u64 = 1000;

/// How a publish went for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Held in memory only.
    Memory,
    /// Written to the durable log of partition `.0` (0 for a plain queue): a group
    /// commit of [`Queue::sync_target`] makes it safe.
    Logged(u16),
    /// Refused by a full queue (`x-overflow` `reject-publish`): a confirm is a nack.
    Rejected,
}

#[derive(Debug, Default)]
struct QueueState {
    /// The arguments in force (declared, with policies applied).
    args: QueueArguments,
    /// Ready messages held in memory, oldest first within each priority.
    ready: Ready,
    /// Ready messages that are only in the log, all after `ready`'s.
    paged: u64,
    /// Body bytes of the paged messages.
    paged_bytes: u64,
    /// Purged messages still in the log, just after `last_loaded`: acked as they are
    /// read, a slice per wake-up, never delivered.
    purged: u64,
    /// The newest log position ever loaded into memory: paging resumes after it.
    last_loaded: Option<SegmentPosition>,
    /// The queue's log. A durable queue's holds every message; a transient queue's is a
    /// spill log, made when its backlog first outgrows memory, holding only what did not
    /// fit (never synced, gone with the queue or at the next start). Boxed: a log's state is larger than the rest of the queue's, and most
    /// partitions of a partitioned queue never make one.
    log: Option<Box<QueueLog>>,
    /// `log` is a spill log.
    spill: bool,
    /// A spill log could not be made: the backlog stays in memory.
    spill_unavailable: bool,
    /// What turns the log positions of the messages spilled since the backlog last fitted
    /// in memory into offsets that follow the offsets of the messages before them.
    spill_base: u64,
    /// The offset of the next message kept in memory by a queue without a durable log.
    next_offset: u64,
    /// Consumers, highest priority first, in arrival order within a priority.
    consumers: Vec<ConsumerHandle>,
    /// All consumers share one priority, so dispatch is plain round-robin.
    uniform_priority: bool,
    /// Where round-robin dispatch looks first (u32: with `unacked`, it keeps an idle
    /// partition within its size budget).
    next_consumer: u32,
    /// Consumers passed over in this dispatch because their connection was full.
    stalled: Vec<usize>,
    had_consumer: bool,
    /// Deliveries handed out to be acked and not yet settled (acked, rejected,
    /// returned): the management API's unacknowledged count.
    unacked: u32,
    deleted: bool,
    /// Deleted with appends whose sync failed (see [`Queue::abandon`]): none of them
    /// may be reported durable.
    lost_appends: bool,
    /// Some message in memory carries an expiry (so dispatch checks the clock).
    expiring: bool,
    /// The wake-up already asked of the timers (0: none).
    timer_at_ms: u64,
    /// A slice of expiry or length-limit work stopped short: wake again at once.
    discard_due: bool,
    /// Dead letters no queue took, kept under `at-least-once` to be tried again at
    /// `retry_at_ms`; their records stay in the log meanwhile.
    retained: Vec<DeadLetter>,
    /// When the retained dead letters are tried again.
    retry_at_ms: u64,
    /// Last time the queue was used, for `x-expires`.
    last_used_ms: u64,
    /// This is a delayed exchange's hold: messages are kept in due-time order, all in
    /// memory, and leave through the exchange when due.
    holds: bool,
    /// The state of one partition of a partitioned queue (see [`partitioned`]): its
    /// consumers are the partition's owners, and handed-out deliveries are counted.
    partition: Option<PartitionTally>,
}

/// A partition moving from owners with unacked deliveries to others.
#[derive(Debug)]
struct Drain {
    /// The new owners (none: it waits for a member).
    to: Vec<ConsumerHandle>,
    /// The owners it leaves, which hold its deliveries.
    from: std::collections::BTreeSet<ConsumerId>,
    /// When it began.
    since_ms: u64,
}

/// What a partition keeps besides a plain queue's state.
#[derive(Debug, Default)]
struct PartitionTally {
    /// Its index, stamped on the messages it hands out so that settling finds it.
    index: u16,
    /// Deliveries handed out (to consumers or `basic.get`) and not yet settled: a new
    /// owner gets the partition only once this is 0, so that no key is unacked at two
    /// consumers at once.
    unacked: u32,
    /// A move waiting for the partition's unacked deliveries to be settled.
    draining: Option<Drain>,
    /// Ready messages and body bytes in the queue's other partitions, as last seen: the
    /// length limits bound the whole queue.
    outside: (u64, u64),
    /// What this partition last added to the queue's [`FlowGauge`]: ready messages and
    /// body bytes awaiting its owners.
    shown_to_flow: (u64, u64),
}

/// What a queue is given by the broker around it: never a way back into its vhost.
#[derive(Clone)]
pub struct QueueEnv {
    /// The timers that wake it at its deadlines.
    pub timers: Arc<Timers>,
    /// What the timers wake when a deadline comes: the owner's handler, which asks the
    /// queue what is due ([`Queue::wake`]) and carries out the effects.
    pub clock: Arc<dyn Wake>,
    /// Where a transient queue's spill log is made; none without a data directory.
    /// Weak, so that a queue still referenced somewhere at shutdown (a commit in
    /// flight) does not keep the data directory locked.
    pub store: Weak<BrokerStore>,
    /// Set while the broker's queued messages take more memory than the spill budget.
    pub memory_tight: Arc<AtomicBool>,
}

#[cfg(test)]
impl QueueEnv {
    /// An environment for a queue on its own in a unit test: its timers wake nothing.
    pub(crate) fn for_tests() -> Self {
        struct Nothing;
        impl Wake for Nothing {
            fn wake(self: Arc<Self>, _now_ms: u64) {}
        }
        Self {
            timers: Arc::new(Timers::start().expect("a timer thread")),
            clock: Arc::new(Nothing),
            store: Weak::new(),
            memory_tight: Arc::default(),
        }
    }
}

impl std::fmt::Debug for QueueEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEnv").finish_non_exhaustive()
    }
}

/// A message queue.
#[derive(Debug)]
pub struct Queue {
    name: ShortStr,
    vhost_name: String,
    env: QueueEnv,
    settings: QueueSettings,
    body: Body,
    flow: FlowGauge,
    /// Messages enqueued, acked, put back and got, for `message_stats`.
    counters: crate::stats::QueueCounters,
    /// A partitioned queue's last use, for its `x-expires` (a plain queue keeps it in
    /// its state).
    last_used_ms: AtomicU64,
    /// A partitioned queue's `x-expires` in force (0: none); its partitions have none.
    expires_ms: AtomicU64,
}

/// What a queue holds its messages in.
// One per queue, inside its `Arc`: boxing the plain state would only add a pointer to
// chase on every publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Body {
    /// One FIFO under one lock.
    Plain(Mutex<QueueState>),
    /// N partitions, each under its own lock (`x-partitions`).
    Partitioned(Partitioned),
    /// An append-only log read by each consumer from its own offset
    /// (`x-queue-type: stream`). `home` is an empty plain state holding the queue's
    /// log directory, so that the queue's life cycle (deletion, retirement of its
    /// directory, timers) works as for any durable queue.
    Stream {
        /// The empty state that owns the directory.
        home: Mutex<QueueState>,
        /// The log (one per partition), its consumers and groups.
        streams: Streams,
    },
}

/// A queue's backlog as publishers' flow control sees it, updated after each dispatch:
/// the ready messages in memory while the queue has consumers (a backlog they are
/// working off; none without consumers, whose backlog spills to disk instead), and how
/// many deliveries the queue has handed out, which tells a backlog that drains from
/// one whose consumers are stuck.
#[derive(Debug, Default)]
pub struct FlowGauge {
    ready: AtomicU64,
    ready_bytes: AtomicU64,
    handed: AtomicU64,
}

impl FlowGauge {
    /// What `st` holds for its consumers: ready messages in memory and their bytes.
    fn backlog_of(st: &QueueState) -> (u64, u64) {
        if st.consumers.is_empty() {
            (0, 0)
        } else {
            (st.ready.len() as u64, st.ready.bytes() as u64)
        }
    }

    /// Shows `st`'s backlog after a dispatch that handed out `handed` deliveries (a
    /// partition's share is shown as its lock is released: [`show_share`](Self::show_share)).
    fn set(&self, st: &QueueState, handed: u64) {
        if st.partition.is_none() {
            let (ready, bytes) = Self::backlog_of(st);
            self.ready.store(ready, Ordering::Relaxed);
            self.ready_bytes.store(bytes, Ordering::Relaxed);
        }
        if handed > 0 {
            self.handed.fetch_add(handed, Ordering::Relaxed);
        }
    }

    /// Shows a partition's share of the queue's backlog: adds its change since the
    /// last showing, under the partition's lock, so that the queue's figure is the sum
    /// of its partitions' without a lock over them all. Unchanged, it writes nothing
    /// to the line all partitions share.
    fn show_share(&self, st: &mut QueueState) {
        let backlog = Self::backlog_of(st);
        let Some(tally) = st.partition.as_mut() else {
            return;
        };
        let shown = std::mem::replace(&mut tally.shown_to_flow, backlog);
        if backlog != shown {
            // Each share never goes below 0, so neither does the sum; the wrapping
            // adds take away what a share lost.
            self.ready
                .fetch_add(backlog.0.wrapping_sub(shown.0), Ordering::Relaxed);
            self.ready_bytes
                .fetch_add(backlog.1.wrapping_sub(shown.1), Ordering::Relaxed);
        }
    }

    /// Ready messages in memory awaiting the queue's consumers (0 without consumers).
    pub fn ready(&self) -> u64 {
        self.ready.load(Ordering::Relaxed)
    }

    /// Their body bytes.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes.load(Ordering::Relaxed)
    }

    /// Deliveries handed to consumers so far.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }
}

/// The ordering key of a logged message: its log position, which grows in publish order.
fn position_offset(pos: SegmentPosition) -> u64 {
    (u64::from(pos.segment) << 32) | u64::from(pos.offset)
}

/// The expiry of a message published at `now_ms` under the queue's and its own TTL.
fn expiry(now_ms: u64, queue_ttl: Option<u64>, message_ttl: Option<u64>) -> u64 {
    match (queue_ttl, message_ttl) {
        (None, None) => 0,
        (a, b) => now_ms.saturating_add(a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX))),
    }
}

impl QueueState {
    /// Counts out of the unacknowledged deliveries those of `messages` that awaited an
    /// ack; how many there were.
    fn settle_acks(&mut self, messages: &[QueuedMessage]) -> usize {
        let acked = messages.iter().filter(|m| m.awaiting_ack).count();
        self.unacked = self
            .unacked
            .saturating_sub(u32::try_from(acked).unwrap_or(u32::MAX));
        acked
    }

    fn ready_count(&self) -> u64 {
        self.ready.len() as u64 + self.paged
    }

    fn ready_bytes(&self) -> u64 {
        self.ready.bytes() as u64 + self.paged_bytes
    }

    /// Ready messages and bytes of the whole queue, for its length limits: a partition
    /// adds the other partitions'.
    fn limited(&self) -> (u64, u64) {
        let (count, bytes) = self.partition.as_ref().map_or((0, 0), |p| p.outside);
        (self.ready_count() + count, self.ready_bytes() + bytes)
    }

    /// Whether the queue holds more than its length limits allow.
    fn over_limit(&self) -> bool {
        let (count, bytes) = self.limited();
        self.args.max_length.is_some_and(|max| count > max)
            || self.args.max_length_bytes.is_some_and(|max| bytes > max)
    }

    /// Whether one more message of `len` body bytes would exceed a length limit.
    fn full_for(&self, len: usize) -> bool {
        let (count, bytes) = self.limited();
        self.args.max_length.is_some_and(|max| count >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| bytes + len as u64 > max)
    }

    /// Whether the ready messages in memory fill `window`: further ones wait in the log.
    fn memory_full(&self, window: Window) -> bool {
        let (messages, bytes) = window.limits();
        !self.holds
            && (self.paged > 0
                || self.purged > 0
                || self.ready.len() >= messages
                || self.ready.bytes() >= bytes)
    }

    /// Reads the next page of logged messages into memory when memory runs low.
    fn refill(&mut self, queue: &str) {
        if self.ready.len() < Paging::current().refill_below {
            self.read_page(queue);
        }
    }

    /// Reads the next page of logged messages into memory.
    fn read_page(&mut self, queue: &str) {
        if self.paged == 0 && self.purged == 0 {
            return;
        }
        let Some(log) = self.log.as_mut() else {
            self.paged = 0;
            self.paged_bytes = 0;
            self.purged = 0;
            return;
        };
        let paging = Paging::current();
        let page = match log.read(self.last_loaded, paging.page_messages, paging.page_bytes) {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(queue, %error, "cannot read messages from the log");
                return;
            }
        };
        if page.is_empty() {
            tracing::error!(
                queue,
                missing = self.paged + self.purged,
                "the log holds fewer messages than counted"
            );
            self.paged = 0;
            self.paged_bytes = 0;
            self.purged = 0;
            return;
        }
        let quorum = self.args.queue_type == QueueType::Quorum;
        for (pos, stored) in page {
            if self.purged > 0 {
                self.purged -= 1;
                self.last_loaded = Some(pos);
                let _ = log.ack(pos);
                continue;
            }
            let marks = log.delivery_marks(pos);
            let redelivered = marks > 0;
            // A quorum queue's message comes back with the returns it had counted.
            let delivery_count = if quorum { marks.saturating_sub(1) } else { 0 };
            self.last_loaded = Some(pos);
            self.paged = self.paged.saturating_sub(1);
            self.paged_bytes = self.paged_bytes.saturating_sub(stored.body.len() as u64);
            let mut message = Message::new(
                &stored.exchange,
                &stored.routing_key,
                &stored.properties,
                stored.body,
            );
            if delivery_count > 0 {
                message = message.with_delivery_count(delivery_count);
            }
            self.expiring |= stored.expires_at_ms != 0;
            let offset = if self.spill {
                position_offset(pos).wrapping_add(self.spill_base)
            } else {
                position_offset(pos)
            };
            if self.spill {
                self.next_offset = offset + 1;
            }
            let queued = QueuedMessage {
                offset,
                position: Some(pos),
                redelivered,
                expires_at_ms: stored.expires_at_ms,
                delivery_count,
                priority: message.properties().and_then(|p| p.priority()).unwrap_or(0),
                partition: 0,
                awaiting_ack: false,
                message,
            };
            if self.holds {
                self.ready.insert_by_expiry(queued);
            } else {
                self.ready.push_back(queued);
            }
        }
        if self.paged == 0 {
            self.paged_bytes = 0;
        }
    }

    /// Adds a newly published or paged-in message: behind the others, or for a hold, in
    /// due order.
    fn enqueue(&mut self, message: QueuedMessage) {
        if self.holds {
            self.ready.insert_by_expiry(message);
        } else {
            self.ready.push_back(message);
        }
    }

    /// Takes the next ready message, paging in from the log when memory runs low.
    fn next_ready(&mut self, queue: &str) -> Option<QueuedMessage> {
        if self.ready.len() < Paging::current().refill_below {
            self.refill(queue);
        }
        if self.ready.is_empty() && self.purged > 0 && self.paged > 0 {
            // Purged messages stand before the next ones in the log.
            self.work_off_purge(queue);
            self.refill(queue);
        }
        self.ready.pop_front()
    }

    /// Records in the log that a message leaves the queue for good.
    fn forget(&mut self, message: &QueuedMessage) {
        if let (Some(log), Some(pos)) = (self.log.as_mut(), message.position) {
            let _ = log.ack(pos);
        }
    }

    /// A message leaves the queue unconsumed: it goes to the dead-letter exchange, if the
    /// queue has one (or, from a delayed exchange's hold, on through that exchange), and
    /// out of the log (for a moved message, once its copies are durable).
    fn discard(&mut self, message: QueuedMessage, reason: DeathReason, out: &mut Vec<DeadLetter>) {
        if self.args.dead_letter_exchange.is_some() || self.holds {
            // Its record stays until the copies are durable where it goes.
            out.push(DeadLetter {
                position: message.position,
                message: message.message,
                reason,
            });
        } else {
            self.forget(&message);
        }
    }

    /// Dead-letters (or drops) the messages at the head of the queue that expire before
    /// `cutoff_ms`: `now + 1` for everything due by now, `now` when handing messages to
    /// consumers, so that a TTL of 0 still reaches a consumer waiting for it.
    fn expire(&mut self, queue: &str, cutoff_ms: u64, out: &mut Vec<DeadLetter>) {
        if !self.expiring {
            return;
        }
        let mut discarded = 0;
        loop {
            let mut expired = Vec::new();
            self.ready.pop_expired(cutoff_ms, |m| expired.push(m));
            let any = !expired.is_empty();
            discarded += expired.len();
            for message in expired {
                self.discard(message, DeathReason::Expired, out);
            }
            if !self.ready.is_empty() || self.paged == 0 {
                break;
            }
            if discarded >= Paging::current().discard_slice {
                self.discard_due = true;
                return;
            }
            self.refill(queue);
            if !any && self.ready.is_empty() {
                break;
            }
        }
        if self.ready.is_empty() && self.paged == 0 {
            self.expiring = false;
        }
    }

    /// Acks the next slice of purged messages still in the log.
    fn work_off_purge(&mut self, queue: &str) {
        let paging = Paging::current();
        let mut pages = (paging.discard_slice / paging.page_messages).max(1);
        while self.purged > 0 && pages > 0 {
            let before = self.purged;
            self.read_page(queue);
            if self.purged == before {
                // The log cannot be read now: no wake-up of its own for the rest (that
                // would spin); the next read of the queue tries again.
                return;
            }
            pages -= 1;
        }
        if self.purged > 0 {
            self.discard_due = true;
        }
    }

    /// Drops (or dead-letters) the oldest messages while a length limit is exceeded.
    fn drop_head(&mut self, queue: &str, out: &mut Vec<DeadLetter>) {
        let mut discarded = 0;
        while self.over_limit() {
            if discarded == Paging::current().discard_slice {
                self.discard_due = true;
                return;
            }
            let Some(message) = self.next_ready(queue) else {
                break;
            };
            self.discard(message, DeathReason::MaxLen, out);
            discarded += 1;
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

    /// Picks the consumer for the next message and takes one of its credits: the single
    /// active one, or round-robin among the highest-priority consumers with credit.
    fn pick_consumer(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        if n == 0 {
            return None;
        }
        if self.args.single_active_consumer {
            let active = (0..n).min_by_key(|&i| self.consumers[i].id)?;
            return self.take_credit(active).then_some(active);
        }
        let mut start = 0;
        while start < n {
            let end = if self.uniform_priority {
                n
            } else {
                let p = self.consumers[start].priority;
                (start..n)
                    .find(|&i| self.consumers[i].priority != p)
                    .unwrap_or(n)
            };
            let size = end - start;
            for k in 0..size {
                let at = start + (self.next_consumer as usize + k) % size;
                if self.take_credit(at) {
                    self.next_consumer = u32::try_from(at - start + 1).unwrap_or(0);
                    return Some(at);
                }
            }
            start = end;
        }
        None
    }

    /// Takes a unit of consumer `at`'s credit if it may be handed another delivery; one
    /// refused only because its connection is full is noted in `stalled`.
    fn take_credit(&mut self, at: usize) -> bool {
        let consumer = &self.consumers[at];
        if !consumer.credit.has_room() {
            return false;
        }
        if !consumer.mailbox.has_room() {
            if !self.stalled.contains(&at) {
                self.stalled.push(at);
            }
            return false;
        }
        consumer.credit.try_acquire()
    }

    /// The next deadline the timers must wake the queue for, if any.
    fn next_deadline(&self) -> Option<u64> {
        if self.discard_due {
            return Some(now_ms());
        }
        let expiry = if self.expiring {
            self.ready.next_expiry()
        } else {
            None
        };
        let unused = self
            .args
            .expires
            .filter(|_| self.consumers.is_empty() && !self.deleted)
            .map(|ttl| self.last_used_ms.saturating_add(ttl));
        let retry = (!self.retained.is_empty()).then_some(self.retry_at_ms);
        [expiry, unused, retry].into_iter().flatten().min()
    }
}

impl Queue {
    /// A new, empty queue; durable queues bring their (new or recovered) log and what was
    /// recovered in it. A partitioned queue's first partition takes that log; the others
    /// make theirs when first used, or are given theirs by [`Queue::recover_partition`].
    pub fn new(
        name: ShortStr,
        vhost_name: &str,
        settings: QueueSettings,
        log: Option<QueueLog>,
        recovered: &Recovery,
        env: QueueEnv,
    ) -> Self {
        let args = settings.parsed.clone();
        let holds = settings.holds_for.is_some();
        let partitions = args.partitions.filter(|_| !holds);
        let fresh = |args: QueueArguments| QueueState {
            ready: Ready::new(args.max_priority.unwrap_or(0)),
            args,
            uniform_priority: true,
            last_used_ms: now_ms(),
            holds,
            ..QueueState::default()
        };
        let part_args = partition_arguments(&args);
        let log_id = log
            .as_ref()
            .and_then(|l| l.dir().file_name())
            .map(|id| id.to_string_lossy().into_owned());
        let first = QueueState {
            log: log.map(Box::new),
            paged: recovered.messages,
            paged_bytes: recovered.bytes,
            expiring: recovered.expiring > 0,
            ..fresh(if partitions.is_some() {
                part_args.clone()
            } else {
                args.clone()
            })
        };
        let body = match partitions {
            None => Body::Plain(Mutex::new(first)),
            Some(n) => Body::Partitioned(Partitioned::new(
                n,
                args.partition_hash.clone(),
                args.consumers_per_partition.unwrap_or(1),
                log_id,
                first,
                || fresh(part_args.clone()),
            )),
        };
        Self {
            name,
            vhost_name: vhost_name.to_owned(),
            env,
            settings,
            body,
            flow: FlowGauge::default(),
            counters: crate::stats::QueueCounters::default(),
            last_used_ms: AtomicU64::new(now_ms()),
            expires_ms: AtomicU64::new(args.expires.unwrap_or(0)),
        }
    }

    /// A stream queue over `files`, one per partition (partition 0's directory is the
    /// queue's). `me` is the queue's own reference (the stream hands out deliveries
    /// that name it).
    pub fn new_stream(
        me: Weak<Queue>,
        name: ShortStr,
        vhost_name: &str,
        settings: QueueSettings,
        home: QueueLog,
        files: Vec<StreamFiles>,
        env: QueueEnv,
    ) -> Self {
        let args = settings.parsed.clone();
        let retention = retention(&args, &settings.arguments);
        let state = QueueState {
            ready: Ready::new(0),
            log: Some(Box::new(home)),
            args: args.clone(),
            uniform_priority: true,
            last_used_ms: now_ms(),
            ..QueueState::default()
        };
        let hash = args.partitions.map(|_| args.partition_hash.clone());
        let parts = files
            .into_iter()
            .enumerate()
            .map(|(p, StreamFiles { log, offsets })| {
                let p = u16::try_from(p).unwrap_or(u16::MAX);
                Arc::new(Stream::new(me.clone(), p, log, offsets, retention))
            })
            .collect();
        Self {
            name,
            vhost_name: vhost_name.to_owned(),
            env,
            settings,
            body: Body::Stream {
                home: Mutex::new(state),
                streams: Streams::new(parts, hash),
            },
            flow: FlowGauge::default(),
            counters: crate::stats::QueueCounters::default(),
            last_used_ms: AtomicU64::new(now_ms()),
            expires_ms: AtomicU64::new(0),
        }
    }

    /// The stream body, if this is a stream.
    fn streams(&self) -> Option<&Streams> {
        match &self.body {
            Body::Stream { streams, .. } => Some(streams),
            _ => None,
        }
    }

    /// A stream's partitions (one without `x-partitions`); none for other queues.
    fn stream_parts(&self) -> &[Arc<Stream>] {
        self.streams().map_or(&[], |s| &s.parts)
    }

    /// Changes how long a stream keeps its messages, and applies it.
    pub fn set_stream_retention(self: &Arc<Self>, retention: Retention) {
        if self.is_stream() {
            for part in self.stream_parts() {
                part.set_retention(retention);
            }
            self.arm_stream_timer();
        }
    }

    /// Has the timers wake a stream when its next periodic work is due (age retention,
    /// a retry of failed reads).
    fn arm_stream_timer(self: &Arc<Self>) {
        let now = now_ms();
        let Some(at) = self
            .stream_parts()
            .iter()
            .filter_map(|s| s.next_wake(now))
            .min()
        else {
            return;
        };
        let clock: Weak<dyn Wake> = Arc::downgrade(&self.env.clock);
        self.env.timers.wake_at(at, clock);
    }

    /// Whether this is a stream (`x-queue-type: stream`).
    pub fn is_stream(&self) -> bool {
        self.streams().is_some()
    }

    /// Registers a consumer of a stream, reading from `start` the messages `filter`
    /// passes; a tracked one (`track`: its consumer tag) resumes at its committed
    /// offset. On a partitioned stream it joins its group (`membership.group`, else
    /// the default group), which resumes at the group's committed offsets, or reads
    /// the partitions it names.
    ///
    /// # Errors
    /// 404 if the queue was deleted meanwhile; 406 if another consumer tracks under
    /// the same key; 541 if the log cannot be read.
    pub fn add_stream_consumer(
        self: &Arc<Self>,
        reader: Reader,
        track: Option<String>,
        membership: &Membership,
    ) -> AmqpResult<()> {
        let Some(streams) = self.streams() else {
            return Err(AmqpError::new(
                ReplyCode::InternalError,
                format!("{} is not a stream", self.name),
            ));
        };
        if self.lock(0).deleted {
            return Err(crate::error::no_queue(&self.name, &self.vhost_name));
        }
        let key = track.as_deref().map(stream_groups::consumer_key);
        let added = match (streams.partitions(), &membership.partitions) {
            (None, _) => streams.parts[0].add_consumer(reader, key),
            (Some(_), Some(list)) => streams.add_to(&reader, list, key.as_deref()),
            (Some(_), None) => streams.join(&self.name, reader, membership.group.as_deref()),
        };
        let ask_sync = added.map_err(|e| match e {
            stream::AddError::Deleted => crate::error::no_queue(&self.name, &self.vhost_name),
            stream::AddError::Tracked => crate::error::stream::tracking_key_in_use(
                track.as_deref().unwrap_or_default(),
                &self.name,
                &self.vhost_name,
            ),
            stream::AddError::Store(e) => AmqpError::new(
                ReplyCode::InternalError,
                format!("cannot read stream '{}': {e}", self.name),
            ),
        })?;
        if ask_sync {
            self.ask_sync();
        }
        self.dispatch_stream();
        Ok(())
    }

    /// Serves every stream partition's consumers.
    fn dispatch_stream(self: &Arc<Self>) {
        let mut retry = false;
        for part in self.stream_parts() {
            retry |= part.dispatch();
        }
        if retry {
            self.arm_stream_timer();
        }
    }

    /// Asks the group commit for a round over this queue's logs, for a change no
    /// publish may come to carry to disk (a stream's committed offsets).
    fn ask_sync(self: &Arc<Self>) {
        if let Some(store) = self.env.store.upgrade() {
            store.commit(self.sync_targets(), None);
        }
    }

    /// Records that a stream consumer (known by its `credit`) settled the deliveries
    /// at `offsets` of `partition`, for its tracked offset.
    pub fn stream_settled(self: &Arc<Self>, credit: &Arc<Credit>, partition: u16, offsets: &[u64]) {
        let Some(part) = self.stream_parts().get(usize::from(partition)) else {
            return;
        };
        if part.settled(credit, offsets) {
            self.ask_sync();
        }
    }

    /// A stream delivery to the consumer whose credit is `credit` was never written:
    /// its tracked offset must not pass it.
    pub fn stream_given_back(self: &Arc<Self>, credit: &Arc<Credit>, message: &QueuedMessage) {
        let Some(part) = self.stream_parts().get(usize::from(message.partition)) else {
            return;
        };
        if part.given_back(credit, message.offset) {
            self.ask_sync();
        }
    }

    /// A closing channel held deliveries of this stream's consumer `credit` that it
    /// never settled: a reader stopped for them makes way now.
    pub fn stream_abandoned(self: &Arc<Self>, credit: &Arc<Credit>) {
        let mut ask = false;
        for part in self.stream_parts() {
            ask |= part.abandoned(credit);
        }
        if ask {
            self.ask_sync();
        }
    }

    /// A stream's consumer groups: per group and partition, the committed offset and
    /// the lag behind the end; empty for other queues.
    pub fn stream_groups(&self) -> Vec<StreamGroupSnapshot> {
        self.streams().map(Streams::snapshot).unwrap_or_default()
    }

    /// Gives partition `p` of a recovered partitioned queue its log, as found at start.
    pub fn recover_partition(&self, p: u16, log: QueueLog, recovered: &Recovery) {
        let Some(parts) = self.partitioned() else {
            return;
        };
        let Some(part) = parts.parts.get(usize::from(p)) else {
            return;
        };
        let mut st = Locked::new(&part.state, Some((&parts.totals, &self.flow)));
        st.log = Some(Box::new(log));
        st.paged = recovered.messages;
        st.paged_bytes = recovered.bytes;
        st.expiring = recovered.expiring > 0;
    }

    /// Locks the plain queue's state, or partition `p`'s.
    fn lock(&self, p: usize) -> Locked<'_> {
        match &self.body {
            Body::Plain(state) | Body::Stream { home: state, .. } => Locked::new(state, None),
            Body::Partitioned(parts) => parts.lock(p, &self.flow),
        }
    }

    /// How many states the queue has: 1, or its partition count.
    fn state_count(&self) -> usize {
        self.partitioned().map_or(1, |p| p.parts.len())
    }

    /// The queue's name.
    pub fn name(&self) -> &ShortStr {
        &self.name
    }

    /// Its declared settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// How many partitions it has, `None` for a plain queue: the effective count fixed at
    /// creation (its `x-partitions`, else its policy's then), which redeclarations and
    /// consumer arguments are checked against.
    pub fn partitions(&self) -> Option<u16> {
        match &self.body {
            Body::Partitioned(parts) => Some(parts.count()),
            Body::Stream { streams, .. } => streams.partitions(),
            Body::Plain(_) => None,
        }
    }

    /// A partitioned queue's group and partitions as they are now (owners, depths,
    /// unacked counts, drains); `None` for a plain queue.
    pub fn group_snapshot(&self) -> Option<GroupSnapshot> {
        self.partitioned().map(Partitioned::snapshot)
    }

    /// Whether it keeps a durable log.
    pub fn is_logged(&self) -> bool {
        if let Some(parts) = self.partitioned() {
            return parts.log_id.is_some();
        }
        let st = self.lock(0);
        st.log.is_some() && !st.spill
    }

    /// What a group commit syncs to make everything appended to this queue durable:
    /// the queue, or each of its partitions that has a log.
    pub fn sync_targets(self: &Arc<Self>) -> Vec<Arc<dyn SyncTarget>> {
        match &self.body {
            Body::Plain(_) => vec![self.clone() as Arc<dyn SyncTarget>],
            Body::Stream { streams, .. } => streams
                .parts
                .iter()
                .map(|p| p.clone() as Arc<dyn SyncTarget>)
                .collect(),
            Body::Partitioned(parts) => parts
                .parts
                .iter()
                .filter(|p| p.state.lock().log.is_some())
                .map(|p| p.clone() as Arc<dyn SyncTarget>)
                .collect(),
        }
    }

    /// What a group commit syncs for what [`Queue::publish`] reported in partition `p`.
    pub fn sync_target(self: &Arc<Self>, p: u16) -> Arc<dyn SyncTarget> {
        if let Some(part) = self.stream_parts().get(usize::from(p)) {
            return part.clone();
        }
        match self
            .partitioned()
            .and_then(|parts| parts.parts.get(usize::from(p)))
        {
            Some(part) => part.clone(),
            None => self.clone(),
        }
    }

    /// Where [`sync_target`](Self::sync_target)`(p)` points, to tell whether a batch
    /// already waits on it without taking a reference.
    pub fn sync_target_addr(&self, p: u16) -> *const () {
        match self
            .partitioned()
            .and_then(|parts| parts.parts.get(usize::from(p)))
        {
            Some(part) => Arc::as_ptr(part).cast(),
            None => std::ptr::from_ref(self).cast(),
        }
    }

    /// Checks that connection `conn` may use this queue (exclusive queues belong to one).
    ///
    /// # Errors
    /// 405 RESOURCE_LOCKED for any other connection than the owner.
    pub fn check_access(&self, conn: ConnectionId) -> AmqpResult<()> {
        match self.settings.exclusive_owner {
            Some(owner) if owner != conn => {
                Err(crate::error::queue_locked(&self.name, &self.vhost_name))
            }
            _ => Ok(()),
        }
    }

    /// Ready messages (not counting those delivered and unacked).
    pub fn message_count(&self) -> u32 {
        let count = match (&self.body, self.partitioned()) {
            (Body::Stream { streams, .. }, _) => {
                streams.parts.iter().map(|p| p.message_count()).sum()
            }
            (_, Some(parts)) => parts.totals.ready.load(Ordering::Relaxed),
            (_, None) => self.lock(0).ready_count(),
        };
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Deliveries handed out to be acked and not yet settled; 0 for a stream, whose
    /// reads settle nothing.
    pub fn unacked_count(&self) -> u64 {
        if self.is_stream() {
            return 0;
        }
        (0..self.state_count())
            .map(|p| u64::from(self.lock(p).unacked))
            .sum()
    }

    /// Memory its ready messages hold (those not paged out): bodies, plus each
    /// message's own footprint, which dominates for small bodies.
    pub fn memory_bytes(&self) -> u64 {
        if self.is_stream() {
            return self.stream_parts().iter().map(|p| p.buffered_bytes()).sum();
        }
        (0..self.state_count())
            .map(|p| {
                let st = self.lock(p);
                (st.ready.bytes() + st.ready.len() * MESSAGE_FOOTPRINT) as u64
            })
            .sum()
    }

    /// Registered consumers (a partitioned queue's: its group's members, active or
    /// standby, and its manual consumers).
    pub fn consumer_count(&self) -> u32 {
        if self.is_stream() {
            // As RabbitMQ: a stream's `declare-ok` always says 0.
            return 0;
        }
        let count = match self.partitioned() {
            Some(parts) => parts.consumer_count(),
            None => self.lock(0).consumers.len(),
        };
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// The arguments in force (its first partition's), for tests of what policies did.
    #[cfg(test)]
    pub(crate) fn arguments_in_force(&self) -> QueueArguments {
        self.lock(0).args.clone()
    }

    /// Replaces the arguments in force (a policy changed) and applies them at once:
    /// length limits drop what is now too much, TTLs expire what is now too old.
    pub fn set_arguments(self: &Arc<Self>, args: QueueArguments, effects: &mut Effects) {
        if self.is_stream() {
            // A stream's retention comes with its policy ([`Queue::set_stream_retention`]).
            self.lock(0).args = args;
            return;
        }
        let part_args = self.partitioned().map(|_| partition_arguments(&args));
        if part_args.is_some() {
            self.expires_ms
                .store(args.expires.unwrap_or(0), Ordering::Relaxed);
            self.unused_since(self.last_used_ms.load(Ordering::Relaxed));
        }
        for p in 0..self.state_count() {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            let args = part_args.clone().unwrap_or_else(|| args.clone());
            if args.message_ttl.is_some() && st.args.message_ttl != args.message_ttl {
                tracing::debug!(queue = %self.name, "message TTL changed; it applies to new messages");
            }
            st.args = args;
            st.drop_head(&self.name, &mut letters);
            st.expire(&self.name, now_ms() + 1, &mut letters);
            st.timer_at_ms = 0;
            self.arm_timer(&mut st);
            self.hand_over(&mut st, letters, effects);
        }
    }

    /// Notes a use of the queue (a declaration), which restarts its `x-expires`
    /// countdown, and drops what expired meanwhile.
    pub fn touch(self: &Arc<Self>, effects: &mut Effects) {
        let now = now_ms();
        self.unused_since(now);
        for p in 0..self.state_count() {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            st.last_used_ms = now;
            st.expire(&self.name, now + 1, &mut letters);
            self.arm_timer(&mut st);
            self.hand_over(&mut st, letters, effects);
        }
    }

    /// Starts the clocks of a queue recovered at start-up, once the whole vhost (and so
    /// any dead-letter exchange) is back: messages recovered with an expiry are paged in
    /// so that the earliest one is woken for.
    pub fn start_clocks(self: &Arc<Self>) {
        self.unused_since(self.last_used_ms.load(Ordering::Relaxed));
        for p in 0..self.state_count() {
            let mut st = self.lock(p);
            // A wake-up asked for during recovery found the clocks held: ask afresh.
            st.timer_at_ms = 0;
            if st.expiring {
                st.refill(&self.name);
            }
            // A hold keeps everything in memory, in due order.
            while st.holds && st.paged > 0 {
                let before = st.paged;
                st.read_page(&self.name);
                if st.paged == before {
                    break;
                }
            }
            self.arm_timer(&mut st);
        }
    }

    /// For a partitioned queue with `x-expires`: notes a use at `since_ms` and, if it
    /// has no consumer, asks to be woken when it will have been unused that long. (A
    /// plain queue's state does this itself.) Takes the group's lock: never call it
    /// holding that.
    fn unused_since(self: &Arc<Self>, since_ms: u64) {
        let Some(parts) = self.partitioned() else {
            return;
        };
        self.last_used_ms.store(since_ms, Ordering::Relaxed);
        if parts.consumer_count() == 0 {
            self.arm_expiry(since_ms);
        }
    }

    /// Asks to be woken when a partitioned queue last used at `since_ms` will have been
    /// unused for its `x-expires` (in force now: declared, or from a policy).
    fn arm_expiry(self: &Arc<Self>, since_ms: u64) {
        let ttl = self.expires_ms.load(Ordering::Relaxed);
        if ttl > 0 {
            let clock: Weak<dyn Wake> = Arc::downgrade(&self.env.clock);
            self.env.timers.wake_at(since_ms.saturating_add(ttl), clock);
        }
    }

    /// Enqueues a message and hands it to a consumer with credit, if any: in a
    /// partitioned queue, in the partition its key hashes to.
    ///
    /// # Errors
    /// The log could not take it (disk full, I/O error): the message is not enqueued.
    pub fn publish(
        self: &Arc<Self>,
        message: Message,
        handling: Handling,
        effects: &mut Effects,
    ) -> Result<Enqueued, StoreError> {
        if let Some(streams) = self.streams() {
            let p = streams.route(&message);
            return match streams.parts.get(p) {
                Some(part) => part.append(&message),
                None => Ok(Enqueued::Memory),
            };
        }
        let p = self.partitioned().map_or(0, |parts| parts.route(&message));
        let mut letters = Vec::new();
        let mut st = self.lock(p);
        if let Some(parts) = self.partitioned() {
            self.ensure_partition_log(parts, &mut st, p)?;
        }
        let outcome = self.publish_locked(&mut st, message, handling, &mut letters);
        self.hand_over(&mut st, letters, effects);
        outcome
    }

    /// Makes a durable partitioned queue's partition `p` its log, on its first message.
    fn ensure_partition_log(
        &self,
        parts: &Partitioned,
        st: &mut QueueState,
        p: usize,
    ) -> Result<(), StoreError> {
        let (Some(id), None) = (&parts.log_id, &st.log) else {
            return Ok(());
        };
        if st.deleted {
            return Ok(());
        }
        let store = self
            .env
            .store
            .upgrade()
            .ok_or(StoreError::Misuse("no store for a durable queue"))?;
        let p = u16::try_from(p).map_err(|_| StoreError::Misuse("partition out of range"))?;
        st.log = Some(Box::new(store.create_partition_log(id, p)?));
        Ok(())
    }

    fn publish_locked(
        self: &Arc<Self>,
        st: &mut QueueState,
        message: Message,
        handling: Handling,
        letters: &mut Vec<DeadLetter>,
    ) -> Result<Enqueued, StoreError> {
        if st.deleted {
            return Ok(Enqueued::Memory);
        }
        // A quorum queue keeps every message, whatever its delivery mode, as RabbitMQ's.
        let handling = Handling {
            persistent: handling.persistent || st.args.queue_type == QueueType::Quorum,
            ..handling
        };
        if st.args.overflow != Overflow::DropHead && st.full_for(message.body().len()) {
            if st.args.overflow == Overflow::RejectPublishDlx
                && st.args.dead_letter_exchange.is_some()
            {
                letters.push(DeadLetter {
                    message,
                    reason: DeathReason::MaxLen,
                    position: None,
                });
            }
            return Ok(Enqueued::Rejected);
        }
        let now = now_ms();
        let expires_at_ms = if st.holds {
            st.expiring = true;
            // `now` is truncated to the millisecond: one more keeps a delayed message
            // from coming out up to a millisecond before its delay is over.
            now.saturating_add(message.delay_ms()).saturating_add(1)
        } else if st.args.message_ttl.is_some() || handling.ttl_ms.is_some() {
            st.expiring = true;
            expiry(now, st.args.message_ttl, handling.ttl_ms)
        } else {
            0
        };
        let durable_log = st.log.is_some() && !st.spill;
        let logged =
            if !durable_log && self.memory_full(st, Window::Transient) && self.spill_log(st) {
                let paged = st.paged;
                let log = st.log.as_mut().ok_or(StoreError::Misuse("no spill log"))?;
                let pos = log.append(record(&message, handling.persistent, expires_at_ms))?;
                if paged == 0 {
                    st.spill_base = st.next_offset.wrapping_sub(position_offset(pos));
                }
                st.paged += 1;
                st.paged_bytes += message.body().len() as u64;
                false
            } else if durable_log {
                let log = st.log.as_mut().ok_or(StoreError::Misuse("no queue log"))?;
                let pos = log.append(record(&message, handling.persistent, expires_at_ms))?;
                if self.memory_full(st, Window::Durable) {
                    st.paged += 1;
                    st.paged_bytes += message.body().len() as u64;
                } else {
                    st.last_loaded = Some(pos);
                    st.enqueue(QueuedMessage {
                        offset: position_offset(pos),
                        position: Some(pos),
                        redelivered: false,
                        expires_at_ms,
                        delivery_count: 0,
                        priority: handling.priority,
                        partition: 0,
                        awaiting_ack: false,
                        message,
                    });
                }
                handling.persistent
            } else {
                let offset = st.next_offset;
                st.next_offset += 1;
                st.enqueue(QueuedMessage {
                    offset,
                    position: None,
                    redelivered: false,
                    expires_at_ms,
                    delivery_count: 0,
                    priority: handling.priority,
                    partition: 0,
                    awaiting_ack: false,
                    message,
                });
                false
            };
        // At the publish's own time: a TTL of 0 reaches a consumer waiting for it even
        // when the clock ticks in between.
        self.dispatch_at(st, letters, Some(now));
        if st.args.max_length.is_some() || st.args.max_length_bytes.is_some() {
            st.drop_head(&self.name, letters);
        }
        if st.expiring {
            st.expire(&self.name, now + 1, letters);
        }
        if st.expiring || st.discard_due {
            self.arm_timer(st);
        }
        Ok(if logged {
            Enqueued::Logged(st.partition.as_ref().map_or(0, |t| t.index))
        } else {
            Enqueued::Memory
        })
    }

    /// Whether the queue's next message stays only in its log: once its own memory
    /// window is full, or the tight one while the broker's queued messages take more
    /// memory than the spill budget.
    fn memory_full(&self, st: &QueueState, own: Window) -> bool {
        st.memory_full(Window::Tight)
            && (st.paged > 0
                || st.memory_full(own)
                || self.env.memory_tight.load(Ordering::Relaxed))
    }

    /// Makes sure a transient queue has its spill log; false if it cannot have one (no
    /// data directory, or creating it failed), and then its backlog stays in memory.
    fn spill_log(&self, st: &mut QueueState) -> bool {
        if st.log.is_some() {
            return true;
        }
        if st.spill_unavailable {
            return false;
        }
        match self
            .env
            .store
            .upgrade()
            .map(|store| store.create_spill_log())
        {
            Some(Ok(log)) => {
                tracing::debug!(queue = %self.name, "the backlog outgrew memory: spilling to disk");
                st.log = Some(Box::new(log));
                st.spill = true;
                true
            }
            Some(Err(error)) => {
                tracing::error!(queue = %self.name, %error, "cannot spill the backlog to disk; it stays in memory");
                st.spill_unavailable = true;
                false
            }
            None => {
                st.spill_unavailable = true;
                false
            }
        }
    }

    /// Takes the oldest ready message for `basic.get`, with the count left behind. With
    /// `no_ack` the message leaves the queue for good at once. A partitioned queue gives
    /// one from a partition no consumer owns, in turn.
    pub fn get(
        self: &Arc<Self>,
        no_ack: bool,
        effects: &mut Effects,
    ) -> Option<(QueuedMessage, u32)> {
        if self.is_stream() {
            // Refused before it gets here (540), as RabbitMQ refuses it.
            return None;
        }
        let (start, n) = match self.partitioned() {
            Some(parts) => (parts.get_start(), usize::from(parts.count())),
            None => (0, 1),
        };
        let now = now_ms();
        self.last_used_ms.store(now, Ordering::Relaxed);
        for p in (0..n).map(|i| (start + i) % n) {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            let owned = st
                .partition
                .as_ref()
                .is_some_and(|t| t.draining.is_some() || !st.consumers.is_empty());
            if owned {
                continue;
            }
            st.last_used_ms = now;
            st.expire(&self.name, now + 1, &mut letters);
            let taken = st.next_ready(&self.name).map(|mut message| {
                if no_ack {
                    st.forget(&message);
                } else {
                    st.mark_delivered(&message);
                }
                message.awaiting_ack = !no_ack;
                st.unacked += u32::from(!no_ack);
                if let Some(tally) = st.partition.as_mut() {
                    tally.unacked += u32::from(!no_ack);
                    message.partition = tally.index;
                }
                message
            });
            self.arm_timer(&mut st);
            self.hand_over(&mut st, letters, effects);
            drop(st);
            if let Some(message) = taken {
                QueueCounters::count(&self.counters.get, 1);
                return Some((message, self.message_count()));
            }
        }
        None
    }

    /// Puts delivered messages back at their original positions, flagged redelivered.
    /// Past a delivery limit, a message is dead-lettered (or dropped) instead.
    pub fn requeue(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = QueuedMessage>,
        effects: &mut Effects,
    ) {
        self.put_back(messages, true, effects);
    }

    /// Puts back messages handed to a consumer's connection that it never wrote (the
    /// consumer or its channel went first): at their positions, as they were, since
    /// no client saw them. So a consumer that leaves gracefully causes no redelivery.
    pub fn give_back(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = QueuedMessage>,
        effects: &mut Effects,
    ) {
        self.put_back(messages, false, effects);
    }

    /// [`requeue`](Self::requeue) (`delivered`) or [`give_back`](Self::give_back).
    fn put_back(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = QueuedMessage>,
        delivered: bool,
        effects: &mut Effects,
    ) {
        if self.is_stream() {
            // Nothing leaves a stream, so nothing goes back: settling is credit.
            return;
        }
        for (p, messages) in self.by_partition(messages) {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            if st.deleted {
                return;
            }
            st.settle_acks(&messages);
            partitioned::settled(&mut st, messages.len());
            if delivered {
                QueueCounters::count(&self.counters.redeliver, messages.len());
            }
            let quorum = st.args.queue_type == QueueType::Quorum;
            for mut message in messages {
                message.awaiting_ack = false;
                if !delivered {
                    st.expiring |= message.expires_at_ms != 0;
                    st.ready.reinsert(message);
                    continue;
                }
                // A message returned from a `no_ack` delivery that was never written
                // has no delivered marker yet; once flagged it would never get one. (A
                // quorum queue marks every return below.)
                if !quorum {
                    st.mark_delivered(&message);
                }
                message.redelivered = true;
                if quorum {
                    message.delivery_count += 1;
                    // One more delivered marker: the count survives a restart.
                    if let (Some(log), Some(pos)) = (st.log.as_mut(), message.position) {
                        let _ = log.mark_delivered(pos);
                    }
                    if st
                        .args
                        .delivery_limit
                        .is_some_and(|limit| u64::from(message.delivery_count) > limit)
                    {
                        st.discard(message, DeathReason::DeliveryLimit, &mut letters);
                        continue;
                    }
                    message.message = message.message.with_delivery_count(message.delivery_count);
                }
                st.expiring |= message.expires_at_ms != 0;
                st.ready.reinsert(message);
            }
            st.expire(&self.name, now_ms() + 1, &mut letters);
            st.drop_head(&self.name, &mut letters);
            self.dispatch(&mut st, &mut letters);
            self.arm_timer(&mut st);
            self.hand_over(&mut st, letters, effects);
        }
    }

    /// Groups settled messages by the partition they came from (all in one for a plain
    /// queue, without allocating), keeping their order within each.
    fn by_partition(
        &self,
        messages: impl IntoIterator<Item = QueuedMessage>,
    ) -> impl Iterator<Item = (usize, Vec<QueuedMessage>)> {
        let messages: Vec<QueuedMessage> = messages.into_iter().collect();
        if self.partitioned().is_none() || messages.is_empty() {
            return Some((0, messages)).into_iter().chain(Vec::new());
        }
        let mut groups: Vec<(usize, Vec<QueuedMessage>)> = Vec::new();
        for message in messages {
            let p = usize::from(message.partition);
            match groups.iter_mut().find(|(q, _)| *q == p) {
                Some((_, batch)) => batch.push(message),
                None => groups.push((p, vec![message])),
            }
        }
        None.into_iter().chain(groups)
    }

    /// Records that delivered messages were acked: they leave the log. A partition
    /// whose last unacked delivery this was may pass to its next owner: it is left for
    /// the next kick to dispatch.
    pub fn settle(&self, messages: impl IntoIterator<Item = QueuedMessage>) {
        if self.is_stream() {
            return;
        }
        for (p, messages) in self.by_partition(messages) {
            let mut st = self.lock(p);
            QueueCounters::count(&self.counters.ack, st.settle_acks(&messages));
            if partitioned::settled(&mut st, messages.len())
                && let Some(parts) = self.partitioned()
            {
                parts.parts[p].waiting.store(true, Ordering::Release);
            }
            if st.log.is_none() {
                continue;
            }
            for message in messages {
                st.forget(&message);
            }
        }
    }

    /// Records that messages moved elsewhere from partition `p` (0 for a plain queue)
    /// are durable there: their records leave its log.
    pub fn settle_moved(&self, p: u16, positions: &[SegmentPosition]) {
        if usize::from(p) >= self.state_count() {
            return;
        }
        let mut st = self.lock(usize::from(p));
        if let Some(log) = st.log.as_mut() {
            for &pos in positions {
                let _ = log.ack(pos);
            }
        }
    }

    /// Takes rejected deliveries (`requeue=false`): they leave the queue, to its
    /// dead-letter exchange if it has one.
    pub fn reject(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = QueuedMessage>,
        effects: &mut Effects,
    ) {
        if self.is_stream() {
            // RabbitMQ settles a stream's rejects as acks.
            return;
        }
        for (p, messages) in self.by_partition(messages) {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            st.settle_acks(&messages);
            if partitioned::settled(&mut st, messages.len()) {
                self.dispatch(&mut st, &mut letters);
            }
            for message in messages {
                st.discard(message, DeathReason::Rejected, &mut letters);
            }
            self.hand_over(&mut st, letters, effects);
        }
    }

    /// Dispatches again after consumers regained credit: a partitioned queue, the
    /// partitions that wait for it.
    pub fn kick(self: &Arc<Self>, effects: &mut Effects) {
        if self.is_stream() {
            self.dispatch_stream();
            return;
        }
        if self.partitioned().is_some() {
            // Pairs with the fence in `dispatch_at`: credit released before this kick is
            // seen by a dispatch that raises the flag after this look.
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        for p in 0..self.state_count() {
            if let Some(parts) = self.partitioned() {
                // Looked at before it is taken: a flag that is down is not written, so
                // that kicks from many cores do not fight over the partitions' lines.
                let waiting = &parts.parts[p].waiting;
                if !waiting.load(Ordering::SeqCst) || !waiting.swap(false, Ordering::SeqCst) {
                    continue;
                }
            }
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            self.dispatch(&mut st, &mut letters);
            self.hand_over(&mut st, letters, effects);
        }
    }

    /// Registers a consumer and starts delivering to it.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED if an exclusive consumer holds the queue, or if an exclusive
    /// consumer is asked for while others exist.
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: ConsumerHandle,
        effects: &mut Effects,
    ) -> AmqpResult<()> {
        self.add_member(consumer, &Membership::default(), effects)
    }

    /// Registers a consumer, with how it takes part in a partitioned queue's group, and
    /// starts delivering to it.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED if an exclusive consumer holds the queue, or if an exclusive
    /// consumer is asked for while others exist; 406 PRECONDITION_FAILED for a group
    /// other than the queue's.
    pub fn add_member(
        self: &Arc<Self>,
        consumer: ConsumerHandle,
        membership: &Membership,
        effects: &mut Effects,
    ) -> AmqpResult<()> {
        if self.is_stream() {
            let reader = Reader {
                consumer,
                start: StreamStart::Next,
                filter: StreamFilter::default(),
            };
            return self.add_stream_consumer(reader, None, membership);
        }
        if let Some(parts) = self.partitioned() {
            if self.lock(0).deleted {
                return Err(crate::error::no_queue(&self.name, &self.vhost_name));
            }
            self.join(parts, consumer, membership)?;
            self.kick(effects);
            return Ok(());
        }
        let mut letters = Vec::new();
        let mut st = self.lock(0);
        if st.deleted {
            // Deleted since the consumer looked it up: it must not wait on it forever.
            return Err(crate::error::no_queue(&self.name, &self.vhost_name));
        }
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && (!st.consumers.is_empty() || st.args.single_active_consumer))
        {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                ),
            ));
        }
        let at = st
            .consumers
            .partition_point(|c| c.priority >= consumer.priority);
        st.uniform_priority &= st
            .consumers
            .first()
            .is_none_or(|c| c.priority == consumer.priority);
        st.consumers.insert(at, consumer);
        st.had_consumer = true;
        self.dispatch(&mut st, &mut letters);
        self.hand_over(&mut st, letters, effects);
        Ok(())
    }

    /// Unregisters a consumer; messages already handed to it stay with its channel. The
    /// caller kicks the queue once those are settled or returned, so that (with a single
    /// active consumer, or a partition that moved) the next consumer takes over in order.
    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoval {
        self.drop_consumer(id, false)
    }

    /// Like [`remove_consumer`](Self::remove_consumer), for a consumer whose channel
    /// closed (not a `basic.cancel`): a static group member is held for its session
    /// timeout rather than removed.
    pub fn close_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoval {
        self.drop_consumer(id, true)
    }

    fn drop_consumer(self: &Arc<Self>, id: ConsumerId, closed: bool) -> ConsumerRemoval {
        if let Some(streams) = self.streams() {
            // A cancelled consumer's unsettled deliveries still count for its offsets.
            return match streams.leave(&self.name, id, !closed) {
                None => ConsumerRemoval::Unknown,
                Some(ask) => {
                    if ask {
                        self.ask_sync();
                    }
                    ConsumerRemoval::Removed
                }
            };
        }
        if let Some(parts) = self.partitioned() {
            return self.leave(parts, id, closed);
        }
        let mut st = self.lock(0);
        let Some(at) = st.consumers.iter().position(|c| c.id == id) else {
            return ConsumerRemoval::Unknown;
        };
        st.consumers.remove(at);
        if st.next_consumer as usize > at {
            st.next_consumer -= 1;
        }
        if st.consumers.is_empty() {
            st.uniform_priority = true;
            st.last_used_ms = now_ms();
            self.arm_timer(&mut st);
        }
        if self.settings.auto_delete && st.consumers.is_empty() && st.had_consumer {
            ConsumerRemoval::RemovedLast
        } else {
            ConsumerRemoval::Removed
        }
    }

    /// Acks every purged message still in the log, at once: at shutdown, so that a
    /// clean restart does not bring back what a purge removed.
    pub fn finish_purge(&self) {
        for p in 0..self.state_count() {
            let mut st = self.lock(p);
            while st.purged > 0 {
                let before = st.purged;
                st.read_page(&self.name);
                if st.purged == before {
                    break;
                }
            }
        }
    }

    /// Drops all ready messages (in memory and paged out); returns how many.
    pub fn purge(self: &Arc<Self>) -> u32 {
        if self.is_stream() {
            // Refused before it gets here (540), as RabbitMQ refuses it.
            return 0;
        }
        let mut count = 0;
        for p in 0..self.state_count() {
            let mut st = self.lock(p);
            count += st.ready_count();
            let taken = st.ready.take_all();
            let logged = taken.iter().filter(|m| m.position.is_some()).count() as u64;
            let unread = st.paged + st.purged;
            if let Some(log) = st.log.as_mut()
                && log.live_messages() == logged + unread
            {
                // Nothing in the log is unacked or moving: all of it goes, a file per
                // segment rather than a record per message.
                if let Err(error) = log.purge() {
                    tracing::warn!(queue = %self.name, %error, "cannot remove a purged segment yet; the next sync retries");
                }
                st.paged = 0;
                st.paged_bytes = 0;
                st.purged = 0;
                continue;
            }
            for message in taken {
                st.forget(&message);
            }
            // Those only in the log leave it a slice per wake-up, unread by anyone.
            st.purged += st.paged;
            st.paged = 0;
            st.paged_bytes = 0;
            if st.purged > 0 {
                st.discard_due = true;
                self.arm_timer(&mut st);
            }
        }
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, at once: from now on it takes no consumer and no
    /// message ([`delete`](Self::delete) then drops what it holds).
    pub fn mark_deleted(&self) {
        for p in 0..self.state_count() {
            self.lock(p).deleted = true;
        }
    }

    /// Marks the queue deleted, drops its messages (and spill logs), and tells its
    /// consumers' connections. Returns the number of ready messages it held, and its
    /// durable logs (a partitioned queue's, one per partition that made one): the
    /// caller removes those once the deletion is durable, so that a crash before then
    /// does not bring the queue back without its messages.
    pub fn delete(&self) -> (u32, Vec<QueueLog>) {
        let mut count = 0;
        let mut durable = Vec::new();
        let mut consumers = match (&self.body, self.partitioned()) {
            (Body::Stream { streams, .. }, _) => streams.take_consumers(),
            (_, Some(parts)) => parts.take_consumers(),
            (_, None) => Vec::new(),
        };
        for p in 0..self.state_count() {
            let (log, spill) = {
                let mut st = self.lock(p);
                st.deleted = true;
                count += st.ready_count();
                st.ready.take_all();
                st.paged = 0;
                st.paged_bytes = 0;
                let log = st.log.take().map(|log| *log);
                if self.partitioned().is_none() {
                    consumers.append(&mut st.consumers);
                } else {
                    st.consumers.clear();
                }
                if st.spill { (None, log) } else { (log, None) }
            };
            if let Some(spill) = spill
                && let Err(error) = spill.delete()
            {
                tracing::error!(queue = %self.name, %error, "cannot remove the queue's spill log");
            }
            durable.extend(log);
        }
        for consumer in consumers {
            consumer.mailbox.push(Outgoing::Cancelled {
                channel: consumer.channel,
                consumer: consumer.id,
            });
        }
        (u32::try_from(count).unwrap_or(u32::MAX), durable)
    }

    /// Like [`delete`](Self::delete), for a durable queue whose deletion could not be
    /// stored: its logs are made durable first and returned to be kept, since the stored
    /// queue would come back with them at a restart. Should a sync fail, nothing
    /// appended to the queue is reported durable from then on.
    pub fn abandon(&self) -> Vec<QueueLog> {
        for part in self.stream_parts() {
            part.sync_abandoned();
        }
        for p in 0..self.state_count() {
            let mut st = self.lock(p);
            st.deleted = true;
            if !st.spill
                && let Some(log) = st.log.as_mut()
                && let Err(error) = log.sync()
            {
                tracing::error!(queue = %self.name, %error, "cannot sync the log of a queue whose deletion is not stored");
                st.lost_appends = true;
            }
        }
        self.delete().1
    }

    /// Hands ready messages to consumers with credit, one at a time; expired messages met
    /// at the head on the way are dead-lettered instead.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState, letters: &mut Vec<DeadLetter>) {
        self.dispatch_at(st, letters, None);
    }

    /// [`Queue::dispatch`], expiring what expired by `at_ms` (by now if `None`).
    fn dispatch_at(
        self: &Arc<Self>,
        st: &mut QueueState,
        letters: &mut Vec<DeadLetter>,
        at_ms: Option<u64>,
    ) {
        let mut handed = self.dispatch_ready(st, letters, at_ms);
        let index = st.partition.as_ref().map(|t| usize::from(t.index));
        if let (Some(parts), Some(index)) = (self.partitioned(), index) {
            while !st.ready.is_empty() && !st.consumers.is_empty() {
                // Its owners lack credit or room: their next kick dispatches it. A kick
                // since their credit was last looked at may have found the flag still
                // down, so look again once it is up.
                parts.parts[index].waiting.store(true, Ordering::SeqCst);
                std::sync::atomic::fence(Ordering::SeqCst);
                let more = self.dispatch_ready(st, letters, at_ms);
                if more == 0 {
                    break;
                }
                handed += more;
            }
        }
        self.flow.set(st, handed);
    }

    /// [`Queue::dispatch`]'s work; returns how many deliveries it handed out.
    fn dispatch_ready(
        self: &Arc<Self>,
        st: &mut QueueState,
        letters: &mut Vec<DeadLetter>,
        at_ms: Option<u64>,
    ) -> u64 {
        let mut handed = 0;
        if st.consumers.is_empty() {
            return handed;
        }
        let now = if st.expiring {
            at_ms.unwrap_or_else(now_ms)
        } else {
            0
        };
        st.stalled.clear();
        loop {
            if st.expiring {
                st.expire(&self.name, now, letters);
                if st.discard_due {
                    // The rest of the expired backlog goes on the next wake-up.
                    break;
                }
            }
            if st.ready.is_empty() {
                st.refill(&self.name);
                if st.ready.is_empty() {
                    break;
                }
            }
            let Some(at) = st.pick_consumer() else {
                // Consumers whose connections were full are kicked once those have
                // written; one that found room meanwhile is served now.
                let room = st.stalled.iter().fold(false, |room, &at| {
                    let consumer = &st.consumers[at];
                    consumer.mailbox.stall(self, &consumer.credit) || room
                });
                st.stalled.clear();
                if room {
                    continue;
                }
                break;
            };
            let Some(mut message) = st.next_ready(&self.name) else {
                st.consumers[at].credit.release(1);
                break;
            };
            // A no_ack delivery leaves the log once its channel has written it
            // (`settle`): until then it may still come back here. A quorum queue marks
            // it all the same, since its delivery count after a restart is the markers
            // less the first delivery's.
            if !st.consumers[at].no_ack || st.args.queue_type == QueueType::Quorum {
                st.mark_delivered(&message);
            }
            message.awaiting_ack = !st.consumers[at].no_ack;
            st.unacked += u32::from(message.awaiting_ack);
            if let Some(tally) = st.partition.as_mut() {
                // Counted until settled (a no_ack one: until written).
                tally.unacked += 1;
                message.partition = tally.index;
            }
            let consumer = &st.consumers[at];
            consumer.credit.handed();
            consumer.mailbox.push(Outgoing::Deliver {
                channel: consumer.channel,
                consumer: consumer.id,
                queue: Arc::clone(self),
                credit: consumer.credit.clone(),
                message,
            });
            handed += 1;
        }
        handed
    }

    /// What publishers' flow control reads of the queue without taking its lock.
    pub fn flow(&self) -> &FlowGauge {
        &self.flow
    }

    /// Messages enqueued, acked, put back and got (deliveries to consumers are the flow
    /// gauge's `handed`).
    pub fn counters(&self) -> &crate::stats::QueueCounters {
        &self.counters
    }

    /// Asks the timers to wake the queue at its next deadline, unless an earlier
    /// wake-up is already due.
    fn arm_timer(self: &Arc<Self>, st: &mut QueueState) {
        let Some(at) = st.next_deadline() else {
            return;
        };
        if st.timer_at_ms != 0 && st.timer_at_ms <= at {
            return;
        }
        st.timer_at_ms = at;
        let clock: Weak<dyn Wake> = Arc::downgrade(&self.env.clock);
        self.env.timers.wake_at(at, clock);
    }

    /// Turns the messages that left the queue into a move for the caller to carry out
    /// once the lock is released (their route may lead back here).
    fn hand_over(
        self: &Arc<Self>,
        st: &mut QueueState,
        letters: Vec<DeadLetter>,
        effects: &mut Effects,
    ) {
        if letters.is_empty() {
            return;
        }
        let route = if let Some(exchange) = &self.settings.holds_for {
            MoveRoute::Delayed {
                exchange: exchange.clone(),
            }
        } else if let Some(exchange) = &st.args.dead_letter_exchange {
            MoveRoute::DeadLetter {
                exchange: exchange.clone(),
                routing_key: st.args.dead_letter_routing_key.clone(),
                at_least_once: st.args.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce,
            }
        } else {
            // Nowhere to go after all: they leave the log now.
            if let Some(log) = st.log.as_mut() {
                for pos in letters.iter().filter_map(|l| l.position) {
                    let _ = log.ack(pos);
                }
            }
            return;
        };
        effects.moves.push(Move {
            source: self.clone(),
            partition: st.partition.as_ref().map_or(0, |t| t.index),
            route,
            letters,
        });
    }

    /// Does what is due at `now_ms`: expires messages (the next slice of a large expiry
    /// or length-limit drop), hands what is left to consumers, and reports the queue
    /// itself as expired when its `x-expires` ran out unused. Called by the owner's
    /// clock.
    pub fn wake(self: &Arc<Self>, now_ms: u64, effects: &mut Effects) {
        if self.is_stream() {
            let mut ask = false;
            for part in self.stream_parts() {
                ask |= part.on_timer();
            }
            if ask {
                self.ask_sync();
            }
            self.arm_stream_timer();
            return;
        }
        let mut unused = true;
        for p in 0..self.state_count() {
            let mut letters = Vec::new();
            let mut st = self.lock(p);
            st.timer_at_ms = 0;
            st.discard_due = false;
            st.work_off_purge(&self.name);
            if !st.retained.is_empty() && st.retry_at_ms <= now_ms {
                letters = std::mem::take(&mut st.retained);
            }
            st.expire(&self.name, now_ms + 1, &mut letters);
            st.drop_head(&self.name, &mut letters);
            self.dispatch(&mut st, &mut letters);
            unused &= !st.deleted
                && st.consumers.is_empty()
                && st
                    .args
                    .expires
                    .is_some_and(|ttl| st.last_used_ms.saturating_add(ttl) <= now_ms);
            if !unused || self.partitioned().is_some() {
                self.arm_timer(&mut st);
            }
            self.hand_over(&mut st, letters, effects);
        }
        if let Some(parts) = self.partitioned() {
            self.expire_sessions(parts, now_ms);
            // Partitions an expired member held may have passed to members with credit.
            self.kick(effects);
            let ttl = self.expires_ms.load(Ordering::Relaxed);
            let last_used = self.last_used_ms.load(Ordering::Relaxed);
            let idle = !self.lock(0).deleted && parts.consumer_count() == 0;
            unused = idle && ttl > 0 && last_used.saturating_add(ttl) <= now_ms;
            if idle && !unused {
                // Used since the deadline was set (a get, a declare): the next one.
                self.arm_expiry(last_used);
            }
        }
        if unused {
            effects.expired.push(self.clone());
        }
    }

    /// Keeps dead letters that no queue took (`at-least-once`) to try them again later;
    /// their records stay in the log of partition `p` (0 for a plain queue) until they
    /// are taken.
    pub fn retain_dead_letters(self: &Arc<Self>, p: u16, letters: Vec<DeadLetter>) {
        if usize::from(p) >= self.state_count() {
            return;
        }
        let mut st = self.lock(usize::from(p));
        if st.deleted {
            return;
        }
        st.retained.extend(letters);
        st.retry_at_ms = now_ms() + DEAD_LETTER_RETRY_MS;
        self.arm_timer(&mut st);
    }
}

/// The arguments a partition runs with: the queue's, less what applies to the whole
/// queue (`x-expires`, kept by the queue itself).
fn partition_arguments(args: &QueueArguments) -> QueueArguments {
    QueueArguments {
        expires: None,
        ..args.clone()
    }
}

/// Writes out a log's buffered appends for a group commit (see [`SyncTarget`]).
fn begin_sync(st: &mut QueueState, name: &str) -> Option<crate::store::Result<PendingSync>> {
    if st.spill {
        return None;
    }
    let Some(log) = st.log.as_mut() else {
        return st.lost_appends.then(|| {
            Err(crate::store::StoreError::Poisoned(format!(
                "queue '{name}' was deleted with appends not synced"
            )))
        });
    };
    Some(log.begin_sync().inspect_err(|error| {
        tracing::error!(queue = %name, %error, "cannot write the queue's log");
    }))
}

/// Records a group commit's sync of a log (see [`SyncTarget`]).
fn complete_sync(
    st: &mut QueueState,
    name: &str,
    pending: PendingSync,
    result: &crate::store::Result<()>,
) -> bool {
    let Some(log) = st.log.as_mut() else {
        // Deleted since its appends were written: they count as durable if the sync
        // went through (a log kept because the deletion is not stored comes back).
        return result.is_ok() && !st.lost_appends;
    };
    match log.complete_sync(pending, result) {
        Ok(_) => true,
        Err(error) => {
            tracing::error!(queue = %name, %error, "cannot sync the queue's log");
            false
        }
    }
}

impl SyncTarget for Queue {
    fn begin_sync(&self) -> Option<crate::store::Result<PendingSync>> {
        match &self.body {
            Body::Plain(state) => begin_sync(&mut state.lock(), &self.name),
            // Partitions and a stream's logs are synced as targets of their own.
            Body::Partitioned(_) | Body::Stream { .. } => None,
        }
    }

    fn complete_sync(&self, pending: PendingSync, result: &crate::store::Result<()>) -> bool {
        match &self.body {
            Body::Plain(state) => complete_sync(&mut state.lock(), &self.name, pending, result),
            Body::Partitioned(_) | Body::Stream { .. } => result.is_ok(),
        }
    }
}

/// How long a stream keeps its messages: by `x-max-length-bytes` in force (a policy's
/// `max-length-bytes` included) and its declared `x-max-age`.
fn retention(args: &QueueArguments, declared: &FieldTable) -> Retention {
    Retention {
        max_bytes: args.max_length_bytes,
        max_age_ms: arguments::StreamArguments::of(declared).max_age_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn plain_queue() -> Arc<Queue> {
        Arc::new(Queue::new(
            "q".into(),
            "/",
            QueueSettings::default(),
            None,
            &Recovery::default(),
            QueueEnv::for_tests(),
        ))
    }

    fn message(n: usize) -> Message {
        Message::new("", "q", b"", Bytes::from(n.to_string()))
    }

    fn consumer(id: ConsumerId, credit: &Arc<Credit>, mailbox: &Arc<Mailbox>) -> ConsumerHandle {
        ConsumerHandle {
            id,
            channel: 1,
            exclusive: false,
            credit: credit.clone(),
            mailbox: mailbox.clone(),
            no_ack: false,
            priority: 0,
        }
    }

    fn handed(mailbox: &Mailbox) -> usize {
        let mut items = Vec::new();
        mailbox.drain_into(&mut items);
        items.len()
    }

    /// A consumer without a prefetch limit takes a backlog in steps as its connection
    /// writes, not the whole backlog in one lock hold.
    #[test]
    fn an_unlimited_consumer_is_handed_a_bounded_step_at_a_time() {
        let queue = plain_queue();
        let mut effects = Effects::default();
        let backlog = 3 * credit::UNWRITTEN_LIMIT as usize + 10;
        for n in 0..backlog {
            queue
                .publish(message(n), Handling::default(), &mut effects)
                .expect("publish");
        }
        let credit = Arc::new(Credit::new(0, None));
        let mailbox = Arc::new(Mailbox::default());
        queue
            .add_consumer(consumer(1, &credit, &mailbox), &mut effects)
            .expect("consume");
        assert_eq!(handed(&mailbox), credit::UNWRITTEN_LIMIT as usize);
        assert_eq!(
            queue.message_count() as usize,
            backlog - credit::UNWRITTEN_LIMIT as usize
        );
        // The connection writes them: the last write that makes room asks for more.
        let resumed = (0..credit::UNWRITTEN_LIMIT)
            .filter(|_| credit.written())
            .count();
        assert_eq!(resumed, 1);
        queue.kick(&mut effects);
        assert_eq!(handed(&mailbox), credit::UNWRITTEN_LIMIT as usize);
        assert!(effects.is_empty());
    }

    /// Publishers' flow control sees a backlog only while the queue has consumers to
    /// work it off, and counts the deliveries it hands them.
    #[test]
    fn the_flow_gauge_shows_a_backlog_only_to_consumers() {
        let queue = plain_queue();
        let mut effects = Effects::default();
        for n in 0..10 {
            queue
                .publish(message(n), Handling::default(), &mut effects)
                .expect("publish");
        }
        assert_eq!(queue.flow().ready(), 0, "no consumer: nothing to wait for");
        let credit = Arc::new(Credit::new(4, None));
        let mailbox = Arc::new(Mailbox::default());
        queue
            .add_consumer(consumer(1, &credit, &mailbox), &mut effects)
            .expect("consume");
        let flow = queue.flow();
        assert_eq!((flow.ready(), flow.ready_bytes(), flow.handed()), (6, 6, 4));
        assert_eq!(queue.remove_consumer(1), ConsumerRemoval::Removed);
        queue.kick(&mut effects);
        assert_eq!(queue.flow().ready(), 0, "the consumer left");
    }

    /// Consumers of many queues on one connection are handed at most the connection's
    /// room in all; once it has written half of that, the queues that found it full are
    /// kicked and hand it more, until every message has gone out.
    #[test]
    fn a_full_connection_holds_its_queues_back_until_it_has_written() {
        let room = 8;
        let _paging = Paging {
            connection_unwritten: room,
            ..Paging::DEFAULT
        }
        .set_for_tests();
        let mailbox = Arc::new(Mailbox::default());
        let mut effects = Effects::default();
        let (queues, per_queue) = (4u64, 10usize);
        for id in 0..queues {
            let queue = plain_queue();
            for n in 0..per_queue {
                queue
                    .publish(message(n), Handling::default(), &mut effects)
                    .expect("publish");
            }
            let credit = Arc::new(Credit::new(0, None));
            queue
                .add_consumer(consumer(id, &credit, &mailbox), &mut effects)
                .expect("consume");
        }
        let mut held = handed(&mailbox);
        assert_eq!(held, room as usize);
        let mut kicked = Vec::new();
        mailbox.written(room / 2 - 1, |q| kicked.push(q.clone()));
        assert!(kicked.is_empty(), "more than half the room is still taken");
        let mut delivered = room as usize / 2 - 1;
        held -= delivered;
        mailbox.written(1, |q| kicked.push(q.clone()));
        delivered += 1;
        held -= 1;
        assert_eq!(kicked.len(), queues as usize, "every queue found it full");
        while delivered < queues as usize * per_queue {
            assert!(
                !kicked.is_empty(),
                "{delivered} delivered, then nothing more"
            );
            for queue in std::mem::take(&mut kicked) {
                queue.kick(&mut effects);
            }
            held += handed(&mailbox);
            assert!(held <= room as usize, "{held} handed ahead of the writes");
            let n = u32::try_from(held).expect("small");
            delivered += held;
            held = 0;
            mailbox.written(n, |q| kicked.push(q.clone()));
        }
        assert_eq!(delivered, queues as usize * per_queue);
    }

    /// A policy that lowers a length limit far below the backlog drops it a slice per
    /// lock hold, the rest on wake-ups of their own.
    #[test]
    fn a_large_length_limit_drop_is_done_in_slices() {
        let queue = plain_queue();
        let mut effects = Effects::default();
        let slice = Paging::DEFAULT.discard_slice;
        let backlog = 2 * slice + 100;
        for n in 0..backlog {
            queue
                .publish(message(n), Handling::default(), &mut effects)
                .expect("publish");
        }
        let limited = QueueArguments {
            max_length: Some(0),
            ..QueueArguments::default()
        };
        queue.set_arguments(limited, &mut effects);
        assert_eq!(queue.message_count() as usize, backlog - slice);
        assert!(queue.lock(0).discard_due);
        queue.wake(now_ms(), &mut effects);
        assert_eq!(queue.message_count() as usize, 100);
        queue.wake(now_ms(), &mut effects);
        assert_eq!(queue.message_count(), 0);
        assert!(!queue.lock(0).discard_due);
    }

    fn durable_queue_on(log: QueueLog) -> Arc<Queue> {
        Arc::new(Queue::new(
            "q".into(),
            "/",
            QueueSettings {
                durable: true,
                ..QueueSettings::default()
            },
            Some(log),
            &Recovery::default(),
            QueueEnv::for_tests(),
        ))
    }

    const PERSISTENT: Handling = Handling {
        persistent: true,
        ttl_ms: None,
        priority: 0,
    };

    /// Publishes persistent messages `0..n`, more than fit in memory.
    fn publish_backlog(queue: &Arc<Queue>, n: usize) {
        let mut effects = Effects::default();
        for i in 0..n {
            queue
                .publish(message(i), PERSISTENT, &mut effects)
                .expect("publish");
        }
    }

    /// A purge while nothing is unacked drops the whole log at once, a file per segment:
    /// nothing is left to work off, and a message published right after is the next one.
    #[test]
    fn a_purge_with_nothing_unacked_drops_the_whole_log_at_once() {
        let dir = crate::store::test_support::TempDir::new("purge-whole");
        let log = QueueLog::create(dir.path(), 64 * 1024).expect("create a log");
        let queue = durable_queue_on(log);
        let backlog = 3 * Paging::DEFAULT.discard_slice;
        publish_backlog(&queue, backlog);
        assert_eq!(queue.purge() as usize, backlog);
        {
            let st = queue.lock(0);
            assert_eq!((st.purged, st.paged), (0, 0));
            assert_eq!(st.log.as_deref().map(QueueLog::live_messages), Some(0));
            assert_eq!(st.log.as_deref().map(QueueLog::segment_count), Some(0));
        }
        let mut effects = Effects::default();
        queue
            .publish(message(backlog), PERSISTENT, &mut effects)
            .expect("publish after the purge");
        let (got, left) = queue.get(true, &mut effects).expect("the later message");
        assert_eq!(got.message.body(), backlog.to_string().as_bytes());
        assert_eq!(left, 0);
    }

    /// A purge while a message is unacked answers at once; the purged records go a
    /// slice per wake-up, and messages published meanwhile are kept.
    #[test]
    fn a_purge_beside_an_unacked_message_leaves_the_log_in_slices() {
        let dir = crate::store::test_support::TempDir::new("purge-slices");
        let log = QueueLog::create(dir.path(), crate::store::format::DEFAULT_SEGMENT_SIZE)
            .expect("create a log");
        let queue = durable_queue_on(log);
        let backlog = 3 * Paging::DEFAULT.discard_slice;
        publish_backlog(&queue, backlog);
        let mut effects = Effects::default();
        let (held, _) = queue.get(false, &mut effects).expect("the first message");
        assert_eq!(queue.purge() as usize, backlog - 1);
        assert_eq!(queue.message_count(), 0);
        assert!(queue.lock(0).purged > 0, "the log was worked off at once");
        queue
            .publish(message(backlog), PERSISTENT, &mut effects)
            .expect("publish after the purge");
        assert_eq!(queue.message_count(), 1);
        while queue.lock(0).discard_due {
            queue.wake(now_ms(), &mut effects);
        }
        let (got, left) = queue.get(true, &mut effects).expect("the later message");
        assert_eq!(got.message.body(), backlog.to_string().as_bytes());
        assert_eq!(left, 0);
        queue.settle([held]);
        let st = queue.lock(0);
        assert_eq!(st.purged, 0);
        assert_eq!(st.log.as_deref().map(QueueLog::live_messages), Some(0));
    }

    /// A sliced purge whose log cannot be read for now leaves the rest to the queue's
    /// next read, instead of waking itself again and again on a log that keeps failing.
    #[test]
    fn a_purge_on_an_unreadable_log_does_not_spin() {
        use crate::store::sim::{Fault, Op, SimFs};
        let sim = SimFs::new();
        sim.mkdir_durable(std::path::Path::new("/q"));
        let log = QueueLog::create_in(
            sim.shared(),
            "/q/log",
            crate::store::format::DEFAULT_SEGMENT_SIZE,
        )
        .expect("create a log");
        let queue = durable_queue_on(log);
        let backlog = 3 * Paging::DEFAULT.discard_slice;
        publish_backlog(&queue, backlog);
        let mut effects = Effects::default();
        let (_held, _) = queue.get(false, &mut effects).expect("the first message");
        sim.inject(Fault {
            op: Op::Read,
            path: String::new(),
            skip: 0,
            times: usize::MAX,
            errno: rustix::io::Errno::IO.raw_os_error(),
            torn: false,
        });
        assert_eq!(queue.purge() as usize, backlog - 1);
        queue.wake(now_ms(), &mut effects);
        {
            let st = queue.lock(0);
            assert!(st.purged > 0, "nothing could be read");
            assert!(
                !st.discard_due,
                "a failing log must not wake its queue again"
            );
        }
        sim.clear_faults();
        queue
            .publish(message(backlog), PERSISTENT, &mut effects)
            .expect("publish after the purge");
        while queue.lock(0).purged > 0 {
            assert!(queue.get(true, &mut effects).is_none());
            while queue.lock(0).discard_due {
                queue.wake(now_ms(), &mut effects);
            }
        }
        let (got, _) = queue.get(true, &mut effects).expect("the later message");
        assert_eq!(got.message.body(), backlog.to_string().as_bytes());
    }

    /// A consumer that looked the queue up before it was deleted is refused, instead of
    /// waiting on a dead queue forever.
    #[test]
    fn a_deleted_queue_takes_no_consumer() {
        let queue = plain_queue();
        queue.mark_deleted();
        let credit = Arc::new(Credit::new(0, None));
        let mailbox = Arc::new(Mailbox::default());
        let mut effects = Effects::default();
        let refused = queue
            .add_consumer(consumer(1, &credit, &mailbox), &mut effects)
            .expect_err("a deleted queue");
        assert_eq!(refused.code, ReplyCode::NotFound);
    }
}
