//! The basic class, apart from publishing: prefetch, consumers, `basic.get`, and
//! acknowledgements.

use std::sync::Arc;

use amqp_codec::ShortStr;
use amqp_codec::amq_protocol::protocol::{AMQPClass, basic as b};

use super::authz::Kind;
use super::{Channel, ChannelConsumer, Context, Settlement, Unacked};
use crate::access::permissions::Perm;
use crate::error::{self, AmqpResult};
use crate::names;
use crate::queue::arguments::StreamOffset;
use crate::queue::stream::{Reader, StreamFilter, StreamStart};
use crate::queue::{ConsumerHandle, Credit, Membership, arguments};
use crate::timers::now_ms;

/// Deliveries a `no_ack` consumer may have queued for writing at once: enough to keep
/// the socket busy, bounded so a slow reader cannot make the broker buffer a backlog.
const NO_ACK_WINDOW: u32 = 2000;

impl Channel {
    pub(super) fn basic_method(
        &mut self,
        ctx: &mut Context<'_>,
        method: b::AMQPMethod,
    ) -> AmqpResult<()> {
        match method {
            b::AMQPMethod::Qos(qos) => {
                if qos.global {
                    self.channel_limit.set_limit(u32::from(qos.prefetch_count));
                    for consumer in &self.consumers {
                        ctx.kick_later(&consumer.queue);
                    }
                } else {
                    self.prefetch = qos.prefetch_count;
                }
                ctx.send(self.id, AMQPClass::Basic(b::AMQPMethod::QosOk(b::QosOk {})));
                Ok(())
            }
            b::AMQPMethod::Consume(consume) => self.consume(ctx, consume),
            b::AMQPMethod::Cancel(cancel) => {
                if let Some(at) = self
                    .consumers
                    .iter()
                    .position(|c| &*c.tag == cancel.consumer_tag.as_str())
                {
                    let consumer = self.consumers.remove(at);
                    self.forget_consumer(ctx, &consumer, false);
                }
                if !cancel.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Basic(b::AMQPMethod::CancelOk(b::CancelOk {
                            consumer_tag: cancel.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            b::AMQPMethod::Get(get) => {
                let name = self.resolve_queue_name(&get.queue.as_str().into())?;
                ctx.permit(Perm::Read, Kind::Queue, &name)?;
                let queue = ctx.vhost.queue(&name, ctx.connection)?;
                if queue.is_stream() {
                    return Err(error::stream::get(&name, ctx.vhost.name()));
                }
                match queue.get(get.no_ack, ctx.effects) {
                    Some((message, left)) => {
                        self.deliver_get(ctx, queue, message, left, get.no_ack)
                    }
                    None => {
                        self.tally.get_empty += 1;
                        ctx.send(
                            self.id,
                            AMQPClass::Basic(b::AMQPMethod::GetEmpty(b::GetEmpty {})),
                        );
                    }
                }
                Ok(())
            }
            b::AMQPMethod::Ack(ack) => {
                let entries = self.take_unacked(ack.delivery_tag, ack.multiple)?;
                self.tally.ack += entries.len() as u64;
                self.settle_or_hold(ctx, entries, Settlement::Ack);
                Ok(())
            }
            b::AMQPMethod::Nack(nack) => {
                let entries = self.take_unacked(nack.delivery_tag, nack.multiple)?;
                self.settle_or_hold(
                    ctx,
                    entries,
                    Settlement::Reject {
                        requeue: nack.requeue,
                    },
                );
                Ok(())
            }
            b::AMQPMethod::Reject(reject) => {
                let entries = self.take_unacked(reject.delivery_tag, false)?;
                self.settle_or_hold(
                    ctx,
                    entries,
                    Settlement::Reject {
                        requeue: reject.requeue,
                    },
                );
                Ok(())
            }
            b::AMQPMethod::Recover(b::Recover { requeue: false })
            | b::AMQPMethod::RecoverAsync(b::RecoverAsync { requeue: false }) => {
                Err(error::not_implemented("requeue=false"))
            }
            b::AMQPMethod::Recover(_) => {
                let entries: Vec<Unacked> = self.unacked.drain(..).collect();
                self.settle(ctx, entries, Settlement::Reject { requeue: true });
                ctx.send(
                    self.id,
                    AMQPClass::Basic(b::AMQPMethod::RecoverOk(b::RecoverOk {})),
                );
                Ok(())
            }
            b::AMQPMethod::RecoverAsync(_) => {
                let entries: Vec<Unacked> = self.unacked.drain(..).collect();
                self.settle(ctx, entries, Settlement::Reject { requeue: true });
                Ok(())
            }
            _ => Err(error::unimplemented_method()),
        }
    }

    fn settle_or_hold(
        &mut self,
        ctx: &mut Context<'_>,
        entries: Vec<Unacked>,
        settlement: Settlement,
    ) {
        match &mut self.tx {
            Some(tx) => tx.settlements.push((entries, settlement)),
            None => self.settle(ctx, entries, settlement),
        }
    }

    fn consume(&mut self, ctx: &mut Context<'_>, consume: b::Consume) -> AmqpResult<()> {
        let name = self.resolve_queue_name(&consume.queue.as_str().into())?;
        if &*name != names::REPLY_TO {
            ctx.permit(Perm::Read, Kind::Queue, &name)?;
        }
        let queue = if &*name == names::REPLY_TO {
            if !consume.no_ack {
                return Err(error::precondition("reply consumer cannot acknowledge"));
            }
            if self.reply_queue.is_some() {
                return Err(error::precondition("reply consumer already set"));
            }
            let queue = ctx.vhost.reply_queue(ctx.connection);
            self.reply_queue = Some(queue.clone());
            queue
        } else {
            ctx.vhost.queue(&name, ctx.connection)?
        };
        let options = arguments::consumer(
            &consume.arguments,
            queue.settings().parsed.queue_type,
            queue.partitions(),
            queue.name(),
            ctx.vhost.name(),
        )?;
        if queue.is_stream() {
            // rabbit_stream_queue:consume/3's order.
            let vhost = ctx.vhost.name();
            if self.prefetch == 0 {
                return Err(error::stream::no_prefetch(queue.name(), vhost));
            }
            if consume.no_ack {
                return Err(error::stream::no_ack(queue.name(), vhost));
            }
            if self.channel_limit.limit() > 0 {
                return Err(error::stream::global_qos(queue.name(), vhost));
            }
            if options.track_offsets && consume.consumer_tag.as_str().is_empty() {
                return Err(error::stream::tracking_without_tag(queue.name(), vhost));
            }
        }
        let tag: ShortStr = if consume.consumer_tag.as_str().is_empty() {
            names::server_consumer_tag().into()
        } else {
            consume.consumer_tag.as_str().into()
        };
        if self.consumers.iter().any(|c| c.tag == tag) {
            return Err(error::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let credit = Arc::new(if consume.no_ack {
            Credit::new(NO_ACK_WINDOW, None)
        } else {
            Credit::new(u32::from(self.prefetch), Some(self.channel_limit.clone()))
        });
        let id = ctx.broker.next_consumer_id();
        // Reply first: deliveries the queue hands over at once must follow consume-ok.
        let mark = ctx.out.len();
        if !consume.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
                    consumer_tag: tag.to_string().into(),
                })),
            );
        }
        let membership = Membership {
            group: options.group.clone(),
            partitions: options.partitions.clone(),
            member: options.member.clone(),
            session_timeout_ms: options
                .session_timeout_ms
                .unwrap_or(arguments::DEFAULT_SESSION_TIMEOUT_MS),
            notify: options.notify,
        };
        let handle = ConsumerHandle {
            id,
            channel: self.id,
            exclusive: consume.exclusive,
            credit,
            mailbox: ctx.mailbox.clone(),
            no_ack: consume.no_ack,
            priority: options.priority,
        };
        let added = if queue.is_stream() {
            let reader = Reader {
                consumer: handle,
                start: stream_start(&options),
                filter: StreamFilter {
                    values: options.stream_filter.clone(),
                    match_unfiltered: options.match_unfiltered,
                },
            };
            let track = options.track_offsets.then(|| tag.to_string());
            queue.add_stream_consumer(reader, track, &membership)
        } else {
            queue.add_member(handle, &membership, ctx.effects)
        };
        added.inspect_err(|_| ctx.out.truncate(mark))?;
        // Stream consumers never time out (RabbitMQ 4.3): nothing waits on their acks.
        let timeout_ms = if queue.is_stream() {
            0
        } else {
            options
                .timeout_ms
                .or(queue.settings().parsed.consumer_timeout)
                .unwrap_or(ctx.broker.config().consumer_timeout)
        };
        self.entry.add_consumer(crate::registry::ConsumerEntry {
            id,
            tag: tag.to_string(),
            queue: queue.name().to_string(),
            ack_required: !consume.no_ack,
            exclusive: consume.exclusive,
            prefetch: u32::from(self.prefetch),
            arguments: crate::access::rabbit_json::table_to_json(&consume.arguments),
        });
        self.consumers.push(ChannelConsumer {
            id,
            tag,
            queue,
            no_ack: consume.no_ack,
            timeout_ms,
        });
        Ok(())
    }
}

/// Where a stream consumer starts, from its `x-stream-offset` (`next` by default).
fn stream_start(options: &arguments::ConsumerArguments) -> StreamStart {
    match options.stream_offset {
        None | Some(StreamOffset::Next) => StreamStart::Next,
        Some(StreamOffset::First) => StreamStart::First,
        Some(StreamOffset::Last) => StreamStart::Last,
        Some(StreamOffset::Offset(offset)) => StreamStart::Offset(offset),
        Some(StreamOffset::Timestamp(ms)) => StreamStart::Timestamp(ms),
        Some(StreamOffset::Interval(ms)) => StreamStart::Timestamp(now_ms().saturating_sub(ms)),
    }
}
