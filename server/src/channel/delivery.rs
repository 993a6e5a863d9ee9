//! Deliveries in flight on a channel: writing them, tracking them by delivery tag until
//! they are acked, rejected or requeued, and giving credit back to their consumers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, BasicProperties, basic as b};
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use amqp_codec::encode::{self, DeliveryInfo};
use amqp_codec::properties::encode_properties;
use bytes::Bytes;

use super::{Channel, ChannelConsumer, Context, Settlement, reject_all, requeue_all, settle_all};
use crate::error::{self, AmqpError, AmqpResult};
use crate::message::{Message, QueuedMessage};
use crate::queue::{ConsumerId, ConsumerRemoval, Credit, GroupEvent, Queue};

/// A delivery awaiting its acknowledgement.
#[derive(Debug)]
pub struct Unacked {
    /// Channel-scoped delivery tag.
    pub tag: u64,
    /// Credit to give back when settled (none for `basic.get`).
    pub credit: Option<Arc<Credit>>,
    /// Queue it came from.
    pub queue: Arc<Queue>,
    /// The message.
    pub message: QueuedMessage,
    /// When it must be acknowledged by, and the timeout that set it (consumer timeout).
    pub deadline: Option<(Instant, u64)>,
    /// A group event's control delivery: settling it only removes it.
    pub control: bool,
}

/// A group event to tell a consumer (see [`Outgoing::GroupEvent`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupNotice<'a> {
    /// What happened.
    pub event: GroupEvent,
    /// To which partition.
    pub partition: u16,
    /// The group's name, if it has one.
    pub group: Option<&'a str>,
}

/// Settled deliveries of one stream consumer in one partition, in a row: the queue,
/// the consumer's credit, the partition and the offsets.
type StreamRun<'a> = (&'a Arc<Queue>, &'a Arc<Credit>, u16, Vec<u64>);

/// Writes one delivery (method, header and body frames) into the output buffer.
pub(super) fn write_delivery(
    ctx: &mut Context<'_>,
    channel: u16,
    consumer_tag: &str,
    tag: u64,
    queue: &Queue,
    message: &QueuedMessage,
) {
    encode::deliver(
        ctx.out,
        channel,
        consumer_tag,
        DeliveryInfo {
            delivery_tag: tag,
            redelivered: message.redelivered,
            exchange: message.message.exchange(),
            routing_key: message.message.routing_key(),
        },
    );
    content(ctx, channel, queue, message);
}

/// Writes a delivered message's content frames: from a partitioned queue, with its
/// partition in an `x-partition` header; from a stream, with its offset in an
/// `x-stream-offset` header (and its partition, if the stream is partitioned).
fn content(ctx: &mut Context<'_>, channel: u16, queue: &Queue, message: &QueuedMessage) {
    let properties = message.message.raw_properties();
    let body = message.message.body();
    let offset =
        encode::Annotation::stream_offset(i64::try_from(message.offset).unwrap_or(i64::MAX));
    let partition = encode::Annotation::partition(i64::from(message.partition));
    let annotations: &[encode::Annotation] = match (queue.is_stream(), queue.partitions()) {
        (true, Some(_)) => &[offset, partition],
        (true, None) => &[offset],
        (false, Some(_)) => &[partition],
        (false, None) => &[],
    };
    if annotations.is_empty() {
        encode::content(ctx.out, channel, properties, body, ctx.frame_max);
    } else {
        encode::content_annotated(
            ctx.out,
            channel,
            properties,
            annotations,
            body,
            ctx.frame_max,
        );
    }
}

/// A delivery the connection did not write (its consumer or channel went first): a
/// stream is told at once (no message goes back to it); another queue's is returned,
/// to be given back.
pub fn not_written(
    queue: Arc<Queue>,
    credit: &Arc<Credit>,
    message: QueuedMessage,
) -> Option<(Arc<Queue>, QueuedMessage)> {
    if queue.is_stream() {
        queue.stream_given_back(credit, &message);
        return None;
    }
    Some((queue, message))
}

/// The acknowledgement deadline of a delivery made at `now` under `timeout_ms` (0: none).
fn deadline(now: Instant, timeout_ms: u64) -> Option<(Instant, u64)> {
    (timeout_ms > 0).then(|| (now + Duration::from_millis(timeout_ms), timeout_ms))
}

impl Channel {
    /// The error to close the channel with if a delivery was not acknowledged in time
    /// (RabbitMQ's consumer timeout).
    pub fn ack_timeout(&self, now: Instant) -> Option<AmqpError> {
        let (_, timeout_ms) = self
            .unacked
            .iter()
            .filter_map(|u| u.deadline)
            .find(|(at, _)| *at <= now)?;
        Some(error::precondition(format!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout_ms} ms. \
             This timeout value can be configured, see consumers doc guide to learn more",
            self.id
        )))
    }

    /// Whether deliveries await acknowledgement (so their deadlines need watching).
    pub fn has_unacked(&self) -> bool {
        !self.unacked.is_empty()
    }

    fn take_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Writes a delivery from a queue to one of this channel's consumers. Gives the
    /// message back if the consumer is gone (cancelled or closing), to be requeued.
    pub fn deliver(
        &mut self,
        ctx: &mut Context<'_>,
        consumer: ConsumerId,
        queue: Arc<Queue>,
        credit: Arc<Credit>,
        message: QueuedMessage,
    ) -> Option<(Arc<Queue>, QueuedMessage)> {
        let resume = credit.written();
        let at = self.consumers.iter().position(|c| c.id == consumer);
        let Some(at) = at.filter(|_| !self.closing) else {
            credit.release(1);
            return not_written(queue, &credit, message);
        };
        if resume {
            ctx.kick_later(&queue);
        }
        let tag = self.take_tag();
        let c = &self.consumers[at];
        write_delivery(ctx, self.id, &c.tag, tag, &queue, &message);
        self.tally.delivered(c.no_ack, message.redelivered);
        if c.no_ack {
            credit.release(1);
            ctx.kick_later(&queue);
            if message.position.is_some() || queue.partitions().is_some() {
                // Written: only now may it leave the log (and its partition pass on).
                queue.settle(std::iter::once(message));
            }
        } else {
            let deadline = deadline(ctx.now, c.timeout_ms);
            self.unacked.push_back(Unacked {
                tag,
                credit: Some(credit),
                queue,
                message,
                deadline,
                control: false,
            });
        }
        None
    }

    /// Writes a group event's control delivery to one of this channel's consumers: an
    /// empty message from exchange `""` with the queue's name as routing key and headers
    /// `x-group-event`, `x-partition` and `x-consumer-group`. It takes no credit and
    /// has no deadline; acking, nacking or rejecting it only removes it.
    pub fn group_event(
        &mut self,
        ctx: &mut Context<'_>,
        consumer: ConsumerId,
        queue: Arc<Queue>,
        notice: GroupNotice<'_>,
    ) {
        let Some(c) = self
            .consumers
            .iter()
            .find(|c| c.id == consumer)
            .filter(|_| !self.closing)
        else {
            return;
        };
        let (tag, no_ack) = (c.tag.clone(), c.no_ack);
        let mut headers = FieldTable::default();
        headers.insert(
            "x-group-event".into(),
            AMQPValue::LongString(notice.event.name().into()),
        );
        if let Some(group) = notice.group {
            headers.insert(
                "x-consumer-group".into(),
                AMQPValue::LongString(group.into()),
            );
        }
        let properties = encode_properties(&BasicProperties::default().with_headers(headers));
        let message = QueuedMessage {
            offset: 0,
            position: None,
            redelivered: false,
            expires_at_ms: 0,
            delivery_count: 0,
            priority: 0,
            partition: notice.partition,
            awaiting_ack: false,
            message: Message::new("", queue.name(), &properties, Bytes::new()),
        };
        let delivery_tag = self.take_tag();
        write_delivery(ctx, self.id, &tag, delivery_tag, &queue, &message);
        if !no_ack {
            self.unacked.push_back(Unacked {
                tag: delivery_tag,
                credit: None,
                queue,
                message,
                deadline: None,
                control: true,
            });
        }
    }

    /// Writes a `basic.get-ok` for a message taken from `queue`.
    pub(super) fn deliver_get(
        &mut self,
        ctx: &mut Context<'_>,
        queue: Arc<Queue>,
        message: QueuedMessage,
        message_count: u32,
        no_ack: bool,
    ) {
        self.tally.got(no_ack, message.redelivered);
        let tag = self.take_tag();
        encode::get_ok(
            ctx.out,
            self.id,
            DeliveryInfo {
                delivery_tag: tag,
                redelivered: message.redelivered,
                exchange: message.message.exchange(),
                routing_key: message.message.routing_key(),
            },
            message_count,
        );
        content(ctx, self.id, &queue, &message);
        if !no_ack {
            let timeout = ctx.broker.config().consumer_timeout;
            self.unacked.push_back(Unacked {
                tag,
                credit: None,
                queue,
                message,
                deadline: deadline(ctx.now, timeout),
                control: false,
            });
        }
    }

    /// The server cancelled a consumer (its queue was deleted).
    pub fn consumer_cancelled(&mut self, ctx: &mut Context<'_>, consumer: ConsumerId) {
        let Some(at) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        let c = self.consumers.remove(at);
        if ctx.cancel_notify && !self.closing {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::Cancel(b::Cancel {
                    consumer_tag: c.tag.to_string().into(),
                    nowait: true,
                })),
            );
        }
    }

    /// Removes the deliveries an ack, nack or reject names.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED `unknown delivery tag N` if the tag is not outstanding.
    pub(super) fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        if multiple && tag == 0 {
            return Ok(self.unacked.drain(..).collect());
        }
        let at = self
            .unacked
            .binary_search_by_key(&tag, |u| u.tag)
            .map_err(|_| error::unknown_delivery_tag(tag))?;
        if multiple {
            Ok(self.unacked.drain(..=at).collect())
        } else {
            Ok(self.unacked.remove(at).into_iter().collect())
        }
    }

    /// Puts deliveries back among the unacked (a rolled-back transaction's acks).
    pub(super) fn restore_unacked(&mut self, entries: Vec<Unacked>) {
        for entry in entries {
            let at = self.unacked.partition_point(|u| u.tag < entry.tag);
            self.unacked.insert(at, entry);
        }
    }

    /// Applies an ack or reject: credit goes back to the consumers, requeued messages go
    /// back to their queues, the rest are dropped.
    pub(super) fn settle(
        &mut self,
        ctx: &mut Context<'_>,
        mut entries: Vec<Unacked>,
        settlement: Settlement,
    ) {
        // Group events' control deliveries are only removed.
        entries.retain(|u| !u.control);
        // A stream's consumers settle by offset, a run per consumer and partition (its
        // tracked offset).
        let mut streams: Vec<StreamRun<'_>> = Vec::new();
        for entry in &entries {
            if let Some(credit) = &entry.credit {
                if entry.queue.is_stream() {
                    let (offset, partition) = (entry.message.offset, entry.message.partition);
                    match streams.last_mut() {
                        Some((_, c, p, offsets)) if Arc::ptr_eq(c, credit) && *p == partition => {
                            offsets.push(offset);
                        }
                        _ => streams.push((&entry.queue, credit, partition, vec![offset])),
                    }
                }
                credit.release(1);
                ctx.kick_later(&entry.queue);
            } else if entry.queue.partitions().is_some() {
                // A `basic.get` settled may end a partition's drain.
                ctx.kick_later(&entry.queue);
            }
        }
        // Before the kicks (run after this batch) can deliver more.
        for (queue, credit, partition, offsets) in streams {
            queue.stream_settled(credit, partition, &offsets);
        }
        let entries = entries.into_iter().map(|u| (u.queue, u.message));
        match settlement {
            Settlement::Ack => settle_all(entries),
            Settlement::Reject { requeue: true } => requeue_all(entries, ctx.effects),
            Settlement::Reject { requeue: false } => reject_all(entries, ctx.effects),
        }
    }

    /// What a closing channel never settled: requeued, except that deliveries from
    /// streams do not count as settled for tracked offsets (the next reader gets
    /// them again); a reader stopped for them makes way.
    pub(super) fn release_unsettled(&mut self, ctx: &mut Context<'_>, entries: Vec<Unacked>) {
        let (streams, rest): (Vec<Unacked>, Vec<Unacked>) = entries
            .into_iter()
            .partition(|u| u.queue.is_stream() && u.credit.is_some());
        let mut seen: Vec<(&Arc<Queue>, &Arc<Credit>)> = Vec::new();
        for entry in &streams {
            if let Some(credit) = &entry.credit
                && !seen
                    .iter()
                    .any(|(q, c)| Arc::ptr_eq(q, &entry.queue) && Arc::ptr_eq(c, credit))
            {
                seen.push((&entry.queue, credit));
            }
        }
        for (queue, credit) in seen {
            queue.stream_abandoned(credit);
            ctx.kick_later(queue);
        }
        self.settle(ctx, rest, Settlement::Reject { requeue: true });
    }

    /// Unregisters a consumer from its queue (`closed`: its channel closed, rather
    /// than a `basic.cancel`), deleting an auto-delete queue it was the
    /// last consumer of, or the direct reply-to queue it consumed.
    pub(super) fn forget_consumer(
        &mut self,
        ctx: &mut Context<'_>,
        consumer: &ChannelConsumer,
        closed: bool,
    ) {
        self.entry.remove_consumer(consumer.id);
        if self
            .reply_queue
            .as_ref()
            .is_some_and(|q| Arc::ptr_eq(q, &consumer.queue))
        {
            self.reply_queue = None;
            ctx.vhost.remove_reply_queue(&consumer.queue);
            return;
        }
        let removal = if closed {
            consumer.queue.close_consumer(consumer.id)
        } else {
            consumer.queue.remove_consumer(consumer.id)
        };
        match removal {
            ConsumerRemoval::RemovedLast => ctx.vhost.remove_queue(&consumer.queue),
            ConsumerRemoval::Removed => ctx.kick_later(&consumer.queue),
            ConsumerRemoval::Unknown => {}
        }
    }
}
