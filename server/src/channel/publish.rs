//! Publishing: a completed message is routed and enqueued on the publisher's own task;
//! unroutable mandatory messages are returned; confirms are counted and sent per batch.

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic as b};
use amqp_codec::properties::Property;
use amqp_codec::{Content, ReplyCode, encode};

use super::{Channel, Context};
use crate::error::{self, AmqpResult};
use crate::message::Message;

impl Channel {
    pub(super) fn on_content(&mut self, ctx: &mut Context<'_>, content: Content) -> AmqpResult<()> {
        let mandatory = content.publish.mandatory;
        let message = Message::from_content(content);
        if let Some(claimed) = message
            .properties()
            .and_then(|p| p.short_str(Property::UserId))
            && claimed != ctx.user
        {
            return Err(error::precondition(format!(
                "user_id property set to '{claimed}' but authenticated user was '{}'",
                ctx.user
            )));
        }
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((message, mandatory));
            return Ok(());
        }
        self.route(ctx, message, mandatory)
    }

    /// Routes a message to its queues (one body shared by all), returns it if it was
    /// mandatory and went nowhere, and counts it for confirms.
    pub(super) fn route(
        &mut self,
        ctx: &mut Context<'_>,
        message: Message,
        mandatory: bool,
    ) -> AmqpResult<()> {
        ctx.routed.clear();
        ctx.vhost.route(&message, ctx.routed)?;
        if let Some((last, rest)) = ctx.routed.split_last() {
            for queue in rest {
                queue.publish(message.clone());
            }
            last.publish(message);
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
        ctx.routed.clear();
        if let Some(confirm) = &mut self.confirm {
            if confirm.published == confirm.confirmed {
                ctx.confirms_due.push(self.id);
            }
            confirm.published += 1;
        }
        Ok(())
    }
}
