//! Publishing: a completed message is routed and enqueued on the publisher's own task;
//! unroutable mandatory messages are returned; confirms are counted and sent per batch.

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic as b};
use amqp_codec::properties::Property;
use amqp_codec::{Content, ReplyCode, encode};

use super::{Channel, Context};
use std::sync::Arc;

use crate::error::{self, AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::Queue;

impl Channel {
    pub(super) fn on_content(&mut self, ctx: &mut Context<'_>, content: Content) -> AmqpResult<()> {
        let mandatory = content.publish.mandatory;
        let message = Message::from_content(content);
        // One look at the properties (validated when the header frame was decoded).
        let mut persistent = false;
        if let Some(view) = message.properties() {
            persistent = view.delivery_mode() == Some(2);
            if let Some(claimed) = view.short_str(Property::UserId)
                && claimed != ctx.user
            {
                return Err(error::precondition(format!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    ctx.user
                )));
            }
        }
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((message, mandatory, persistent));
            return Ok(());
        }
        self.route(ctx, message, mandatory, persistent)
    }

    /// Routes a message to its queues (one body shared by all), returns it if it was
    /// mandatory and went nowhere, and counts it for confirms.
    pub(super) fn route(
        &mut self,
        ctx: &mut Context<'_>,
        message: Message,
        mandatory: bool,
        persistent: bool,
    ) -> AmqpResult<()> {
        ctx.vhost.route(&message, ctx.routed)?;
        let routed = std::mem::take(&mut ctx.routed.queues);
        let mut stored = Ok(());
        if let Some((last, rest)) = routed.split_last() {
            for queue in rest {
                stored = stored.and(enqueue(ctx, queue, message.clone(), persistent));
            }
            stored = stored.and(enqueue(ctx, last, message, persistent));
        } else if mandatory {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::Return(b::Return {
                    reply_code: ReplyCode::NoRoute.code(),
                    reply_text: "NO_ROUTE".into(),
                    exchange: message.exchange.to_string().into(),
                    routing_key: message.routing_key.to_string().into(),
                })),
            );
            encode::content(
                ctx.out,
                self.id,
                &message.properties,
                &message.body,
                ctx.frame_max,
            );
        }
        ctx.routed.queues = routed;
        ctx.routed.clear();
        stored?;
        if let Some(confirm) = &mut self.confirm {
            if confirm.published == confirm.scheduled {
                ctx.confirms_due.push(self.id);
            }
            confirm.published += 1;
        }
        Ok(())
    }
}

/// Puts a message on one queue, noting queues whose log now owes a group commit.
///
/// # Errors
/// 506 RESOURCE_ERROR when the queue's log cannot take the message (a full disk, an I/O
/// error): the connection closes and the message is never confirmed.
fn enqueue(
    ctx: &mut Context<'_>,
    queue: &Arc<Queue>,
    message: Message,
    persistent: bool,
) -> AmqpResult<()> {
    match queue.publish(message, persistent) {
        Ok(true) => {
            ctx.commit_later(queue);
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            tracing::error!(queue = %queue.name(), error = %e, "cannot store a message");
            Err(AmqpError::new(
                ReplyCode::ResourceError,
                format!("cannot store the message in queue '{}': {e}", queue.name()),
            ))
        }
    }
}
