//! One AMQP channel: content being assembled, consumers, unacknowledged deliveries,
//! prefetch, and confirm and transaction modes. Methods arrive through one dispatch
//! `match` ([`Channel::handle_method`]); each class's handlers live in their own file.

mod authz;
mod basic;
mod declare;
mod delivery;
mod publish;

use std::collections::VecDeque;
use std::sync::Arc;

use amqp_codec::amq_protocol::protocol::{AMQPClass, channel as ch, confirm, tx};
use amqp_codec::{ContentAssembler, ContentHeader, Method, ReplyCode, ShortStr, encode};
use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, Grant};
use crate::error::{self, AmqpError, AmqpResult};
use crate::exchange::Routed;
use crate::message::QueuedMessage;
use crate::queue::{ConnectionId, ConsumerId, Effects, Limit, Mailbox, Queue};
use crate::store::SyncTarget;
use crate::vhost::VHost;

pub use delivery::{GroupNotice, Unacked, not_written};
use publish::Publication;

/// Ready messages from which a queue a batch published to counts towards the
/// connection's flow control: below it the queue keeps up.
pub const BACKLOG_NOTED: u64 = 16;

/// What a channel's handlers need from their connection, borrowed for one call.
pub struct Context<'a> {
    /// The broker.
    pub broker: &'a Broker,
    /// The vhost the connection opened.
    pub vhost: &'a VHost,
    /// This connection's id (owner of exclusive queues).
    pub connection: ConnectionId,
    /// The connection's output buffer, flushed after the current batch.
    pub out: &'a mut BytesMut,
    /// Negotiated frame_max, for splitting bodies.
    pub frame_max: u32,
    /// Where queues deliver to this connection's consumers.
    pub mailbox: &'a Arc<Mailbox>,
    /// Exclusive queues this connection declared, deleted when it closes.
    pub exclusive_queues: &'a mut Vec<Arc<Queue>>,
    /// Scratch space for routing results.
    pub routed: &'a mut Routed,
    /// Queues whose consumers regained credit; kicked once after the batch.
    pub kicks: &'a mut Vec<Arc<Queue>>,
    /// What queue operations in this batch left to do (dead letters, expiries): the
    /// connection has the vhost carry it out after the batch, with no lock held.
    pub effects: &'a mut Effects,
    /// Channels with publisher confirms to send after the batch.
    pub confirms_due: &'a mut Vec<u16>,
    /// Channels whose `tx.commit` waits for this batch's group commit.
    pub tx_commits_due: &'a mut Vec<u16>,
    /// Logs (of queues, or of partitions) that took persistent messages in this batch:
    /// one group commit after the batch makes them durable, and confirms wait for it.
    pub commits: &'a mut Vec<Arc<dyn SyncTarget>>,
    /// Whether the client handles a server-sent `basic.cancel`.
    pub cancel_notify: bool,
    /// The authenticated user and what it may do in the vhost (publishes may only
    /// claim its name as `user-id`).
    pub grant: &'a mut Grant,
    /// When the current batch started: the time deliveries in it are stamped with.
    pub now: std::time::Instant,
    /// Set when the batch published a message (a resource alarm then blocks the
    /// connection).
    pub published: &'a mut bool,
    /// Queues this batch published to that hold a backlog for their consumers, for the
    /// connection's flow control (duplicates possible, consecutive ones left out).
    pub backlogged: &'a mut Vec<Arc<Queue>>,
}

impl Context<'_> {
    /// Writes a method frame.
    pub fn send(&mut self, channel: u16, method: AMQPClass) {
        encode::method(self.out, channel, &method);
    }

    /// Notes that this batch published to `queue`, if it holds a backlog for its
    /// consumers (at least [`BACKLOG_NOTED`] ready messages).
    pub fn note_backlog(&mut self, queue: &Arc<Queue>) {
        if queue.flow().ready() >= BACKLOG_NOTED
            && !self
                .backlogged
                .last()
                .is_some_and(|q| Arc::ptr_eq(q, queue))
        {
            self.backlogged.push(queue.clone());
        }
    }

    /// Schedules a group commit after this batch (once per batch) of the log of
    /// `queue` (of its partition `partition`) that took a message.
    pub fn commit_later(&mut self, queue: &Arc<Queue>, partition: u16) {
        let at = queue.sync_target_addr(partition);
        if !self
            .commits
            .iter()
            .any(|t| std::ptr::eq(Arc::as_ptr(t).cast::<()>(), at))
        {
            self.commits.push(queue.sync_target(partition));
        }
    }

    /// Schedules `queue` for dispatch after this batch (once, however often asked).
    pub fn kick_later(&mut self, queue: &Arc<Queue>) {
        if !self.kicks.iter().any(|q| Arc::ptr_eq(q, queue)) {
            self.kicks.push(queue.clone());
        }
    }
}

/// A consumer as its channel knows it.
#[derive(Debug)]
struct ChannelConsumer {
    id: ConsumerId,
    tag: ShortStr,
    queue: Arc<Queue>,
    no_ack: bool,
    /// Acknowledgement timeout of its deliveries in milliseconds (0: none).
    timeout_ms: u64,
}

/// Publisher-confirm counters: every publish gets the next sequence number; confirms are
/// scheduled per batch and sent once the batch is durable.
#[derive(Debug, Default)]
struct ConfirmState {
    published: u64,
    scheduled: u64,
    confirmed: u64,
    /// Sequence numbers refused by a full queue, ascending: nacked, not acked.
    rejected: VecDeque<u64>,
}

/// Work held back by `tx.select` until `tx.commit`.
#[derive(Debug, Default)]
struct TxState {
    /// Held publishes, each with the queues it was routed to when published.
    publishes: Vec<(Publication, Vec<Arc<Queue>>)>,
    settlements: Vec<(Vec<Unacked>, Settlement)>,
}

/// What to do with acknowledged deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    Ack,
    Reject { requeue: bool },
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    id: u16,
    closing: bool,
    assembler: ContentAssembler,
    consumers: Vec<ChannelConsumer>,
    unacked: VecDeque<Unacked>,
    next_tag: u64,
    prefetch: u16,
    channel_limit: Arc<Limit>,
    confirm: Option<ConfirmState>,
    tx: Option<TxState>,
    /// A `tx.commit` waits for the group commit of its persistent messages; until its
    /// `commit-ok` is sent, further methods are refused, as RabbitMQ refuses them.
    committing: bool,
    last_queue: Option<ShortStr>,
    /// The exchange a publish was last allowed to, at which epoch of the broker's
    /// permissions: the next publish there at that epoch needs no check.
    allowed_publish: Option<(ShortStr, u64)>,
    max_message_size: u64,
    /// The private queue of this channel's direct reply-to consumer.
    reply_queue: Option<Arc<Queue>>,
    /// Its entry in the broker's registry (for the management API).
    entry: Arc<crate::registry::ChannelEntry>,
    /// What it counted since it opened.
    tally: crate::stats::Tally,
    /// What of that the broker's and the vhost's counters already hold.
    flushed: crate::stats::Tally,
    /// Publishes counted for the exchange last published to, not yet added to its
    /// counters.
    exchange_tally: crate::stats::ExchangeTally,
}

impl Channel {
    /// A newly opened channel, shown in the registry by `entry`.
    pub fn new(id: u16, max_message_size: u64, entry: Arc<crate::registry::ChannelEntry>) -> Self {
        Self {
            id,
            closing: false,
            assembler: ContentAssembler::default(),
            consumers: Vec::new(),
            unacked: VecDeque::new(),
            next_tag: 0,
            prefetch: 0,
            channel_limit: Arc::new(Limit::new(0)),
            confirm: None,
            tx: None,
            committing: false,
            last_queue: None,
            allowed_publish: None,
            max_message_size,
            reply_queue: None,
            entry,
            tally: crate::stats::Tally::default(),
            flushed: crate::stats::Tally::default(),
            exchange_tally: crate::stats::ExchangeTally::default(),
        }
    }

    /// Brings the channel's registry entry up to date, and adds what it counted since
    /// its last batch to the broker's, its vhost's and the exchange's counters (after
    /// each batch).
    pub fn show(&mut self, broker: &crate::stats::MessageCounters, vhost: &VHost) {
        if let Some((publish_in, publish_out)) = self.exchange_tally.take() {
            vhost.count_exchange(&self.exchange_tally.exchange, publish_in, publish_out);
        }
        if self.tally != self.flushed {
            broker.add(&self.flushed, &self.tally);
            vhost.message_counters().add(&self.flushed, &self.tally);
            self.entry.messages.store(&self.tally);
            self.flushed = self.tally;
        }
        use crate::registry::ChannelEntry;
        use std::sync::atomic::Ordering::Relaxed;
        let entry = &self.entry;
        ChannelEntry::set(&entry.prefetch, usize::from(self.prefetch));
        ChannelEntry::set(&entry.global_prefetch, self.channel_limit.limit() as usize);
        ChannelEntry::set(&entry.unacked, self.unacked.len());
        let unconfirmed = self
            .confirm
            .as_ref()
            .map_or(0, |c| c.published.saturating_sub(c.confirmed));
        ChannelEntry::set(
            &entry.unconfirmed,
            usize::try_from(unconfirmed).unwrap_or(usize::MAX),
        );
        entry.confirm.store(self.confirm.is_some(), Relaxed);
        entry.transactional.store(self.tx.is_some(), Relaxed);
    }

    /// The channel's number.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Whether the server sent `channel.close` and awaits `close-ok`.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Handles a method frame.
    ///
    /// # Errors
    /// The AMQP error to close the channel (soft code) or connection (hard code) with.
    pub fn handle_method(&mut self, ctx: &mut Context<'_>, method: Method) -> AmqpResult<()> {
        let (class_id, method_id) = method.ids();
        self.dispatch(ctx, method).map_err(|e| {
            if e.class_id == 0 {
                e.for_method(class_id, method_id)
            } else {
                e
            }
        })
    }

    fn dispatch(&mut self, ctx: &mut Context<'_>, method: Method) -> AmqpResult<()> {
        if self.committing {
            return Err(error::channel_error(
                "unexpected command while processing 'tx.commit'",
            ));
        }
        let class = match method {
            Method::Publish(publish) => {
                if publish.immediate {
                    return Err(error::not_implemented("immediate=true"));
                }
                return self.assembler.start(publish);
            }
            Method::Other(class) => *class,
        };
        self.assembler.expect_method()?;
        match class {
            AMQPClass::Channel(ch::AMQPMethod::Flow(flow)) => {
                if !flow.active {
                    return Err(error::not_implemented("active=false"));
                }
                ctx.send(
                    self.id,
                    AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk { active: true })),
                );
                Ok(())
            }
            AMQPClass::Channel(ch::AMQPMethod::Open(_)) => {
                Err(error::channel_error("second 'channel.open' seen"))
            }
            AMQPClass::Access(_) => {
                ctx.send(
                    self.id,
                    AMQPClass::Access(
                        amqp_codec::amq_protocol::protocol::access::AMQPMethod::RequestOk(
                            amqp_codec::amq_protocol::protocol::access::RequestOk {},
                        ),
                    ),
                );
                Ok(())
            }
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m),
            AMQPClass::Queue(m) => self.queue_method(ctx, m),
            AMQPClass::Basic(m) => self.basic_method(ctx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(error::precondition("cannot switch from tx to confirm mode"));
                }
                self.confirm.get_or_insert_with(ConfirmState::default);
                if !select.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            _ => Err(error::unimplemented_method()),
        }
    }

    /// Handles a content header frame.
    ///
    /// # Errors
    /// 505 out of order, 406 for a body above the size limit.
    pub fn handle_header(
        &mut self,
        ctx: &mut Context<'_>,
        header: ContentHeader,
    ) -> AmqpResult<()> {
        if header.body_size > self.max_message_size {
            self.assembler.reset();
            return Err(error::precondition(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, self.max_message_size
            ))
            .for_method(60, 40));
        }
        match self.assembler.header(header)? {
            Some(content) => self.on_content(ctx, content).map_err(for_publish),
            None => Ok(()),
        }
    }

    /// Handles a content body frame.
    ///
    /// # Errors
    /// 505 out of order, 501 if the body overruns its declared size.
    pub fn handle_body(&mut self, ctx: &mut Context<'_>, payload: Bytes) -> AmqpResult<()> {
        match self.assembler.body(payload)? {
            Some(content) => self.on_content(ctx, content).map_err(for_publish),
            None => Ok(()),
        }
    }

    fn tx_method(&mut self, ctx: &mut Context<'_>, method: tx::AMQPMethod) -> AmqpResult<()> {
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirm.is_some() {
                    return Err(error::precondition("cannot switch from confirm to tx mode"));
                }
                self.tx.get_or_insert_with(TxState::default);
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(error::precondition("channel is not transactional"));
                };
                let mut logged = false;
                for (publication, queues) in state.publishes {
                    match self.enqueue_routed(ctx, publication, &queues) {
                        Ok(l) => logged |= l,
                        Err(e) => {
                            // The acks the transaction held are not applied: they are
                            // outstanding again, and go back to their queues when the
                            // channel closes.
                            for (entries, _) in state.settlements {
                                self.restore_unacked(entries);
                            }
                            return Err(e);
                        }
                    }
                }
                for (entries, settlement) in state.settlements {
                    self.settle(ctx, entries, settlement);
                }
                if logged {
                    // commit-ok once the group commit after this batch reports back.
                    self.committing = true;
                    ctx.tx_commits_due.push(self.id);
                } else {
                    ctx.send(
                        self.id,
                        AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    );
                }
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(state) = self.tx.replace(TxState::default()) else {
                    return Err(error::precondition("channel is not transactional"));
                };
                for (entries, _) in state.settlements {
                    self.restore_unacked(entries);
                }
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(error::unimplemented_method()),
        }
    }

    /// Releases everything the channel holds: consumers are cancelled (auto-delete
    /// queues that lose their last one go), unacked deliveries are requeued in order.
    pub fn close_resources(&mut self, ctx: &mut Context<'_>) {
        for consumer in std::mem::take(&mut self.consumers) {
            self.forget_consumer(ctx, &consumer, true);
        }
        let unacked: Vec<Unacked> = self.unacked.drain(..).collect();
        self.release_unsettled(ctx, unacked);
        if let Some(state) = self.tx.take() {
            for (entries, _) in state.settlements {
                self.release_unsettled(ctx, entries);
            }
        }
        self.assembler.reset();
    }

    /// Marks the channel as closed by the server: frames other than close/close-ok are
    /// ignored from now on.
    pub fn mark_closing(&mut self) {
        self.closing = true;
    }

    /// Whether a `tx.commit` awaits the group commit of its messages.
    pub fn is_committing(&self) -> bool {
        self.committing
    }

    /// Ends a `tx.commit` that waited for the group commit: `commit-ok` if its messages
    /// are durable, else RabbitMQ's error for a transaction that did not complete.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED `partial tx completion` (closes the channel).
    pub fn complete_commit(&mut self, out: &mut BytesMut, durable: bool) -> AmqpResult<()> {
        if !std::mem::take(&mut self.committing) || self.closing {
            return Ok(());
        }
        if !durable {
            return Err(error::precondition("partial tx completion").for_method(90, 20));
        }
        encode::method(
            out,
            self.id,
            &AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(())
    }

    /// Closes the current batch of publishes for confirms; returns the sequence number
    /// the batch's confirm will cover.
    pub fn schedule_confirms(&mut self) -> Option<u64> {
        let confirm = self.confirm.as_mut()?;
        confirm.scheduled = confirm.published;
        Some(confirm.published)
    }

    /// Confirms publishes up to `upto`: one `basic.ack` (or `basic.nack` when they could
    /// not be made durable), `multiple` when it covers several.
    pub fn send_confirms(&mut self, out: &mut BytesMut, upto: u64, durable: bool) {
        if self.closing {
            return;
        }
        let Some(confirm) = &mut self.confirm else {
            return;
        };
        let before = confirm.confirmed.min(upto);
        let channel = self.id;
        let mut settle = |from: u64, to: u64, ok: bool| {
            if to >= from {
                if ok {
                    encode::ack(out, channel, to, to > from);
                } else {
                    encode::nack(out, channel, to, to > from);
                }
            }
        };
        while let Some(&refused) = confirm.rejected.front().filter(|&&n| n <= upto) {
            confirm.rejected.pop_front();
            settle(confirm.confirmed + 1, refused - 1, durable);
            settle(refused, refused, false);
            confirm.confirmed = refused;
        }
        if upto > confirm.confirmed {
            settle(confirm.confirmed + 1, upto, durable);
            confirm.confirmed = upto;
        }
        self.tally.confirm += upto.saturating_sub(before);
    }

    fn resolve_queue_name(&self, name: &ShortStr) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::new(ReplyCode::NotFound, "no previously declared queue"))
    }
}

/// Errors raised by a completed publish name `basic.publish`, as RabbitMQ's do.
fn for_publish(error: AmqpError) -> AmqpError {
    if error.class_id == 0 {
        error.for_method(60, 40)
    } else {
        error
    }
}

/// Requeues a run of deliveries to their queues, one call per queue.
pub fn requeue_all(
    entries: impl IntoIterator<Item = (Arc<Queue>, QueuedMessage)>,
    effects: &mut Effects,
) {
    per_queue(entries, |queue, batch| queue.requeue(batch, effects));
}

/// Gives back deliveries a connection never wrote (their consumer or channel went
/// first), unflagged, one call per queue.
pub fn give_back_all(
    entries: impl IntoIterator<Item = (Arc<Queue>, QueuedMessage)>,
    effects: &mut Effects,
) {
    per_queue(entries, |queue, batch| queue.give_back(batch, effects));
}

/// Settles a run of acked deliveries with their queues, one call per queue.
pub fn settle_all(entries: impl IntoIterator<Item = (Arc<Queue>, QueuedMessage)>) {
    per_queue(entries, |queue, batch| queue.settle(batch));
}

/// Rejects a run of deliveries without requeueing (dead-lettering them where the queue
/// says so), one call per queue.
pub fn reject_all(
    entries: impl IntoIterator<Item = (Arc<Queue>, QueuedMessage)>,
    effects: &mut Effects,
) {
    per_queue(entries, |queue, batch| queue.reject(batch, effects));
}

/// Hands consecutive messages of the same queue to `apply` together.
fn per_queue(
    entries: impl IntoIterator<Item = (Arc<Queue>, QueuedMessage)>,
    mut apply: impl FnMut(&Arc<Queue>, Vec<QueuedMessage>),
) {
    let mut current: Option<(Arc<Queue>, Vec<QueuedMessage>)> = None;
    for (queue, message) in entries {
        match &mut current {
            Some((q, batch)) if Arc::ptr_eq(q, &queue) => batch.push(message),
            _ => {
                if let Some((q, batch)) = current.take() {
                    apply(&q, batch);
                }
                current = Some((queue, vec![message]));
            }
        }
    }
    if let Some((q, batch)) = current {
        apply(&q, batch);
    }
}
