//! Model-based tests of a [`Queue`] with its log.
//!
//! Random sequences of operations (publish, `basic.get`, consumers with prefetch fed
//! through their mailbox, ack, reject with and without requeue, closing the channel,
//! purge, the memory alarm, settling moved letters, group commits, clean restarts and
//! crashes) run against a real queue and against [`Model`], a plain description of what
//! the queue promises, and the two are compared after every step: message counts, which
//! message each delivery or get hands out and with which `redelivered` flag, the
//! consumers' credit, the dead-letter moves left as [`Effects`], and, after a restart,
//! which messages came back. Queues are durable (classic or quorum), spilling or
//! memory-only, with or without priorities, a dead-letter exchange, length limits and
//! a delivery limit.
//!
//! The queue runs with tiny paging sizes ([`Paging::set_for_tests`]) so that a few
//! messages already overflow its memory window: a durable queue pages to its log, a
//! transient one spills to a scratch log, and each re-reads in pages. The model knows
//! the window rules the queue documents (what stays in memory, when the next page is
//! read), because for a priority queue they decide the order: priorities apply among
//! the messages in memory, the backlog behind them is paged in log order.
//!
//! Every failure proptest shrank is kept at the foot of the file as a named regression
//! test. `PROPTEST_CASES` raises the number of cases (default [`DEFAULT_CASES`]).

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amqp_codec::amq_protocol::protocol::BasicProperties;
use amqp_codec::properties::encode_properties;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::arguments::{Overflow, QueueArguments, QueueType};
use super::dead_letter::DeathReason;
use super::paging::{Paging, TestPaging};
use super::{
    ConsumerHandle, ConsumerRemoval, Credit, Effects, Enqueued, Mailbox, Move, MoveRoute, Outgoing,
    Queue, QueueEnv, QueueSettings,
};
use crate::message::{Handling, Message, QueuedMessage};
use crate::store::format::{DEFAULT_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use crate::store::test_support::TempDir;
use crate::store::{BrokerStore, QueueLog, SyncTarget};

/// Cases per property unless `PROPTEST_CASES` says otherwise: enough to find the shallow
/// bugs on every run while the whole file stays well under 30 s in a debug build.
const DEFAULT_CASES: u32 = 64;
/// The dead-letter exchange and routing key of queues that have one.
const DLX: &str = "dlx";
const DLX_KEY: &str = "dead";
/// A per-message TTL far beyond any test run: messages carry an expiry, none expires.
const TTL: &str = "3600000";
/// Consumers on the channel at most.
const MAX_CONSUMERS: usize = 2;
/// Bodies start with the message's number in this many digits.
const ID_DIGITS: usize = 8;

/// How the queue under test keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Durable, with a log holding every message: pages to it, survives restarts.
    Durable,
    /// Transient, in a broker with a data directory: spills to a scratch log.
    Spill,
    /// Transient, with no data directory: everything stays in memory.
    Memory,
}

/// The queue a case runs against.
#[derive(Debug, Clone)]
struct Setup {
    kind: Kind,
    /// `x-max-priority`.
    max_priority: Option<u8>,
    /// Whether the queue has a dead-letter exchange.
    dead_letter: bool,
    /// `x-max-length`.
    max_length: Option<u64>,
    /// `x-max-length-bytes`.
    max_length_bytes: Option<u64>,
    /// `x-overflow`.
    overflow: Overflow,
    /// A quorum queue (durable only): it counts returns (`x-delivery-count`).
    quorum: bool,
    /// `x-delivery-limit` of a quorum queue.
    delivery_limit: Option<u64>,
    /// The sizes the queue pages with.
    paging: Paging,
    /// The log's segment size (small ones roll and delete segments often). A spilling
    /// queue with the default size makes its spill log through a [`BrokerStore`], as in
    /// the broker; with another it is handed a spill log with such segments.
    segment_size: u64,
}

impl Setup {
    fn arguments(&self) -> QueueArguments {
        QueueArguments {
            max_priority: self.max_priority,
            dead_letter_exchange: self.dead_letter.then(|| DLX.to_owned()),
            dead_letter_routing_key: self.dead_letter.then(|| DLX_KEY.to_owned()),
            max_length: self.max_length,
            max_length_bytes: self.max_length_bytes,
            overflow: self.overflow,
            queue_type: if self.quorum {
                QueueType::Quorum
            } else {
                QueueType::Classic
            },
            delivery_limit: self.delivery_limit,
            ..QueueArguments::default()
        }
    }

    fn settings(&self) -> QueueSettings {
        QueueSettings {
            durable: self.kind == Kind::Durable,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Default::default(),
            parsed: self.arguments(),
            holds_for: None,
        }
    }
}

/// One step of a client (one channel on one connection) or of the broker.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `basic.publish` to the queue; `size` bytes follow the message's number in its body.
    Publish {
        persistent: bool,
        ttl: bool,
        priority: u8,
        size: usize,
    },
    /// As many publishes of such messages: backlogs that fill larger windows.
    PublishBatch {
        count: usize,
        persistent: bool,
        ttl: bool,
        priority: u8,
        size: usize,
    },
    /// `basic.get`.
    Get { no_ack: bool },
    /// `basic.consume`, unless the channel already has [`MAX_CONSUMERS`].
    Consume { prefetch: u32, no_ack: bool },
    /// `basic.cancel` of the `at`-th consumer (modulo their number).
    Cancel { at: usize },
    /// The connection writes what the queue left in its mailbox.
    Deliver,
    /// `basic.ack` of the `at`-th unacked delivery (modulo their number).
    Ack { at: usize, multiple: bool },
    /// `basic.nack` of the `at`-th unacked delivery.
    Reject {
        at: usize,
        multiple: bool,
        requeue: bool,
    },
    /// The connection closes: the consumers go, everything unacked or still in the
    /// mailbox is requeued.
    CloseChannel,
    /// The oldest move to the dead-letter exchange is durable there
    /// ([`Queue::settle_moved`]).
    SettleMove,
    /// `queue.purge`.
    Purge,
    /// The broker's queued messages pass (or fall back below) the spill budget.
    MemoryTight(bool),
    /// The queue's timer fires ([`Queue::wake`]): due after a sliced drop.
    Wake,
    /// The broker stops (cleanly) and starts again; a no-op for transient queues.
    Restart,
    /// The group commit makes what the log holds durable (a no-op without a durable log).
    Sync,
    /// The broker is killed (`kill -9`) and starts again from what its log's files held
    /// at that moment; a no-op for transient queues.
    Crash,
}

/// What the model knows of one published message.
#[derive(Debug, Clone)]
struct Msg {
    persistent: bool,
    ttl: bool,
    priority: u8,
    /// Body length.
    size: usize,
    properties: Bytes,
    /// Its in-memory `redelivered` flag: set once it was returned.
    redelivered: bool,
    /// Kept by a restart unless acked: persistent, or in a quorum queue.
    kept: bool,
    /// Times a quorum queue had it returned (its `x-delivery-count`).
    returns: u32,
    /// Handed to a client that must ack it, or returned: after a restart it comes back
    /// flagged `redelivered`.
    delivered: bool,
    /// It has a record in a log (its deliveries carry a position).
    logged: bool,
    /// Its record is durable (synced, or recovered after a restart): a crash keeps it
    /// unless it was acked.
    synced: bool,
}

/// A delivery the queue left in the mailbox, not yet written by the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    id: u64,
    consumer: u64,
    no_ack: bool,
    redelivered: bool,
}

#[derive(Debug, Clone, Copy)]
struct ModelConsumer {
    id: u64,
    prefetch: u32,
    no_ack: bool,
    in_flight: u32,
    /// Deliveries handed to the connection and not yet written.
    unwritten: u32,
}

/// What the queue promises, kept plainly: every message's state, the ready ones split
/// into those in memory (ordered by priority level, then publish order) and those paged
/// out (publish order), with the documented window rules deciding the split.
#[derive(Debug)]
struct Model {
    kind: Kind,
    max_level: u8,
    dead_letter: bool,
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Overflow,
    quorum: bool,
    delivery_limit: Option<u64>,
    paging: Paging,
    msgs: Vec<Msg>,
    /// Ready messages in memory: (level, number), delivered first to last.
    mem: BTreeSet<(Reverse<u8>, u64)>,
    mem_bytes: usize,
    /// Ready messages only in the log, oldest first.
    paged: VecDeque<u64>,
    /// Purged messages still in the log, before the paged ones: they leave it as pages
    /// are read.
    purged: VecDeque<u64>,
    /// The queue checks expiries: it then reads the next page as soon as memory is empty.
    expiring: bool,
    /// The broker-wide memory alarm that shrinks every window.
    tight: bool,
    /// A length-limit drop stopped after a slice: the rest waits for a wake-up.
    discard_due: bool,
    /// In arrival order (all of one priority, so they take turns).
    consumers: Vec<ModelConsumer>,
    /// Where the next turn starts.
    next_consumer: usize,
    mailbox: Vec<Delivery>,
    /// Deliveries handed to the connection and not yet written, over all consumers.
    conn_unwritten: u32,
    /// A consumer with room of its own was passed over because the connection was full:
    /// the queue is kicked once the connection has written half its room.
    stalled: bool,
    /// Unacked deliveries in delivery-tag order, with the consumer whose credit they hold.
    unacked: Vec<(u64, Option<u64>)>,
    /// Letters moving to the dead-letter exchange, their source records not yet acked.
    moving: VecDeque<Vec<u64>>,
    /// The moves the current step left: their letters, with why each left.
    new_moves: Vec<Vec<(u64, DeathReason)>>,
    /// Messages whose log record is not acked.
    live: BTreeSet<u64>,
    /// What the last restart found in the log: messages, and those with a delivered
    /// marker.
    recovered: (u64, u64),
}

fn index(id: u64) -> usize {
    usize::try_from(id).expect("a message number fits in usize")
}

impl Model {
    fn new(setup: &Setup) -> Self {
        Self {
            kind: setup.kind,
            max_level: setup.max_priority.unwrap_or(0),
            dead_letter: setup.dead_letter,
            max_length: setup.max_length,
            max_length_bytes: setup.max_length_bytes,
            overflow: setup.overflow,
            quorum: setup.quorum,
            delivery_limit: setup.delivery_limit,
            paging: setup.paging,
            msgs: Vec::new(),
            mem: BTreeSet::new(),
            mem_bytes: 0,
            paged: VecDeque::new(),
            purged: VecDeque::new(),
            expiring: false,
            tight: false,
            discard_due: false,
            consumers: Vec::new(),
            next_consumer: 0,
            mailbox: Vec::new(),
            conn_unwritten: 0,
            stalled: false,
            unacked: Vec::new(),
            moving: VecDeque::new(),
            new_moves: Vec::new(),
            recovered: (0, 0),
            live: BTreeSet::new(),
        }
    }

    fn msg(&self, id: u64) -> &Msg {
        &self.msgs[index(id)]
    }

    fn msg_mut(&mut self, id: u64) -> &mut Msg {
        &mut self.msgs[index(id)]
    }

    /// Ready messages.
    fn count(&self) -> usize {
        self.mem.len() + self.paged.len()
    }

    /// Body bytes of the ready messages.
    fn bytes(&self) -> u64 {
        let paged: usize = self.paged.iter().map(|&id| self.msg(id).size).sum();
        (self.mem_bytes + paged) as u64
    }

    /// Whether the ready messages exceed a length limit.
    fn over_limit(&self) -> bool {
        self.max_length.is_some_and(|max| self.count() as u64 > max)
            || self.max_length_bytes.is_some_and(|max| self.bytes() > max)
    }

    /// Whether one more message of `size` bytes would exceed a length limit.
    fn full_for(&self, size: usize) -> bool {
        self.max_length
            .is_some_and(|max| self.count() as u64 >= max)
            || self
                .max_length_bytes
                .is_some_and(|max| self.bytes() + size as u64 > max)
    }

    /// A message leaves unconsumed: a letter to the dead-letter exchange if the queue
    /// has one (its record stays until the move is settled), else gone for good.
    fn discard(&mut self, id: u64, reason: DeathReason, letters: &mut Vec<(u64, DeathReason)>) {
        if self.dead_letter {
            letters.push((id, reason));
        } else {
            self.forget(id);
        }
    }

    /// The letters one queue operation left become one move.
    fn hand_over(&mut self, letters: Vec<(u64, DeathReason)>) {
        if !letters.is_empty() {
            self.moving
                .push_back(letters.iter().map(|&(id, _)| id).collect());
            self.new_moves.push(letters);
        }
    }

    /// Drops the oldest messages while a length limit is exceeded, a slice at a time:
    /// the rest waits for a wake-up.
    fn drop_head(&mut self, letters: &mut Vec<(u64, DeathReason)>) {
        let mut discarded = 0;
        while self.over_limit() {
            if discarded == self.paging.discard_slice {
                self.discard_due = true;
                return;
            }
            discarded += 1;
            let Some(id) = self.next_ready() else {
                break;
            };
            self.discard(id, DeathReason::MaxLen, letters);
        }
    }

    fn push_mem(&mut self, id: u64) {
        let level = self.msg(id).priority.min(self.max_level);
        self.mem_bytes += self.msg(id).size;
        assert!(
            self.mem.insert((Reverse(level), id)),
            "{id} twice in memory"
        );
    }

    fn pop_mem(&mut self) -> Option<u64> {
        let (_, id) = self.mem.pop_first()?;
        self.mem_bytes -= self.msg(id).size;
        Some(id)
    }

    /// The next page is read from the log: up to so many messages, or until their
    /// bodies reach so many bytes. Purged ones, first in the log, leave it; the others
    /// come into memory.
    fn read_page(&mut self) {
        let (mut messages, mut bytes) = (0, 0);
        loop {
            let id = if let Some(id) = self.purged.pop_front() {
                self.forget(id);
                id
            } else if let Some(id) = self.paged.pop_front() {
                self.expiring |= self.msg(id).ttl;
                self.push_mem(id);
                id
            } else {
                break;
            };
            messages += 1;
            bytes += self.msg(id).size;
            if messages >= self.paging.page_messages || bytes >= self.paging.page_bytes {
                break;
            }
        }
    }

    fn refill(&mut self) {
        if self.mem.len() < self.paging.refill_below {
            self.read_page();
        }
    }

    fn next_ready(&mut self) -> Option<u64> {
        self.refill();
        if self.mem.is_empty() && !self.purged.is_empty() && !self.paged.is_empty() {
            // Purged messages stand before the next ones in the log.
            self.work_off_purge();
            self.refill();
        }
        self.pop_mem()
    }

    /// Reads the next slice of purged messages out of the log; the rest waits for a
    /// wake-up.
    fn work_off_purge(&mut self) {
        let mut pages = self.paging.discard_slice / self.paging.page_messages;
        while !self.purged.is_empty() && pages > 0 {
            self.read_page();
            pages -= 1;
        }
        if !self.purged.is_empty() {
            self.discard_due = true;
        }
    }

    /// Checking expiries (none is due) reads the next page once memory is empty.
    fn expire(&mut self) {
        if !self.expiring {
            return;
        }
        if self.mem.is_empty() && !self.paged.is_empty() {
            self.read_page();
        }
        if self.mem.is_empty() && self.paged.is_empty() {
            self.expiring = false;
        }
    }

    fn window_full(&self, (messages, bytes): (usize, usize)) -> bool {
        !self.paged.is_empty()
            || !self.purged.is_empty()
            || self.mem.len() >= messages
            || self.mem_bytes >= bytes
    }

    /// Whether a new message stays out of memory: its queue's own window is full, or the
    /// tight one during the memory alarm.
    fn memory_full(&self, own: (usize, usize)) -> bool {
        self.window_full(self.paging.tight)
            && (!self.paged.is_empty() || self.window_full(own) || self.tight)
    }

    /// The consumer the next message goes to, taking one of its credits: consumers take
    /// turns, skipping those without credit or with too much handed and not written.
    fn pick_consumer(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        let full = self.conn_unwritten >= self.paging.connection_unwritten;
        for k in 0..n {
            let at = (self.next_consumer + k) % n;
            let c = &mut self.consumers[at];
            if c.unwritten < self.paging.unwritten && full {
                self.stalled = true;
                continue;
            }
            if c.unwritten < self.paging.unwritten && (c.prefetch == 0 || c.in_flight < c.prefetch)
            {
                c.in_flight += 1;
                self.next_consumer = at + 1;
                return Some(at);
            }
        }
        None
    }

    fn release(&mut self, consumer: Option<u64>) {
        if let Some(c) = self.consumers.iter_mut().find(|c| Some(c.id) == consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    fn remove_consumer(&mut self, at: usize) {
        self.consumers.remove(at);
        if self.next_consumer > at {
            self.next_consumer -= 1;
        }
    }

    fn forget(&mut self, id: u64) {
        self.live.remove(&id);
    }

    fn dispatch(&mut self) {
        while !self.consumers.is_empty() {
            if self.expiring {
                self.expire();
                if self.discard_due {
                    // The rest of a sliced drop comes first, on the next wake-up.
                    break;
                }
            }
            if self.mem.is_empty() {
                self.refill();
                if self.mem.is_empty() {
                    break;
                }
            }
            let Some(at) = self.pick_consumer() else {
                break;
            };
            let Some(id) = self.next_ready() else {
                break;
            };
            self.consumers[at].unwritten += 1;
            self.conn_unwritten += 1;
            let c = self.consumers[at];
            // A quorum queue marks `no_ack` deliveries too, to count returns from them
            // (so one still in the mailbox at a restart comes back flagged).
            if !c.no_ack || self.quorum {
                self.msg_mut(id).delivered = true;
            }
            self.mailbox.push(Delivery {
                id,
                consumer: c.id,
                no_ack: c.no_ack,
                redelivered: self.msg(id).redelivered,
            });
        }
    }

    fn publish(&mut self, mut msg: Msg) -> Enqueued {
        let id = self.msgs.len() as u64;
        // A quorum queue keeps every message, whatever its delivery mode, as RabbitMQ's.
        msg.kept = msg.persistent || self.quorum;
        if self.overflow != Overflow::DropHead && self.full_for(msg.size) {
            self.msgs.push(msg);
            if self.overflow == Overflow::RejectPublishDlx && self.dead_letter {
                self.hand_over(vec![(id, DeathReason::MaxLen)]);
            }
            return Enqueued::Rejected;
        }
        self.expiring |= msg.ttl;
        let paged = match self.kind {
            Kind::Durable => self.memory_full(self.paging.durable),
            Kind::Spill => self.memory_full(self.paging.transient),
            Kind::Memory => false,
        };
        msg.logged = self.kind == Kind::Durable || paged;
        let logged = msg.logged;
        self.msgs.push(msg);
        if logged {
            self.live.insert(id);
        }
        if paged {
            self.paged.push_back(id);
        } else {
            self.push_mem(id);
        }
        self.dispatch();
        let mut letters = Vec::new();
        self.drop_head(&mut letters);
        self.expire();
        self.hand_over(letters);
        if self.kind == Kind::Durable && self.msg(id).kept {
            Enqueued::Logged(0)
        } else {
            Enqueued::Memory
        }
    }

    /// `basic.get`: (message, its redelivered flag, ready messages left).
    fn get(&mut self, no_ack: bool) -> Option<(u64, bool, usize)> {
        self.expire();
        let id = self.next_ready()?;
        let redelivered = self.msg(id).redelivered;
        if no_ack {
            self.forget(id);
        } else {
            self.msg_mut(id).delivered = true;
            self.unacked.push((id, None));
        }
        Some((id, redelivered, self.count()))
    }

    fn requeue(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut letters = Vec::new();
        for &id in ids {
            // Flagged in memory, so after a restart too.
            self.msg_mut(id).redelivered = true;
            self.msg_mut(id).delivered = true;
            if self.quorum {
                self.msg_mut(id).returns += 1;
                let returns = u64::from(self.msg(id).returns);
                if self.delivery_limit.is_some_and(|limit| returns > limit) {
                    self.discard(id, DeathReason::DeliveryLimit, &mut letters);
                    continue;
                }
            }
            self.expiring |= self.msg(id).ttl;
            self.push_mem(id);
        }
        self.expire();
        self.drop_head(&mut letters);
        self.dispatch();
        self.hand_over(letters);
    }

    /// Rejected without requeue.
    fn reject(&mut self, ids: &[u64]) {
        let mut letters = Vec::new();
        for &id in ids {
            self.discard(id, DeathReason::Rejected, &mut letters);
        }
        self.hand_over(letters);
    }

    /// The queue's timer fires (only a sliced drop makes it due in these tests).
    fn wake(&mut self) {
        self.discard_due = false;
        self.work_off_purge();
        self.expire();
        let mut letters = Vec::new();
        self.drop_head(&mut letters);
        self.dispatch();
        self.hand_over(letters);
    }

    fn consume(&mut self, id: u64, prefetch: u32, no_ack: bool) {
        self.consumers.push(ModelConsumer {
            id,
            prefetch,
            no_ack,
            in_flight: 0,
            unwritten: 0,
        });
        self.dispatch();
    }

    /// The connection writes its mailbox: deliveries to consumers become unacked (or,
    /// without acks, leave for good); those to consumers that are gone come back.
    fn deliver(&mut self) {
        let mut returned = Vec::new();
        let mut kick = false;
        let delivered = self.mailbox.len();
        for d in std::mem::take(&mut self.mailbox) {
            let limit = self.paging.unwritten;
            let consumer = self.consumers.iter_mut().find(|c| c.id == d.consumer);
            let current = consumer.is_some();
            if let Some(c) = consumer {
                // Written: a consumer that had too much unwritten may take more.
                kick |= c.unwritten >= limit;
                c.unwritten = c.unwritten.saturating_sub(1);
            }
            if current && d.no_ack {
                self.release(Some(d.consumer));
                kick = true;
                self.forget(d.id);
            } else if current {
                self.unacked.push((d.id, Some(d.consumer)));
            } else {
                returned.push(d.id);
            }
        }
        kick |= self.written(delivered);
        self.requeue(&returned);
        if kick {
            self.dispatch();
        }
    }

    /// The connection wrote (or gave back) `n` deliveries; true when that lets a queue
    /// that found it full go on.
    fn written(&mut self, n: usize) -> bool {
        self.conn_unwritten -= u32::try_from(n).expect("few");
        let resume = self.stalled && self.conn_unwritten <= self.paging.connection_unwritten / 2;
        self.stalled &= !resume;
        resume
    }

    /// Takes the unacked deliveries an ack or nack names, giving their credit back;
    /// returns them and whether the queue is kicked afterwards.
    fn take_unacked(&mut self, at: usize, multiple: bool) -> (Vec<u64>, bool) {
        let taken: Vec<(u64, Option<u64>)> = if multiple {
            self.unacked.drain(..=at).collect()
        } else {
            vec![self.unacked.remove(at)]
        };
        let kick = taken.iter().any(|(_, c)| c.is_some());
        for &(_, c) in &taken {
            self.release(c);
        }
        (taken.into_iter().map(|(id, _)| id).collect(), kick)
    }

    fn close_channel(&mut self) {
        while !self.consumers.is_empty() {
            self.remove_consumer(0);
        }
        let unacked: Vec<u64> = self.unacked.drain(..).map(|(id, _)| id).collect();
        self.requeue(&unacked);
        let undelivered: Vec<u64> = self.mailbox.drain(..).map(|d| d.id).collect();
        self.written(undelivered.len());
        self.requeue(&undelivered);
    }

    fn settle_move(&mut self) {
        if let Some(ids) = self.moving.pop_front() {
            for id in ids {
                self.forget(id);
            }
        }
    }

    /// `queue.purge`: what is in memory goes at once; when the log holds nothing else
    /// (nothing unacked, nothing moving), all of it goes at once too; otherwise what is
    /// only in the log is read out of it a slice per wake-up (and comes back if a
    /// restart comes first).
    fn purge(&mut self) -> usize {
        let count = self.count();
        let ready: BTreeSet<u64> = self
            .mem
            .iter()
            .map(|&(_, id)| id)
            .chain(self.paged.iter().copied())
            .chain(self.purged.iter().copied())
            .collect();
        let whole_log = self.live.iter().all(|id| ready.contains(id));
        for (_, id) in std::mem::take(&mut self.mem) {
            self.forget(id);
        }
        self.mem_bytes = 0;
        if whole_log {
            self.live.clear();
            self.paged.clear();
            self.purged.clear();
            return count;
        }
        self.purged.extend(self.paged.drain(..));
        if !self.purged.is_empty() {
            self.discard_due = true;
        }
        count
    }

    /// A durable queue after a clean restart: its persistent messages whose records were
    /// not acked, in publish order, flagged `redelivered` if they had been delivered.
    fn restart(&mut self) {
        self.restart_clear();
        let survivors: Vec<u64> = self
            .live
            .iter()
            .copied()
            .filter(|&id| self.msg(id).kept)
            .collect();
        self.live = survivors.iter().copied().collect();
        for &id in &survivors {
            let m = self.msg_mut(id);
            m.redelivered = m.delivered;
            m.synced = true;
        }
        self.recover(survivors);
    }

    /// Starts from `survivors`, the messages a restart found in the log, in log order:
    /// all in the log at first, then paged in as recovery reads them (length limits
    /// applied, expiries checked, then the clocks started).
    fn recover(&mut self, survivors: Vec<u64>) {
        self.recovered = (
            survivors.len() as u64,
            survivors
                .iter()
                .filter(|&&id| self.msg(id).delivered)
                .count() as u64,
        );
        self.expiring = survivors.iter().any(|&id| self.msg(id).ttl);
        self.paged = survivors.into();
        let mut letters = Vec::new();
        self.drop_head(&mut letters);
        self.expire();
        self.hand_over(letters);
        if self.expiring {
            self.refill();
        }
    }

    /// The group commit: every record written so far is durable.
    fn sync(&mut self) {
        if self.kind != Kind::Durable {
            return;
        }
        for &id in &self.live {
            self.msgs[index(id)].synced = true;
        }
    }

    /// A durable queue after a crash came back with `back` (message, flagged
    /// redelivered), in log order. What a crash may lose or keep is not one outcome, so
    /// this checks the bounds instead: every persistent message that was durable and not
    /// acked is back; nothing else is, but persistent messages whose ack may have been
    /// lost; nothing is back twice or out of order; nothing never delivered is flagged.
    /// Then the model goes on from what came back.
    fn crash(&mut self, back: &[(u64, u32)]) -> Result<(), TestCaseError> {
        for pair in back.windows(2) {
            prop_assert!(
                pair[0].0 < pair[1].0,
                "recovered out of log order: {:?}",
                back
            );
        }
        for &(id, marks) in back {
            prop_assert!(
                id < self.msgs.len() as u64,
                "recovered {} never published",
                id
            );
            let m = self.msg(id);
            prop_assert!(m.kept, "transient message {} survived a crash", id);
            prop_assert!(
                marks == 0 || m.delivered,
                "{} flagged but never delivered",
                id
            );
            if self.quorum {
                prop_assert!(
                    marks.saturating_sub(1) <= m.returns,
                    "{} came back with more returns than it had",
                    id
                );
            }
        }
        for &id in &self.live {
            let m = self.msg(id);
            if m.kept && m.synced {
                prop_assert!(
                    back.iter().any(|&(b, _)| b == id),
                    "durable message {} lost in a crash: {:?} came back",
                    id,
                    back
                );
            }
        }
        self.restart_clear();
        let quorum = self.quorum;
        for &(id, marks) in back {
            let m = self.msg_mut(id);
            m.redelivered = marks > 0;
            m.delivered = marks > 0;
            if quorum {
                m.returns = marks.saturating_sub(1);
            }
            m.synced = true;
        }
        self.live = back.iter().map(|&(id, _)| id).collect();
        self.recover(back.iter().map(|&(id, _)| id).collect());
        Ok(())
    }

    /// What a stop forgets: the client, its deliveries, moves in flight, memory.
    fn restart_clear(&mut self) {
        self.purged.clear();
        self.consumers.clear();
        self.next_consumer = 0;
        self.discard_due = false;
        self.mailbox.clear();
        self.conn_unwritten = 0;
        self.stalled = false;
        self.unacked.clear();
        self.moving.clear();
        self.mem.clear();
        self.mem_bytes = 0;
        self.paged.clear();
    }
}

fn body(id: u64, size: usize) -> Bytes {
    let mut body = format!("{id:0ID_DIGITS$}").into_bytes();
    body.resize(ID_DIGITS + size, b'.');
    Bytes::from(body)
}

/// The number of a message, read from its body (`u64::MAX` if it is not one of ours).
fn id_in(body: &[u8]) -> u64 {
    body.get(..ID_DIGITS)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The number of the message a queue handed out.
fn id_of(message: &QueuedMessage) -> u64 {
    id_in(message.message.body())
}

fn properties(persistent: bool, ttl: bool, priority: u8) -> Bytes {
    let mut p = BasicProperties::default();
    if persistent {
        p = p.with_delivery_mode(2);
    }
    if ttl {
        p = p.with_expiration(TTL.into());
    }
    if priority > 0 {
        p = p.with_priority(priority);
    }
    encode_properties(&p)
}

/// Copies the files of directory `from` into a new directory `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// A queue under test, the client around it (one channel with a few consumers) and
/// the model it is checked against.
struct Harness {
    setup: Setup,
    log_dir: PathBuf,
    env: QueueEnv,
    /// `None` only while restarting.
    queue: Option<Arc<Queue>>,
    mailbox: Arc<Mailbox>,
    /// Deliveries taken from the mailbox, not yet written (the connection's pending list).
    pending: Vec<Outgoing>,
    /// The channel's consumers, in the order they came.
    consumers: Vec<ConsumerHandle>,
    /// Consumer ids handed out.
    consumer_ids: u64,
    crashes: u32,
    /// The channel's unacked deliveries in delivery-tag order, with the credit each holds.
    unacked: Vec<(QueuedMessage, Option<Arc<Credit>>)>,
    /// Moves to the dead-letter exchange not yet settled.
    moves: VecDeque<Move>,
    model: Model,
    // Dropped last, in this order: the paging sizes stay in force while the queue lives.
    _store: Option<Arc<BrokerStore>>,
    dir: TempDir,
    _paging: TestPaging,
}

impl Harness {
    fn new(setup: Setup) -> Result<Self, TestCaseError> {
        let paging = setup.paging.set_for_tests();
        let dir = TempDir::new("queue-model");
        let mut env = QueueEnv::for_tests();
        let store = match setup.kind {
            Kind::Spill if setup.segment_size == DEFAULT_SEGMENT_SIZE => {
                let (store, _, _) = BrokerStore::open(dir.path()).map_err(fail)?;
                let store = Arc::new(store);
                env.store = Arc::downgrade(&store);
                Some(store)
            }
            Kind::Spill | Kind::Durable | Kind::Memory => None,
        };
        let log_dir = dir.path().join("q");
        let log = match setup.kind {
            Kind::Durable => Some(QueueLog::create(&log_dir, setup.segment_size).map_err(fail)?),
            Kind::Spill | Kind::Memory => None,
        };
        let queue = Queue::new(
            "q".into(),
            "/",
            setup.settings(),
            log,
            &Default::default(),
            env.clone(),
        );
        if setup.kind == Kind::Spill && store.is_none() {
            // The spill log a broker makes has segments of the default size, which these
            // tests never fill: give the queue one with small segments (which roll, and
            // go once read and acked) before it needs one.
            let log = QueueLog::create_scratch(dir.path().join("spill"), setup.segment_size)
                .map_err(fail)?;
            let mut st = queue.lock(0);
            st.log = Some(Box::new(log));
            st.spill = true;
        }
        Ok(Self {
            model: Model::new(&setup),
            setup,
            log_dir,
            env,
            queue: Some(Arc::new(queue)),
            mailbox: Arc::default(),
            pending: Vec::new(),
            consumers: Vec::new(),
            consumer_ids: 0,
            crashes: 0,
            unacked: Vec::new(),
            moves: VecDeque::new(),
            _store: store,
            dir,
            _paging: paging,
        })
    }

    fn queue(&self) -> &Arc<Queue> {
        self.queue.as_ref().expect("a queue outside restarts")
    }

    /// Applies `op` to the queue and to the model, then compares them.
    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let mut effects = Effects::default();
        let mut rejected = None;
        self.model.new_moves.clear();
        match op {
            Op::Publish {
                persistent,
                ttl,
                priority,
                size,
            } => self.publish(persistent, ttl, priority, size, &mut effects)?,
            Op::PublishBatch {
                count,
                persistent,
                ttl,
                priority,
                size,
            } => {
                for _ in 0..count {
                    self.publish(persistent, ttl, priority, size, &mut effects)?;
                }
            }
            Op::Get { no_ack } => {
                let got = self.queue().get(no_ack, &mut effects);
                let want = self.model.get(no_ack);
                match (got, want) {
                    (None, None) => {}
                    (Some((message, left)), Some((id, redelivered, count))) => {
                        self.check_message(&message, id, redelivered)?;
                        prop_assert_eq!(left as usize, count, "messages left after a get");
                        if !no_ack {
                            self.unacked.push((message, None));
                        }
                    }
                    (got, want) => {
                        return Err(fail(format!(
                            "basic.get gave {:?}, the model {want:?}",
                            got.map(|(m, left)| (id_of(&m), m.redelivered, left))
                        )));
                    }
                }
            }
            Op::Consume { prefetch, no_ack } => {
                if self.consumers.len() < MAX_CONSUMERS {
                    self.consumer_ids += 1;
                    let handle = ConsumerHandle {
                        id: self.consumer_ids,
                        channel: 1,
                        exclusive: false,
                        credit: Arc::new(Credit::new(prefetch, None)),
                        mailbox: self.mailbox.clone(),
                        no_ack,
                        priority: 0,
                    };
                    self.queue()
                        .add_consumer(handle.clone(), &mut effects)
                        .map_err(|e| fail(format!("{e:?}")))?;
                    self.consumers.push(handle);
                    self.model.consume(self.consumer_ids, prefetch, no_ack);
                }
            }
            Op::Cancel { at } => {
                if !self.consumers.is_empty() {
                    let at = at % self.consumers.len();
                    let c = self.consumers.remove(at);
                    prop_assert_eq!(self.queue().remove_consumer(c.id), ConsumerRemoval::Removed);
                    self.queue().kick(&mut effects);
                    self.model.remove_consumer(at);
                    self.model.dispatch();
                }
            }
            Op::Deliver => self.deliver(&mut effects)?,
            Op::Ack { at, multiple } => {
                if !self.unacked.is_empty() {
                    let at = at % self.unacked.len();
                    let (taken, kick) = self.take_unacked(at, multiple);
                    self.queue().settle(taken);
                    if kick {
                        self.queue().kick(&mut effects);
                    }
                    let (ids, kick) = self.model.take_unacked(at, multiple);
                    for id in ids {
                        self.model.forget(id);
                    }
                    if kick {
                        self.model.dispatch();
                    }
                }
            }
            Op::Reject {
                at,
                multiple,
                requeue,
            } => {
                if !self.unacked.is_empty() {
                    let at = at % self.unacked.len();
                    let (taken, kick) = self.take_unacked(at, multiple);
                    let positions: Vec<_> = taken.iter().map(|m| m.position).collect();
                    if requeue {
                        self.queue().requeue(taken, &mut effects);
                    } else {
                        self.queue().reject(taken, &mut effects);
                    }
                    if kick {
                        self.queue().kick(&mut effects);
                    }
                    let (ids, kick) = self.model.take_unacked(at, multiple);
                    if requeue {
                        self.model.requeue(&ids);
                    } else {
                        self.model.reject(&ids);
                        rejected = Some(positions);
                    }
                    if kick {
                        self.model.dispatch();
                    }
                }
            }
            Op::CloseChannel => {
                for c in std::mem::take(&mut self.consumers) {
                    prop_assert_eq!(self.queue().remove_consumer(c.id), ConsumerRemoval::Removed);
                }
                let unacked: Vec<QueuedMessage> = self.unacked.drain(..).map(|(m, _)| m).collect();
                if !unacked.is_empty() {
                    self.queue().requeue(unacked, &mut effects);
                }
                let undelivered: Vec<QueuedMessage> = self
                    .pending
                    .drain(..)
                    .filter_map(|item| match item {
                        Outgoing::Deliver { message, .. } => Some(message),
                        Outgoing::Cancelled { .. }
                        | Outgoing::GroupEvent { .. }
                        | Outgoing::Wake { .. } => None,
                    })
                    .collect();
                let n = u32::try_from(undelivered.len()).expect("few");
                self.mailbox.written(n, |_| {});
                if !undelivered.is_empty() {
                    self.queue().requeue(undelivered, &mut effects);
                }
                self.model.close_channel();
            }
            Op::SettleMove => {
                if let Some(moved) = self.moves.pop_front() {
                    let positions: Vec<_> =
                        moved.letters.iter().filter_map(|l| l.position).collect();
                    self.queue().settle_moved(0, &positions);
                    self.model.settle_move();
                }
            }
            Op::Purge => {
                let purged = self.queue().purge();
                prop_assert_eq!(purged as usize, self.model.purge(), "purged");
            }
            Op::Wake => {
                self.queue().wake(crate::timers::now_ms(), &mut effects);
                self.model.wake();
            }
            Op::MemoryTight(tight) => {
                self.env.memory_tight.store(tight, Ordering::Relaxed);
                self.model.tight = tight;
            }
            Op::Restart => {
                if self.setup.kind == Kind::Durable {
                    self.stop();
                    self.model.restart();
                    self.restart(&mut effects)?;
                }
            }
            Op::Sync => {
                if let Some(pending) = self.queue().begin_sync() {
                    // Beginning the sync writes out what the log buffered; the fsyncs
                    // themselves (`PendingSync::run`) only matter to a power loss, which
                    // a crash here (a copy of the files) does not simulate, so they are
                    // skipped to keep the run fast.
                    let pending = pending.map_err(fail)?;
                    prop_assert!(
                        self.queue().complete_sync(pending, &Ok(())),
                        "a sync failed"
                    );
                    self.model.sync();
                }
            }
            Op::Crash => {
                if self.setup.kind == Kind::Durable {
                    self.crash(&mut effects)?;
                }
            }
        }
        self.check_effects(effects, rejected)?;
        self.check()
    }

    /// Publishes one message to the queue and to the model.
    fn publish(
        &mut self,
        persistent: bool,
        ttl: bool,
        priority: u8,
        size: usize,
        effects: &mut Effects,
    ) -> Result<(), TestCaseError> {
        let id = self.model.msgs.len() as u64;
        let properties = properties(persistent, ttl, priority);
        let message = Message::new("ex", "rk", &properties.clone(), body(id, size));
        let handling = Handling::of(&message);
        prop_assert_eq!(handling.persistent, persistent);
        let enqueued = self
            .queue()
            .publish(message, handling, effects)
            .map_err(fail)?;
        let want = self.model.publish(Msg {
            persistent,
            ttl,
            priority,
            size: ID_DIGITS + size,
            properties,
            redelivered: false,
            kept: false,
            returns: 0,
            delivered: false,
            logged: false,
            synced: false,
        });
        prop_assert_eq!(enqueued, want, "publish of {}", id);
        Ok(())
    }

    /// The connection writes its mailbox, as `Connection::drain_mailbox` does.
    fn deliver(&mut self, effects: &mut Effects) -> Result<(), TestCaseError> {
        let mut returned = Vec::new();
        let mut kick = false;
        let mut written = 0;
        for item in std::mem::take(&mut self.pending) {
            written += 1;
            let Outgoing::Deliver {
                consumer,
                queue,
                credit,
                message,
                ..
            } = item
            else {
                return Err(fail("a consumer was cancelled by the queue"));
            };
            prop_assert!(Arc::ptr_eq(&queue, self.queue()));
            let resume = credit.written();
            let found = self.consumers.iter().find(|c| c.id == consumer);
            kick |= resume && found.is_some();
            match found {
                Some(c) if c.no_ack => {
                    credit.release(1);
                    kick = true;
                    if message.position.is_some() {
                        queue.settle(std::iter::once(message));
                    }
                }
                Some(_) => self.unacked.push((message, Some(credit))),
                _ => {
                    credit.release(1);
                    returned.push(message);
                }
            }
        }
        self.mailbox.written(written, |_| kick = true);
        if !returned.is_empty() {
            self.queue().requeue(returned, effects);
        }
        if kick {
            self.queue().kick(effects);
        }
        self.model.deliver();
        Ok(())
    }

    /// Takes the deliveries an ack or nack names and gives their credit back; returns them
    /// and whether a consumer regained credit (so the queue is kicked).
    fn take_unacked(&mut self, at: usize, multiple: bool) -> (Vec<QueuedMessage>, bool) {
        let taken: Vec<_> = if multiple {
            self.unacked.drain(..=at).collect()
        } else {
            vec![self.unacked.remove(at)]
        };
        let mut kick = false;
        let messages = taken
            .into_iter()
            .map(|(message, credit)| {
                if let Some(credit) = credit {
                    credit.release(1);
                    kick = true;
                }
                message
            })
            .collect();
        (messages, kick)
    }

    /// Drops the client's state and then the queue, which writes out what its log
    /// buffered.
    fn stop(&mut self) {
        self.consumers.clear();
        self.pending.clear();
        // The connection is gone: nothing it held is unwritten, no queue waits on it.
        self.mailbox.written(u32::MAX, |_| {});
        self.unacked.clear();
        self.moves.clear();
        let queue = self.queue.take().expect("a queue to stop");
        assert!(
            Arc::into_inner(queue).is_some(),
            "something still holds the queue at shutdown"
        );
    }

    /// Kills the broker: the log's files are copied as they are now (what the kernel
    /// holds survives a `kill -9`, what the process buffered does not), the queue is
    /// dropped (writing its buffers to the old files, which are then forgotten), and the
    /// queue starts again from the copy. What came back is read from the log first and
    /// checked against the model's bounds.
    fn crash(&mut self, effects: &mut Effects) -> Result<(), TestCaseError> {
        self.crashes += 1;
        let copy = self.dir.path().join(format!("crashed-{}", self.crashes));
        copy_dir(&self.log_dir, &copy).map_err(fail)?;
        self.stop();
        std::fs::remove_dir_all(&self.log_dir).map_err(fail)?;
        self.log_dir = copy;
        let mut back = Vec::new();
        {
            let (mut log, _) =
                QueueLog::open(&self.log_dir, self.setup.segment_size).map_err(fail)?;
            let mut from = None;
            loop {
                let page = log.read(from, 64, usize::MAX).map_err(fail)?;
                let Some(&(last, _)) = page.last() else {
                    break;
                };
                for (pos, stored) in &page {
                    back.push((id_in(&stored.body), log.delivery_marks(*pos)));
                }
                from = Some(last);
            }
        }
        self.model.crash(&back)?;
        self.restart(effects)
    }

    /// Starts the broker again from what the log holds, as `VHost::recover` does.
    fn restart(&mut self, effects: &mut Effects) -> Result<(), TestCaseError> {
        let (log, recovery) =
            QueueLog::open(&self.log_dir, self.setup.segment_size).map_err(fail)?;
        prop_assert_eq!(&recovery.warnings, &Vec::<String>::new());
        let (messages, delivered) = self.model.recovered;
        prop_assert_eq!(recovery.messages, messages, "recovered");
        prop_assert_eq!(
            recovery.delivered,
            delivered,
            "recovered with a delivered marker"
        );
        let queue = Arc::new(Queue::new(
            "q".into(),
            "/",
            self.setup.settings(),
            Some(log),
            &recovery,
            self.env.clone(),
        ));
        queue.set_arguments(self.setup.arguments(), effects);
        queue.start_clocks();
        self.queue = Some(queue);
        Ok(())
    }

    /// Nothing leaves the queue as an effect but the moves the model expects: letters
    /// bound for its dead-letter exchange, each with its record's position (exactly the
    /// rejected deliveries' positions after a reject).
    fn check_effects(
        &mut self,
        effects: Effects,
        rejected: Option<Vec<Option<crate::store::SegmentPosition>>>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(effects.expired.is_empty(), "the queue expired");
        let want = std::mem::take(&mut self.model.new_moves);
        let got: Vec<Vec<(u64, DeathReason)>> = effects
            .moves
            .iter()
            .map(|m| {
                m.letters
                    .iter()
                    .map(|l| (id_in(l.message.body()), l.reason))
                    .collect()
            })
            .collect();
        prop_assert_eq!(got, want, "moves left as effects");
        for moved in effects.moves {
            prop_assert!(Arc::ptr_eq(&moved.source, self.queue()));
            match &moved.route {
                MoveRoute::DeadLetter {
                    exchange,
                    routing_key,
                    ..
                } => {
                    prop_assert_eq!(exchange.as_str(), DLX);
                    prop_assert_eq!(routing_key.as_deref(), Some(DLX_KEY));
                }
                MoveRoute::Delayed { .. } => {
                    return Err(fail("a move through a delayed exchange"));
                }
            }
            for letter in &moved.letters {
                let id = id_in(letter.message.body());
                prop_assert_eq!(
                    letter.position.is_some(),
                    self.model.msg(id).logged,
                    "position of letter {}",
                    id
                );
            }
            if let Some(positions) = &rejected {
                let got: Vec<_> = moved.letters.iter().map(|l| l.position).collect();
                prop_assert_eq!(&got, positions, "the rejected letters' positions");
            }
            self.moves.push_back(moved);
        }
        Ok(())
    }

    /// Compares what the client and the queue hold with the model.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let mut fresh = Vec::new();
        self.mailbox.drain_into(&mut fresh);
        self.pending.append(&mut fresh);
        let queue = self.queue().clone();
        prop_assert_eq!(
            queue.message_count() as usize,
            self.model.count(),
            "message count"
        );
        prop_assert_eq!(
            queue.memory_bytes(),
            (self.model.mem_bytes + self.model.mem.len() * super::MESSAGE_FOOTPRINT) as u64,
            "memory the ready messages hold"
        );
        prop_assert_eq!(
            queue.consumer_count() as usize,
            self.model.consumers.len(),
            "consumers"
        );
        let awaiting_ack =
            self.model.mailbox.iter().filter(|d| !d.no_ack).count() + self.model.unacked.len();
        prop_assert_eq!(
            queue.unacked_count() as usize,
            awaiting_ack,
            "deliveries awaiting an ack"
        );
        let got: Vec<(u64, u64, bool)> =
            self.pending
                .iter()
                .map(|item| match item {
                    Outgoing::Deliver {
                        consumer, message, ..
                    } => (id_of(message), *consumer, message.redelivered),
                    Outgoing::Cancelled { consumer, .. }
                    | Outgoing::GroupEvent { consumer, .. } => (u64::MAX, *consumer, false),
                    Outgoing::Wake { .. } => (u64::MAX, u64::MAX, false),
                })
                .collect();
        let want: Vec<(u64, u64, bool)> = self
            .model
            .mailbox
            .iter()
            .map(|d| (d.id, d.consumer, d.redelivered))
            .collect();
        prop_assert_eq!(got, want, "deliveries in the mailbox");
        for (item, want) in self.pending.iter().zip(&self.model.mailbox) {
            if let Outgoing::Deliver { message, .. } = item {
                self.check_message(message, want.id, want.redelivered)?;
            }
        }
        let got: Vec<u64> = self.unacked.iter().map(|(m, _)| id_of(m)).collect();
        let want: Vec<u64> = self.model.unacked.iter().map(|&(id, _)| id).collect();
        prop_assert_eq!(got, want, "unacked deliveries");
        let got: Vec<Vec<u64>> = self
            .moves
            .iter()
            .map(|m| m.letters.iter().map(|l| id_in(l.message.body())).collect())
            .collect();
        let want: Vec<Vec<u64>> = self.model.moving.iter().cloned().collect();
        prop_assert_eq!(got, want, "moves not yet settled");
        for (c, m) in self.consumers.iter().zip(&self.model.consumers) {
            prop_assert_eq!(c.id, m.id, "consumers");
            prop_assert_eq!(
                c.credit.in_flight(),
                m.in_flight,
                "credit in use by {}",
                c.id
            );
        }
        Ok(())
    }

    /// Checks a message the queue handed out: the one the model expected, intact.
    fn check_message(
        &self,
        message: &QueuedMessage,
        id: u64,
        redelivered: bool,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(id_of(message), id, "message handed out");
        let want = self.model.msg(id);
        prop_assert_eq!(
            message.redelivered,
            redelivered,
            "redelivered flag of {}",
            id
        );
        prop_assert_eq!(message.message.body(), &body(id, want.size - ID_DIGITS)[..]);
        let properties = if want.returns > 0 {
            Bytes::copy_from_slice(
                Message::new("ex", "rk", &want.properties, Bytes::new())
                    .with_delivery_count(want.returns)
                    .raw_properties(),
            )
        } else {
            want.properties.clone()
        };
        prop_assert_eq!(
            message.message.raw_properties(),
            &properties[..],
            "properties of {}",
            id
        );
        prop_assert_eq!(
            message.delivery_count,
            want.returns,
            "x-delivery-count of {}",
            id
        );
        prop_assert_eq!(message.message.exchange(), "ex");
        prop_assert_eq!(message.message.routing_key(), "rk");
        prop_assert_eq!(message.priority, want.priority);
        prop_assert_eq!(
            message.position.is_some(),
            want.logged,
            "position of {}",
            id
        );
        Ok(())
    }

    /// Returns everything to the queue, lets the timers finish what was sliced, settles
    /// every move and takes every message with gets, in the model's order; then restarts
    /// and checks that nothing comes back.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.apply(Op::CloseChannel)?;
        loop {
            // What the timers would do: work off sliced purges and drops.
            while self.model.discard_due {
                self.apply(Op::Wake)?;
            }
            while !self.moves.is_empty() {
                self.apply(Op::SettleMove)?;
            }
            if self.model.count() == 0 {
                break;
            }
            self.apply(Op::Get { no_ack: true })?;
        }
        self.apply(Op::Get { no_ack: true })?;
        prop_assert_eq!(self.model.count(), 0);
        self.apply(Op::Restart)?;
        prop_assert_eq!(
            self.queue().message_count(),
            0,
            "messages back after all were acked"
        );
        Ok(())
    }
}

/// Runs `ops` against a queue set up as `setup`, then drains it.
fn run(setup: Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(setup)?;
    for (step, &op) in ops.iter().enumerate() {
        harness
            .apply(op)
            .map_err(|e| fail(format!("step {step} ({op:?}): {e}")))?;
    }
    harness
        .finish()
        .map_err(|e| fail(format!("draining at the end: {e}")))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), any::<bool>(), 0u8..6, size()).prop_map(
            |(persistent, ttl, priority, size)| Op::Publish { persistent, ttl, priority, size }
        ),
        1 => (2usize..40, any::<bool>(), any::<bool>(), 0u8..6, size()).prop_map(
            |(count, persistent, ttl, priority, size)| Op::PublishBatch {
                count, persistent, ttl, priority, size
            }
        ),
        3 => any::<bool>().prop_map(|no_ack| Op::Get { no_ack }),
        1 => (0u32..4, any::<bool>()).prop_map(|(prefetch, no_ack)| Op::Consume { prefetch, no_ack }),
        1 => (0usize..MAX_CONSUMERS).prop_map(|at| Op::Cancel { at }),
        4 => Just(Op::Deliver),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(at, multiple)| Op::Ack { at, multiple }),
        2 => (any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(at, multiple, requeue)| Op::Reject { at, multiple, requeue }),
        1 => Just(Op::CloseChannel),
        1 => Just(Op::SettleMove),
        1 => Just(Op::Purge),
        1 => any::<bool>().prop_map(Op::MemoryTight),
        2 => Just(Op::Wake),
        2 => Just(Op::Restart),
        1 => Just(Op::Sync),
        2 => Just(Op::Crash),
    ]
}

/// Body sizes past the message's number: mostly multiples of 8, so that sums of bodies
/// often land exactly on the byte limits (also multiples of 8 mostly).
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![3 => prop::sample::select(vec![0, 8, 24, 40]), 1 => 0usize..48]
}

/// A byte limit, mostly a multiple of 8.
fn byte_limit(range: std::ops::Range<usize>) -> impl Strategy<Value = usize> {
    let eights = range.start.div_ceil(8)..range.end / 8;
    prop_oneof![3 => eights.prop_map(|n| n * 8), 1 => range]
}

/// Mostly below `small` (so that a few messages page), sometimes up to `large`.
fn small_or_not(small: usize, large: usize) -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1..small, 1 => small..large]
}

fn paging() -> impl Strategy<Value = Paging> {
    (
        (small_or_not(8, 80), byte_limit(16..2000)),
        (small_or_not(8, 80), byte_limit(16..2000)),
        (small_or_not(4, 20), byte_limit(16..400)),
        small_or_not(6, 40),
        small_or_not(6, 40),
        byte_limit(1..1000),
        small_or_not(4, 20),
        small_or_not(4, 40),
        small_or_not(4, 40),
    )
        .prop_map(
            |(
                durable,
                transient,
                tight,
                refill_below,
                page_messages,
                page_bytes,
                discard_slice,
                unwritten,
                connection_unwritten,
            )| Paging {
                durable,
                transient,
                tight,
                refill_below,
                page_messages,
                page_bytes,
                // At least a page, as in production: a purge's slice is so many pages.
                discard_slice: discard_slice.max(page_messages),
                unwritten: unwritten as u32,
                connection_unwritten: connection_unwritten as u32,
            },
        )
}

fn setup(kinds: &'static [Kind], priority: bool) -> impl Strategy<Value = Setup> {
    let max_priority = if priority {
        (1u8..5).prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    let quorum = (
        prop::bool::weighted(0.3),
        prop::option::weighted(0.5, 0u64..3),
    );
    let limits = (
        prop::option::weighted(0.3, 0u64..8),
        prop::option::weighted(0.2, byte_limit(0..300).prop_map(|n| n as u64)),
        prop::sample::select(vec![
            Overflow::DropHead,
            Overflow::RejectPublish,
            Overflow::RejectPublishDlx,
        ]),
    );
    (
        prop::sample::select(kinds),
        max_priority,
        any::<bool>(),
        limits,
        quorum,
        paging(),
        prop::sample::select(vec![MIN_SEGMENT_SIZE, 256, 4096, DEFAULT_SEGMENT_SIZE]),
    )
        .prop_map(
            |(
                kind,
                max_priority,
                dead_letter,
                (max_length, max_length_bytes, overflow),
                (quorum, delivery_limit),
                paging,
                segment_size,
            )| Setup {
                kind,
                max_priority,
                dead_letter,
                max_length,
                max_length_bytes,
                overflow,
                // Quorum queues are durable only.
                quorum: quorum && kind == Kind::Durable,
                delivery_limit: delivery_limit.filter(|_| quorum && kind == Kind::Durable),
                paging,
                segment_size,
            },
        )
}

/// Runs the property over `cases` random (setup, operations) pairs, shrinking a failure.
fn check_property(setup: impl Strategy<Value = Setup>) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (setup, prop::collection::vec(op(), 1..60));
    if let Err(error) = runner.run(&strategy, |(setup, ops)| run(setup, &ops)) {
        panic!("{error}");
    }
}

#[test]
fn durable_queue_agrees_with_the_model() {
    check_property(setup(&[Kind::Durable], false));
}

#[test]
fn durable_priority_queue_agrees_with_the_model() {
    check_property(setup(&[Kind::Durable], true));
}

#[test]
fn transient_queue_agrees_with_the_model() {
    check_property(prop_oneof![
        setup(&[Kind::Spill, Kind::Memory], false),
        setup(&[Kind::Spill, Kind::Memory], true)
    ]);
}

// Regression tests: failures proptest found and shrank, kept as they were found.

/// A setup with the smallest paging sizes, for regression tests.
fn tiny(kind: Kind) -> Setup {
    Setup {
        kind,
        max_priority: None,
        dead_letter: false,
        max_length: None,
        max_length_bytes: None,
        overflow: Overflow::DropHead,
        quorum: false,
        delivery_limit: None,
        paging: Paging {
            durable: (1, 16),
            transient: (1, 16),
            tight: (1, 16),
            refill_below: 1,
            page_messages: 1,
            page_bytes: 1,
            discard_slice: 1,
            unwritten: 1,
            connection_unwritten: 1,
        },
        segment_size: MIN_SEGMENT_SIZE,
    }
}

fn regression(setup: Setup, ops: &[Op]) {
    if let Err(error) = run(setup, ops) {
        panic!("{error}");
    }
}

/// A `no_ack` delivery still in the mailbox when its channel closed went back flagged
/// `redelivered` but with no delivered marker in the log; handed to `basic.get` (with
/// acks) it was then not marked either, since marking skips messages already flagged,
/// so after a restart it came back as never delivered.
#[test]
fn a_message_got_after_an_unwritten_no_ack_delivery_comes_back_redelivered() {
    use Op::*;
    regression(
        tiny(Kind::Durable),
        &[
            Publish {
                persistent: true,
                ttl: false,
                priority: 0,
                size: 0,
            },
            Consume {
                prefetch: 0,
                no_ack: true,
            },
            CloseChannel,
            Get { no_ack: false },
            Restart,
        ],
    );
}

/// A quorum queue counted the return of a `no_ack` delivery still in the mailbox when
/// its channel closed (`x-delivery-count` 1), but after a restart the message came back
/// with a count of 0: the count is rebuilt as the delivered markers less one for the
/// first delivery, and a `no_ack` delivery had no marker.
#[test]
fn a_quorum_queue_keeps_the_count_of_a_returned_no_ack_delivery_across_a_restart() {
    use Op::*;
    regression(
        Setup {
            quorum: true,
            ..tiny(Kind::Durable)
        },
        &[
            Consume {
                prefetch: 0,
                no_ack: true,
            },
            Publish {
                persistent: true,
                ttl: false,
                priority: 0,
                size: 0,
            },
            CloseChannel,
            Restart,
            Get { no_ack: false },
        ],
    );
}
