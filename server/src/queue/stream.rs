//! A stream queue's body (`x-queue-type: stream`): an append-only log that every
//! consumer reads from its own offset, with no message ever removed by consuming.
//!
//! Publishing appends to the [`StreamLog`]; confirms follow the group commit as for a
//! durable queue. Each consumer has a cursor (next offset, chunk position, its own
//! reader and the undelivered rest of the chunk it read last) and takes one credit per
//! delivery; settling (ack, nack, reject, recover) only gives credit back, which the
//! channel does. Consumers are served when they attach, when their credit comes back (a
//! kick) and when a commit makes more of the log readable. See
//! `docs/streams-design.md`.
//!
//! Reads happen under the stream's own lock, on a connection's task: the commit thread
//! never reads, it only wakes the connections of consumers waiting for what it made
//! readable ([`Outgoing::Wake`]). One dispatch reads at most [`READ_BUDGET`] chunks per
//! consumer and wakes the consumer's connection to go on, so a reader far behind (or
//! one whose filter skips most chunks) never holds the lock for long.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::mailbox::Outgoing;
use super::{ConsumerHandle, ConsumerId, Credit, Enqueued, Queue};
use amqp_codec::properties::Property;
use amqp_codec::table::find_header;

use crate::message::{Message, QueuedMessage};
use crate::store::stream_format::{StreamEntry, StreamRecord};
use crate::store::stream_log::{ChunkPosition, Read, StreamLog, StreamReader};
use crate::store::stream_offsets::StreamOffsets;
use crate::store::{PendingSync, StoreError, SyncTarget};
use crate::timers::now_ms;

/// Where a new consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The first message kept.
    First,
    /// The start of the last chunk written.
    Last,
    /// Only messages appended from now on (the default).
    Next,
    /// This offset (the first kept if it is older; waits if it is not there yet).
    Offset(u64),
    /// The first chunk appended at or after this time (milliseconds since the epoch).
    Timestamp(u64),
}

/// Which messages a consumer wants (`x-stream-filter`, `x-stream-match-unfiltered`):
/// those whose `x-stream-filter-value` is one of `values`, and with
/// `match_unfiltered` those without one. No values: every message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// The filter values asked for, compared byte for byte.
    pub values: Vec<Box<[u8]>>,
    /// Also the messages published without a filter value.
    pub match_unfiltered: bool,
}

impl StreamFilter {
    /// Whether an entry with this filter value passes (exactly, unlike RabbitMQ's
    /// chunk-level Bloom filter, which lets clients see others and filter again).
    fn passes(&self, value: Option<&[u8]>) -> bool {
        if self.values.is_empty() {
            return true;
        }
        match value {
            Some(v) => self.values.iter().any(|want| **want == *v),
            None => self.match_unfiltered,
        }
    }
}

/// The publisher's `x-stream-filter-value` header, if it is a string.
fn filter_value(message: &Message) -> Option<&str> {
    let properties = message.properties()?;
    let table = properties.raw(Property::Headers)?;
    let (tag, value) = find_header(table, FILTER_VALUE_HEADER.as_bytes())?;
    if tag != b'S' {
        return None;
    }
    std::str::from_utf8(value.get(4..)?).ok()
}

/// Chunks one dispatch reads for one consumer at most before leaving the rest to a
/// wake-up of its connection.
const READ_BUDGET: usize = 16;
/// How soon consumers are served again after a read failed (a shortage of descriptors
/// passes; damage was stepped over), when nothing else serves them first.
const RETRY_MS: u64 = 1000;
/// How often a stream with `max-age` looks for expired segments when nothing else
/// (a commit, a consumer attaching) makes it look.
const AGE_CHECK_MS: u64 = 60_000;

/// The header a publisher tags a message with for filtering consumers.
const FILTER_VALUE_HEADER: &str = "x-stream-filter-value";

/// A consumer as a stream attaches it: its handle, where it starts when it has no
/// committed offset, and what it wants.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The consumer.
    pub consumer: ConsumerHandle,
    /// Where it starts reading without a committed offset.
    pub start: StreamStart,
    /// The messages it wants.
    pub filter: StreamFilter,
}

/// Where one tracking key's reading of a stream stands ([`Stream::position_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPosition {
    /// The committed offset: the lowest not yet settled, stored with the log.
    pub committed: Option<u64>,
    /// The readable end of the stream (or partition).
    pub end: u64,
    /// The consumer reading under the key now, if any.
    pub reader: Option<ConsumerId>,
    /// Deliveries made under the key and not settled.
    pub unsettled: u32,
}

/// Why a consumer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// Another live consumer tracks its offsets under the same key.
    #[error("the offset tracking key is in use")]
    Tracked,
    /// The stream was deleted meanwhile.
    #[error("the stream was deleted")]
    Deleted,
    /// Reading the log to find the start failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long retention keeps a stream: from `x-max-length-bytes` and `x-max-age` or
/// their policy keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many bytes (whole segments dropped, oldest first).
    pub max_bytes: Option<u64>,
    /// Drop segments whose newest message is older than this.
    pub max_age_ms: Option<u64>,
}

/// A stream's log and its consumers' cursors: the whole stream, or one partition of a
/// partitioned one.
#[derive(Debug)]
pub struct Stream {
    /// The queue it is the body of, to hand deliveries that name it.
    queue: Weak<Queue>,
    /// Its partition of the queue (0 for a stream without partitions).
    partition: u16,
    core: Mutex<Core>,
}

#[derive(Debug)]
struct Core {
    log: StreamLog,
    /// The committed offsets of tracked consumers, synced with the log.
    offsets: StreamOffsets,
    readers: Vec<Cursor>,
    /// Readers waiting for a tracking key whose cursor is stopped with deliveries not
    /// settled (a group's partition draining): each attaches once it is gone.
    successors: Vec<(String, Reader)>,
    retention: Retention,
    deleted: bool,
    /// A commit was asked for to sync changed offsets, and has not begun yet.
    sync_asked: bool,
    /// Deleted with appends whose sync failed: none of them may be reported durable.
    lost_appends: bool,
    /// A read failed: serve the consumers again at the next timer wake-up.
    retry_due: bool,
    /// `retry_due` was set where the timer could not be asked at once (under this
    /// lock): the caller asks once the lock is released.
    retry_unarmed: bool,
    /// The wake-up already asked of the timers (0: none).
    timer_at_ms: u64,
    /// Where the next dispatch starts among the readers, so that a shared read budget
    /// serves them in turn.
    next_reader: usize,
}

/// One consumer's place in the stream.
#[derive(Debug)]
struct Cursor {
    consumer: ConsumerHandle,
    /// The next offset to deliver.
    next: u64,
    /// The chunk to read when `pending` runs out.
    at: ChunkPosition,
    reader: StreamReader,
    /// Entries of the last chunk read that are not delivered yet.
    pending: VecDeque<StreamEntry>,
    /// `at` was the end when the consumer attached beyond it: find `next` through the
    /// index once it is readable rather than read every chunk up to it.
    seek_pending: bool,
    filter: StreamFilter,
    /// A tracked consumer's key and the offsets delivered to it and not settled.
    tracked: Option<(String, BTreeSet<u64>)>,
    /// Delivers nothing more: a tracked consumer cancelled, or a group's partition
    /// moved away, waiting for its deliveries to be settled so that its committed
    /// offset is final.
    stopped: bool,
}

impl Cursor {
    /// What a tracked consumer has consumed up to: its lowest unsettled delivery, or
    /// the next offset it would be given (lower after a give-back).
    fn committed(&self) -> Option<(&str, u64)> {
        let (key, outstanding) = self.tracked.as_ref()?;
        let lowest = outstanding.first().copied().unwrap_or(self.next);
        Some((key, lowest.min(self.next)))
    }
}

impl Stream {
    /// Partition `partition` of `queue` (0 for a whole stream) over `log` and the
    /// committed `offsets` of its tracked consumers, kept as `retention` says.
    pub fn new(
        queue: Weak<Queue>,
        partition: u16,
        log: StreamLog,
        offsets: StreamOffsets,
        retention: Retention,
    ) -> Self {
        Self {
            queue,
            partition,
            core: Mutex::new(Core {
                log,
                offsets,
                readers: Vec::new(),
                successors: Vec::new(),
                retention,
                deleted: false,
                sync_asked: false,
                lost_appends: false,
                retry_due: false,
                retry_unarmed: false,
                timer_at_ms: 0,
                next_reader: 0,
            }),
        }
    }

    /// Appends a published message; it is readable, and confirmed, after the next
    /// group commit of this partition.
    ///
    /// # Errors
    /// The log refused it (poisoned, or a message the format cannot hold).
    pub fn append(&self, message: &Message) -> Result<Enqueued, StoreError> {
        let mut core = self.core.lock();
        if core.deleted {
            return Ok(Enqueued::Memory);
        }
        let record = StreamRecord {
            filter_value: filter_value(message),
            exchange: message.exchange(),
            routing_key: message.routing_key(),
            properties: message.raw_properties(),
            body: message.body(),
        };
        core.log.append(&record, now_ms())?;
        Ok(Enqueued::Logged(self.partition))
    }

    /// Messages kept: from the first kept offset to the readable end.
    pub fn message_count(&self) -> u64 {
        let core = self.core.lock();
        core.log.readable_end() - core.log.first_offset()
    }

    /// Registers a consumer starting at `start`, and serves it. A tracked consumer
    /// (`track` names its key) resumes where its committed offset says instead, when
    /// it has one; a stopped consumer under the same key (cancelled with deliveries
    /// not settled) gives way, its later settlements no longer counted. Returns whether
    /// a commit must be asked for to make the tracked consumer's start durable.
    ///
    /// # Errors
    /// [`AddError::Tracked`] if a live consumer already tracks under that key; finding
    /// the start in the log's index failed.
    pub fn add_consumer(&self, reader: Reader, track: Option<String>) -> Result<bool, AddError> {
        let ask_sync = {
            let mut core = self.core.lock();
            if core.deleted {
                return Err(AddError::Deleted);
            }
            if let Some(key) = &track
                && let Some(at) = core.tracking(key)
            {
                if !core.readers[at].stopped {
                    return Err(AddError::Tracked);
                }
                core.readers.remove(at);
            }
            core.attach(reader, track)?
        };
        if self.dispatch() {
            self.arm_retry();
        }
        Ok(ask_sync)
    }

    /// Gives the reading under tracking key `key` (a consumer group's, in this
    /// partition) to `to`, or to nobody. The reader holding it now stops at once; `to`
    /// starts at the key's committed offset (else its own start) once the deliveries
    /// made to that reader are settled, so that the committed offset it starts from is
    /// final. Returns whether a commit must be asked for; the caller dispatches.
    ///
    /// # Errors
    /// Finding the start in the log's index failed.
    pub fn assign(&self, key: &str, to: Option<Reader>) -> Result<bool, AddError> {
        let mut core = self.core.lock();
        if core.deleted {
            return Err(AddError::Deleted);
        }
        core.successors.retain(|(k, _)| k != key);
        if let Some(at) = core.tracking(key) {
            let cursor = &mut core.readers[at];
            if to
                .as_ref()
                .is_some_and(|r| r.consumer.id == cursor.consumer.id)
            {
                cursor.stopped = false;
                return Ok(false);
            }
            cursor.stop();
            if !cursor.outstanding_is_empty() {
                core.successors.extend(to.map(|r| (key.to_owned(), r)));
                return Ok(false);
            }
            core.readers.remove(at);
        }
        core.successors.extend(to.map(|r| (key.to_owned(), r)));
        let ask = core.attach_successors();
        self.arm_if_unarmed(core);
        Ok(ask)
    }

    /// Asks the timer for a retry that `core` found due, once its lock is released.
    fn arm_if_unarmed(&self, mut core: parking_lot::MutexGuard<'_, Core>) {
        let arm = std::mem::take(&mut core.retry_unarmed);
        drop(core);
        if arm {
            self.arm_retry();
        }
    }

    /// Records that the consumer whose credit is `credit` settled the deliveries at
    /// `offsets`: a tracked consumer's committed offset moves on, and a stopped one
    /// with nothing left unsettled makes way for its successor. Returns whether a
    /// commit must be asked for to make it durable (none is pending yet).
    #[must_use]
    pub fn settled(&self, credit: &Arc<Credit>, offsets: &[u64]) -> bool {
        let mut core = self.core.lock();
        let Some(at) = core.tracked_by(credit) else {
            return false;
        };
        let cursor = &mut core.readers[at];
        if let Some((_, outstanding)) = cursor.tracked.as_mut() {
            for offset in offsets {
                outstanding.remove(offset);
            }
        }
        let ask = core.settle_tracked(at);
        self.arm_if_unarmed(core);
        ask
    }

    /// A delivery at `offset` to the consumer whose credit is `credit` was never
    /// written (the consumer or its channel went first): it is not outstanding, and
    /// the consumer's reading goes back to it, so that its committed offset never
    /// passes it. Returns whether a commit must be asked for.
    #[must_use]
    pub fn given_back(&self, credit: &Arc<Credit>, offset: u64) -> bool {
        let mut core = self.core.lock();
        let Some(at) = core.tracked_by(credit) else {
            return false;
        };
        let cursor = &mut core.readers[at];
        if !cursor
            .tracked
            .as_mut()
            .is_some_and(|(_, outstanding)| outstanding.remove(&offset))
        {
            return false;
        }
        if offset < cursor.next {
            cursor.next = offset;
            cursor.pending.clear();
            cursor.seek_pending = true;
        }
        let ask = core.settle_tracked(at);
        self.arm_if_unarmed(core);
        ask
    }

    /// A channel closed with deliveries of a stopped consumer (`credit`) not settled:
    /// they never will be, so its successor starts from its committed offset now.
    /// Returns whether a commit must be asked for.
    #[must_use]
    pub fn abandoned(&self, credit: &Arc<Credit>) -> bool {
        let mut core = self.core.lock();
        let Some(at) = core
            .readers
            .iter()
            .position(|c| c.stopped && Arc::ptr_eq(&c.consumer.credit, credit))
        else {
            return false;
        };
        let gone = core.readers.remove(at);
        let ask = core.hand_on(&gone);
        self.arm_if_unarmed(core);
        ask
    }

    /// Where the reading under tracking key `key` stands.
    pub fn position_of(&self, key: &str) -> KeyPosition {
        let core = self.core.lock();
        let cursor = core.tracking(key).map(|at| &core.readers[at]);
        KeyPosition {
            committed: core.offsets.get(key),
            end: core.log.readable_end(),
            reader: cursor.filter(|c| !c.stopped).map(|c| c.consumer.id),
            unsettled: cursor
                .and_then(|c| c.tracked.as_ref())
                .map_or(0, |(_, o)| u32::try_from(o.len()).unwrap_or(u32::MAX)),
        }
    }

    /// The tracking keys stored under `prefix`.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let core = self.core.lock();
        core.offsets
            .with_prefix(prefix)
            .map(|(k, _)| k.to_owned())
            .collect()
    }

    /// Unregisters a consumer; what was handed to it stays with its channel. With
    /// `keep_unsettled` (a `basic.cancel`), a tracked consumer with deliveries not
    /// settled stays, stopped, so that settling them still moves its committed offset.
    /// `None` if it had no cursor here, else whether a commit must be asked for.
    pub fn remove_consumer(&self, id: ConsumerId, keep_unsettled: bool) -> Option<bool> {
        let mut core = self.core.lock();
        core.successors.retain(|(_, r)| r.consumer.id != id);
        let at = core.readers.iter().position(|c| c.consumer.id == id)?;
        let cursor = &mut core.readers[at];
        if keep_unsettled && cursor.tracked.is_some() && !cursor.outstanding_is_empty() {
            cursor.stop();
            return Some(false);
        }
        let gone = core.readers.remove(at);
        let ask = core.hand_on(&gone);
        self.arm_if_unarmed(core);
        Some(ask)
    }

    /// Serves every consumer that has credit and something readable ahead of it. A read
    /// that fails is retried at the stream's next timer wake-up ([`Stream::next_wake`]);
    /// returns whether one is now due.
    #[must_use]
    pub fn dispatch(&self) -> bool {
        let Some(queue) = self.queue.upgrade() else {
            return false;
        };
        let mut core = self.core.lock();
        let Core {
            log,
            readers,
            deleted,
            retry_due,
            next_reader,
            ..
        } = &mut *core;
        if *deleted {
            return false;
        }
        let mut failed = false;
        // One budget for the whole dispatch, the readers served in turn from where the
        // last dispatch stopped: a kick never reads for long under this lock.
        let mut budget = READ_BUDGET * 4;
        let count = readers.len();
        let start = rotate_start(next_reader, count);
        for k in 0..count {
            let cursor = &mut readers[(start + k) % count];
            if let Err(error) = cursor.serve(&queue, log, self.partition, &mut budget) {
                tracing::error!(queue = %queue.name(), %error, "cannot read the stream; retrying");
                failed = true;
            }
        }
        let newly = failed && !*retry_due;
        *retry_due |= failed;
        newly
    }

    /// The timer's turn: drops what aged out and retries failed reads and readers
    /// waiting to start. Returns whether a commit must be asked for.
    #[must_use]
    pub fn on_timer(&self) -> bool {
        let retry = {
            let mut core = self.core.lock();
            core.timer_at_ms = 0;
            core.retain();
            let retry = std::mem::take(&mut core.retry_due);
            core.retry_unarmed = false;
            (retry, retry && core.attach_successors())
        };
        if retry.0 {
            // A retry that fails again re-arms through `next_wake`.
            let _ = self.dispatch();
        }
        retry.1
    }

    /// When the timer must come next, after `now_ms`, if it is not asked for that or
    /// earlier already: the caller asks the timers for it.
    pub fn next_wake(&self, now_ms: u64) -> Option<u64> {
        let mut core = self.core.lock();
        if core.deleted {
            return None;
        }
        let retry = core.retry_due.then_some(now_ms + RETRY_MS);
        let age = core.retention.max_age_ms.map(|_| now_ms + AGE_CHECK_MS);
        let at = retry.into_iter().chain(age).min()?;
        if core.timer_at_ms != 0 && core.timer_at_ms <= at {
            return None;
        }
        core.timer_at_ms = at;
        Some(at)
    }

    /// Changes how long the stream keeps its messages, and applies it.
    pub fn set_retention(&self, retention: Retention) {
        let mut core = self.core.lock();
        core.retention = retention;
        core.retain();
    }

    /// Marks the stream deleted and returns its consumers, to be told.
    pub fn delete(&self) -> Vec<ConsumerHandle> {
        let mut core = self.core.lock();
        core.deleted = true;
        core.successors.clear();
        core.readers.drain(..).map(|c| c.consumer).collect()
    }

    /// First half of a group-commit sync of the stream's log and committed offsets.
    pub fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        let mut core = self.core.lock();
        if core.deleted {
            return core.lost_appends.then(|| {
                Err(StoreError::Poisoned(
                    "the stream was deleted with appends not synced".into(),
                ))
            });
        }
        core.sync_asked = false;
        let pending = match core.log.begin_sync() {
            Ok(pending) => pending,
            Err(e) => return Some(Err(e)),
        };
        let dir = core.log.dir().to_path_buf();
        Some(match core.offsets.begin_sync() {
            Ok(None) => Ok(pending),
            Ok(Some((file, with_dir))) => Ok(pending.with_file(file, with_dir.then_some(dir))),
            Err(e) => {
                // The messages' sync goes ahead; the offsets are written by the next.
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write stream offsets");
                Ok(pending)
            }
        })
    }

    /// Second half: on success what the sync covered becomes readable, consumers
    /// waiting for it are served and retention runs; false if the appends are not
    /// durable.
    pub fn complete_sync(&self, pending: PendingSync, result: &Result<(), StoreError>) -> bool {
        let (grew, durable) = {
            let mut core = self.core.lock();
            let before = core.log.readable_end();
            if let Err(error) = core.offsets.complete_sync(result.is_ok()) {
                tracing::warn!(dir = %core.log.dir().display(), %error, "cannot remove old stream offsets yet");
            }
            match core.log.complete_sync(pending, result) {
                Ok(end) => {
                    core.retain();
                    (end > before, true)
                }
                Err(error) => {
                    tracing::error!(dir = %core.log.dir().display(), %error, "stream sync failed");
                    (false, false)
                }
            }
        };
        if grew {
            self.wake_readers();
        }
        durable
    }

    /// Has the queue's timer come for a retry of failed reads.
    fn arm_retry(&self) {
        if let Some(queue) = self.queue.upgrade() {
            queue.arm_stream_timer();
        }
    }

    /// Wakes the connections of consumers that may have something to read now, once
    /// each, to dispatch from their own tasks.
    fn wake_readers(&self) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        let core = self.core.lock();
        let mut woken: Vec<&Arc<super::Mailbox>> = Vec::new();
        for cursor in &core.readers {
            let mailbox = &cursor.consumer.mailbox;
            if !cursor.stopped
                && cursor.pending.is_empty()
                && cursor.consumer.credit.has_room()
                && !woken.iter().any(|m| Arc::ptr_eq(m, mailbox))
            {
                mailbox.push(Outgoing::Wake {
                    queue: Arc::clone(&queue),
                });
                woken.push(mailbox);
            }
        }
    }

    /// Bytes of messages the stream holds in memory (appended, not yet written).
    pub fn buffered_bytes(&self) -> u64 {
        self.core.lock().log.buffered_bytes()
    }

    /// For a stream whose deletion could not be stored: makes what was appended
    /// durable now, since the stored stream comes back at a restart; if that fails,
    /// no later sync reports anything durable.
    pub fn sync_abandoned(&self) {
        let mut core = self.core.lock();
        // Deleted under the same lock: no append may slip in after the sync.
        core.deleted = true;
        let result = core.log.begin_sync().and_then(|pending| {
            let result = pending.run();
            core.log.complete_sync(pending, &result).map(|_| ())
        });
        if let Err(error) = result {
            tracing::error!(dir = %core.log.dir().display(), %error, "cannot sync a stream whose deletion is not stored");
            core.lost_appends = true;
        }
    }
}

impl SyncTarget for Stream {
    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        Stream::begin_sync(self)
    }

    fn complete_sync(&self, pending: PendingSync, result: &Result<(), StoreError>) -> bool {
        Stream::complete_sync(self, pending, result)
    }
}

impl Core {
    /// The tracked cursor of the consumer whose credit is `credit`, if any.
    fn tracked_by(&self, credit: &Arc<Credit>) -> Option<usize> {
        self.readers
            .iter()
            .position(|c| c.tracked.is_some() && Arc::ptr_eq(&c.consumer.credit, credit))
    }

    /// After tracked cursor `at`'s unsettled deliveries changed: stores its committed
    /// offset, and a stopped one with nothing left unsettled makes way for its
    /// successor. Returns whether a commit must be asked for.
    fn settle_tracked(&mut self, at: usize) -> bool {
        let finished = self.readers[at].stopped && self.readers[at].outstanding_is_empty();
        let mut ask = self.commit_offset(at);
        if finished {
            let gone = self.readers.remove(at);
            ask |= self.hand_on(&gone);
        }
        ask
    }

    /// The cursor tracking under `key`, if any.
    fn tracking(&self, key: &str) -> Option<usize> {
        self.readers
            .iter()
            .position(|c| c.tracked.as_ref().is_some_and(|(k, _)| k == key))
    }

    /// Adds a cursor for `reader` at its start, or a tracked one's committed offset;
    /// returns whether a commit must be asked for to make that start durable.
    fn attach(&mut self, reader: Reader, track: Option<String>) -> Result<bool, AddError> {
        // Age retention runs at commits; an idle stream catches up here.
        self.retain();
        let resume = track.as_deref().and_then(|key| self.offsets.get(key));
        let start = resume.map_or(reader.start, StreamStart::Offset);
        let log = &self.log;
        let next = match start {
            StreamStart::First => log.first_offset(),
            StreamStart::Last => log.last_chunk_offset(),
            // The readable end: a committed offset stored from here never names a
            // message that a crash could take back.
            StreamStart::Next => log.readable_end(),
            StreamStart::Offset(offset) => offset.max(log.first_offset()),
            StreamStart::Timestamp(ms) => log.offset_at_time(ms)?,
        };
        self.readers.push(Cursor {
            consumer: reader.consumer,
            next,
            at: log.seek(next)?,
            reader: log.reader(),
            pending: VecDeque::new(),
            seek_pending: next >= log.end_offset(),
            filter: reader.filter,
            tracked: track.map(|key| (key, BTreeSet::new())),
            stopped: false,
        });
        Ok(self.commit_offset(self.readers.len() - 1))
    }

    /// Stores the committed offset of the tracked cursor `at`; returns whether a
    /// commit must be asked for (none is pending yet).
    fn commit_offset(&mut self, at: usize) -> bool {
        let Some((key, offset)) = self.readers[at].committed() else {
            return false;
        };
        if !self.offsets.set(key, offset) || self.sync_asked {
            return false;
        }
        self.sync_asked = true;
        true
    }

    /// A tracked cursor is gone: the reader waiting for its key, if any, attaches.
    /// Returns whether a commit must be asked for.
    fn hand_on(&mut self, gone: &Cursor) -> bool {
        if gone.tracked.is_none() {
            return false;
        }
        self.attach_successors()
    }

    /// Attaches every waiting reader whose key nobody reads under any more. One whose
    /// start cannot be found in the log keeps waiting, for the timer's retry. Returns
    /// whether a commit must be asked for.
    fn attach_successors(&mut self) -> bool {
        let mut ask = false;
        let mut at = 0;
        while at < self.successors.len() {
            if self.tracking(&self.successors[at].0).is_some() {
                at += 1;
                continue;
            }
            let (key, reader) = self.successors.remove(at);
            match self.attach(reader.clone(), Some(key.clone())) {
                Ok(a) => ask |= a,
                Err(error) => {
                    tracing::error!(dir = %self.log.dir().display(), %error, "cannot start a group member's reading of a stream partition; retrying");
                    self.successors.insert(at, (key, reader));
                    self.retry_unarmed |= !self.retry_due;
                    self.retry_due = true;
                    at += 1;
                }
            }
        }
        ask
    }

    /// Drops whole segments retention no longer keeps.
    fn retain(&mut self) {
        let Retention {
            max_bytes,
            max_age_ms,
        } = self.retention;
        if max_bytes.is_none() && max_age_ms.is_none() {
            return;
        }
        if let Err(error) = self.log.apply_retention(max_bytes, max_age_ms, now_ms()) {
            tracing::warn!(dir = %self.log.dir().display(), %error, "cannot drop a stream segment yet; retried at the next commit");
        }
    }
}

impl Cursor {
    /// Delivers nothing more; what it read ahead is dropped, to be read again from
    /// `next` should it go on (a partition given back to its member before it drained).
    fn stop(&mut self) {
        self.stopped = true;
        self.pending.clear();
        self.seek_pending = true;
    }

    /// Whether every delivery made to it is settled.
    fn outstanding_is_empty(&self) -> bool {
        self.tracked.as_ref().is_none_or(|(_, o)| o.is_empty())
    }

    /// Hands the consumer what it has credit and room for.
    fn serve(
        &mut self,
        queue: &Arc<Queue>,
        log: &StreamLog,
        partition: u16,
        budget: &mut usize,
    ) -> Result<(), StoreError> {
        if self.stopped {
            return Ok(());
        }
        let credit = self.consumer.credit.clone();
        let credit = &credit;
        loop {
            if self.pending.is_empty() {
                match self.fill(log, budget)? {
                    Fill::Some => {}
                    Fill::Nothing => return Ok(()),
                    Fill::OutOfBudget => {
                        // The rest on the connection's next turn.
                        self.consumer.mailbox.push(Outgoing::Wake {
                            queue: Arc::clone(queue),
                        });
                        return Ok(());
                    }
                }
            }
            if !credit.has_room() {
                return Ok(());
            }
            if !self.consumer.mailbox.has_room() {
                if self.consumer.mailbox.stall(queue, credit) {
                    continue;
                }
                return Ok(());
            }
            if !credit.try_acquire() {
                return Ok(());
            }
            let Some(entry) = self.pending.pop_front() else {
                credit.release(1);
                return Ok(());
            };
            self.next = entry.offset + 1;
            if let Some((_, outstanding)) = self.tracked.as_mut() {
                outstanding.insert(entry.offset);
            }
            credit.handed();
            self.consumer.mailbox.push(Outgoing::Deliver {
                channel: self.consumer.channel,
                consumer: self.consumer.id,
                queue: Arc::clone(queue),
                credit: credit.clone(),
                message: delivery(entry, partition),
            });
        }
    }

    /// Reads the next chunk with entries at or after `next` into `pending`, reading at
    /// most `budget` chunks.
    fn fill(&mut self, log: &StreamLog, budget: &mut usize) -> Result<Fill, StoreError> {
        let mut lost = 0;
        while self.next < log.readable_end() {
            if self.seek_pending {
                self.at = log.seek(self.next)?;
                self.seek_pending = false;
            }
            if *budget == 0 {
                return Ok(Fill::OutOfBudget);
            }
            *budget -= 1;
            match self.reader.read(self.at, log.readable_end())? {
                Read::Chunk(chunk) => {
                    self.at = chunk.next;
                    let filter = &self.filter;
                    let skip = !filter.values.is_empty()
                        && !chunk
                            .body
                            .may_match(&filter.values, filter.match_unfiltered);
                    let entries = chunk.body.entries().take(if skip { 0 } else { usize::MAX });
                    for entry in entries {
                        match entry {
                            Ok(entry)
                                if entry.offset >= self.next
                                    && filter.passes(entry.filter_value.as_deref()) =>
                            {
                                self.pending.push_back(entry);
                            }
                            Ok(_) => {}
                            Err(detail) => {
                                tracing::error!(dir = %log.dir().display(), detail, "a damaged stream entry ends its chunk");
                                break;
                            }
                        }
                    }
                    self.next = self.next.max(chunk.body.info.first_offset);
                    if !self.pending.is_empty() {
                        return Ok(Fill::Some);
                    }
                    self.next = self.next.max(chunk.body.info.end_offset());
                }
                Read::End => return Ok(Fill::Nothing),
                Read::Lost => {
                    // Retention took the segment, or the chunk is damaged: find the
                    // offset again, past the damage if it is there again.
                    lost += 1;
                    let again = log.seek(self.next.max(log.first_offset()))?;
                    let (at, from) = if again == self.at || lost > 1 {
                        // Past the damage for good: never back before what follows it.
                        log.seek_past(self.at)?
                    } else {
                        (again, self.next)
                    };
                    self.at = at;
                    self.next = self.next.max(from).max(log.first_offset());
                    if lost > 16 {
                        return Err(StoreError::Corrupt {
                            path: log.dir().to_path_buf(),
                            offset: self.next,
                            detail: "no readable chunk found for this offset".into(),
                        });
                    }
                }
            }
        }
        Ok(Fill::Nothing)
    }
}

/// Where a dispatch over `count` readers starts, moving `next` on for the next one.
fn rotate_start(next: &mut usize, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    let start = *next % count;
    *next = start + 1;
    start
}

/// What [`Cursor::fill`] found.
enum Fill {
    /// Entries to deliver.
    Some,
    /// Nothing readable now.
    Nothing,
    /// Its read budget ran out before it found anything.
    OutOfBudget,
}

/// A stream entry as a queue delivers it: redelivered never, its offset the stream's.
fn delivery(entry: StreamEntry, partition: u16) -> QueuedMessage {
    let StreamEntry {
        offset,
        exchange,
        routing_key,
        properties,
        body,
        ..
    } = entry;
    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap_or_default()
    }
    QueuedMessage {
        offset,
        position: None,
        redelivered: false,
        expires_at_ms: 0,
        delivery_count: 0,
        priority: 0,
        partition,
        awaiting_ack: false,
        message: Message::new(text(&exchange), text(&routing_key), &properties, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Credit, Mailbox};
    use crate::store::sim::SimFs;
    use std::path::Path;

    const DIR: &str = "/data/s";

    fn consumer() -> ConsumerHandle {
        ConsumerHandle {
            id: 1,
            channel: 1,
            exclusive: false,
            credit: Arc::new(Credit::new(100, None)),
            mailbox: Arc::new(Mailbox::default()),
            no_ack: false,
            priority: 0,
        }
    }

    /// A log of `n` one-message chunks, synced one by one.
    fn log_of(sim: &SimFs, n: u64) -> StreamLog {
        let mut log = StreamLog::create(sim.shared(), DIR, 1 << 20, 16).expect("create");
        for i in 0..n {
            let body = i.to_be_bytes();
            let record = StreamRecord {
                filter_value: None,
                exchange: "",
                routing_key: "k",
                properties: &[0, 0],
                body: &body,
            };
            log.append(&record, 1).expect("append");
            let pending = log.begin_sync().expect("sync");
            let result = pending.run();
            log.complete_sync(pending, &result).expect("synced");
        }
        log
    }

    /// What a cursor from `from` reads, turn by turn as dispatches would, in at most
    /// `turns` turns; `None` if it has not reached the end by then.
    fn read_all(log: &StreamLog, from: u64, turns: usize) -> Option<Vec<u64>> {
        let mut cursor = Cursor {
            consumer: consumer(),
            next: from,
            at: log.seek(from).expect("seek"),
            reader: log.reader(),
            pending: VecDeque::new(),
            seek_pending: false,
            filter: StreamFilter::default(),
            tracked: None,
            stopped: false,
        };
        let mut got = Vec::new();
        for _ in 0..turns {
            let mut budget = READ_BUDGET;
            match cursor.fill(log, &mut budget) {
                Ok(Fill::Some) => {
                    while let Some(entry) = cursor.pending.pop_front() {
                        got.push(entry.offset);
                        cursor.next = entry.offset + 1;
                    }
                }
                Ok(Fill::OutOfBudget) | Err(_) => {}
                Ok(Fill::Nothing) => return Some(got),
            }
        }
        None
    }

    #[test]
    fn a_damaged_stretch_of_the_log_never_holds_a_reader_back() {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/data"));
        let log = log_of(&sim, 40);
        let segment = Path::new(DIR).join("0000000000.sseg");
        // 20 damaged chunks in a row, more than a read budget, then the newest one.
        for offset in (10..30).chain([39]) {
            let at = log.seek(offset).expect("seek");
            sim.scribble(&segment, at.pos as usize + 8, &[0xff, 0xff]);
        }
        let got = read_all(&log, 0, 50).expect("the reader reaches the end");
        let want: Vec<u64> = (0..10).chain(30..39).collect();
        assert_eq!(got, want);
    }

    /// A log of `chunks` chunks of `n` messages each.
    fn chunks_of(sim: &SimFs, chunks: u64, n: u64) -> StreamLog {
        let mut log = StreamLog::create(sim.shared(), DIR, 1 << 20, 16).expect("create");
        for i in 0..chunks * n {
            let body = i.to_be_bytes();
            let record = StreamRecord {
                filter_value: None,
                exchange: "",
                routing_key: "k",
                properties: &[0, 0],
                body: &body,
            };
            log.append(&record, 1).expect("append");
            if (i + 1) % n == 0 {
                let pending = log.begin_sync().expect("sync");
                let result = pending.run();
                log.complete_sync(pending, &result).expect("synced");
            }
        }
        log
    }

    fn cursor_at(log: &StreamLog, next: u64, tracked: Option<(&str, &[u64])>) -> Cursor {
        Cursor {
            consumer: consumer(),
            next,
            at: log.seek(next).expect("seek"),
            reader: log.reader(),
            pending: VecDeque::new(),
            seek_pending: false,
            filter: StreamFilter::default(),
            tracked: tracked.map(|(k, o)| (k.to_owned(), o.iter().copied().collect())),
            stopped: false,
        }
    }

    #[test]
    fn a_reading_stopped_and_given_back_goes_on_with_the_rest_of_its_chunk() {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/data"));
        let log = chunks_of(&sim, 2, 5);
        let mut cursor = cursor_at(&log, 0, None);
        let mut budget = READ_BUDGET;
        assert!(matches!(cursor.fill(&log, &mut budget), Ok(Fill::Some)));
        for want in 0..2 {
            let entry = cursor.pending.pop_front().expect("an entry");
            assert_eq!(entry.offset, want);
            cursor.next = entry.offset + 1;
        }
        // Its partition moves away, then comes back before it drained.
        cursor.stop();
        cursor.stopped = false;
        let mut got = Vec::new();
        let mut budget = READ_BUDGET;
        while let Ok(Fill::Some) = cursor.fill(&log, &mut budget) {
            while let Some(entry) = cursor.pending.pop_front() {
                got.push(entry.offset);
                cursor.next = entry.offset + 1;
            }
        }
        assert_eq!(got, (2..10).collect::<Vec<u64>>());
    }

    #[test]
    fn deliveries_never_written_hold_the_committed_offset_and_end_a_drain() {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/data"));
        let log = chunks_of(&sim, 1, 6);
        let offsets = StreamOffsets::open(sim.shared(), DIR).expect("offsets");
        let stream = Stream::new(Weak::new(), 0, log, offsets, Retention::default());
        let old = consumer();
        let credit = old.credit.clone();
        {
            let mut core = stream.core.lock();
            // Delivered 0–4; 3 and 4 not settled, and 4 never written at all.
            let mut cursor = cursor_at(&core.log, 5, Some(("g", &[3, 4])));
            cursor.consumer = old;
            cursor.stopped = true;
            core.readers.push(cursor);
            let mut next = consumer();
            next.id = 2;
            next.credit = Arc::new(Credit::new(10, None));
            let reader = Reader {
                consumer: next,
                start: StreamStart::Next,
                filter: StreamFilter::default(),
            };
            core.successors.push(("g".into(), reader));
        }
        let _ = stream.given_back(&credit, 4);
        let at = stream.position_of("g");
        assert_eq!((at.committed, at.reader, at.unsettled), (Some(3), None, 1));
        // 3 settled, the drain ends: the successor starts at 4, never written before.
        let _ = stream.settled(&credit, &[3]);
        let at = stream.position_of("g");
        assert_eq!((at.committed, at.reader), (Some(4), Some(2)));
        let core = stream.core.lock();
        assert_eq!(core.readers.len(), 1);
        assert_eq!(core.readers[0].next, 4);
    }

    #[test]
    fn a_successor_that_cannot_start_is_retried_by_the_timer() {
        use crate::store::sim::{Fault, Op};
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/data"));
        let log = chunks_of(&sim, 1, 6);
        let offsets = StreamOffsets::open(sim.shared(), DIR).expect("offsets");
        let stream = Stream::new(Weak::new(), 0, log, offsets, Retention::default());
        let old = consumer();
        let credit = old.credit.clone();
        {
            let mut core = stream.core.lock();
            let mut cursor = cursor_at(&core.log, 4, Some(("g", &[3])));
            cursor.consumer = old;
            core.readers.push(cursor);
        }
        let mut next = consumer();
        next.id = 2;
        let reader = Reader {
            consumer: next,
            start: StreamStart::Next,
            filter: StreamFilter::default(),
        };
        assert!(matches!(stream.assign("g", Some(reader)), Ok(false)));
        // Its start is looked up in the index, which cannot be read for now.
        sim.inject(Fault {
            op: Op::Read,
            path: "sidx".into(),
            skip: 0,
            times: usize::MAX,
            errno: rustix::io::Errno::IO.raw_os_error(),
            torn: false,
        });
        let _ = stream.settled(&credit, &[3]);
        assert_eq!(stream.position_of("g").reader, None);
        assert!(stream.next_wake(0).is_some(), "a retry is due");
        sim.clear_faults();
        let _ = stream.on_timer();
        let at = stream.position_of("g");
        assert_eq!((at.committed, at.reader), (Some(4), Some(2)));
    }
}
