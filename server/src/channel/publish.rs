//! Publishing: a completed message is routed and enqueued on the publisher's own task;
//! unroutable mandatory messages are returned; confirms are counted and sent per batch.

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic as b};
use amqp_codec::amq_protocol::types::AMQPValue;
use amqp_codec::properties::{Property, decode_properties, encode_properties};
use amqp_codec::{Content, ReplyCode, ShortStr, encode};

use super::{Channel, Context};
use std::sync::Arc;

use crate::error::{self, AmqpError, AmqpResult};
use crate::message::{Handling, Message};
use crate::names;
use crate::queue::dead_letter::{header_routing_keys, without_key};
use crate::queue::{Enqueued, Queue, arguments};

/// A publish as the channel routes it: the message, how queues treat it, and the extra
/// routing keys its `CC`/`BCC` headers name.
#[derive(Debug)]
pub(super) struct Publication {
    pub message: Message,
    pub mandatory: bool,
    pub handling: Handling,
    pub extra_keys: Vec<ShortStr>,
}

/// Parses the `expiration` property as RabbitMQ does: a non-negative decimal integer of
/// milliseconds.
///
/// # Errors
/// 406 PRECONDITION_FAILED with RabbitMQ's text for anything else.
fn parse_expiration(expiration: &str) -> AmqpResult<u64> {
    let digits = expiration.strip_prefix(['-', '+']).unwrap_or(expiration);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let reason = if end == 0 {
        "no_integer".to_owned()
    } else if end < digits.len() {
        format!("{{leftover_string,\"{}\"}}", &digits[end..])
    } else if expiration.starts_with('-') {
        format!("{{value_negative,{expiration}}}")
    } else {
        match digits.parse::<u64>() {
            Ok(ms) if ms <= MAX_EXPIRATION_MS => return Ok(ms),
            _ => format!("{{value_too_large,{digits}}}"),
        }
    };
    Err(error::precondition(format!(
        "invalid expiration '{expiration}': {reason}"
    )))
}

/// The largest TTL RabbitMQ accepts, in milliseconds.
const MAX_EXPIRATION_MS: u64 = 4_294_967_295;

/// Reads the `CC` and `BCC` routing keys of a message with headers, removing `BCC` from
/// what is delivered.
///
/// # Errors
/// 406 PRECONDITION_FAILED, as RabbitMQ answers, when either header is not an array.
fn sender_selected_keys(message: &mut Message) -> AmqpResult<Vec<ShortStr>> {
    let Some(headers) = message.properties().and_then(|view| view.headers()) else {
        return Ok(Vec::new());
    };
    for name in ["CC", "BCC"] {
        if let Some(value) = headers.inner().get(name)
            && !matches!(value, AMQPValue::FieldArray(_))
        {
            return Err(error::precondition(format!(
                "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                arguments::type_name(value)
            )));
        }
    }
    let mut keys: Vec<ShortStr> = header_routing_keys(&headers, "CC")
        .into_iter()
        .map(ShortStr::from)
        .collect();
    if headers.contains_key("BCC") {
        keys.extend(
            header_routing_keys(&headers, "BCC")
                .into_iter()
                .map(ShortStr::from),
        );
        if let Some(properties) = decode_properties(message.raw_properties()) {
            let properties = properties.with_headers(without_key(&headers, "BCC"));
            *message = message.with_raw_properties(&encode_properties(&properties));
        }
    }
    Ok(keys)
}

impl Channel {
    pub(super) fn on_content(&mut self, ctx: &mut Context<'_>, content: Content) -> AmqpResult<()> {
        *ctx.published = true;
        self.permit_publish(ctx, &content)?;
        let mandatory = content.publish.mandatory;
        let mut message = Message::from_content(content);
        // One look at the properties (validated when the header frame was decoded).
        let mut handling = Handling::default();
        let mut extra_keys = Vec::new();
        let (mut has_headers, mut direct_reply) = (false, false);
        if let Some(view) = message.properties() {
            handling.persistent = view.delivery_mode() == Some(2);
            handling.priority = view.priority().unwrap_or(0);
            if let Some(claimed) = view.short_str(Property::UserId)
                && claimed != ctx.grant.user
                && !ctx.grant.tags.iter().any(|t| t == "impersonator")
            {
                return Err(error::precondition(format!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    ctx.grant.user
                )));
            }
            if let Some(expiration) = view.raw(Property::Expiration) {
                handling.ttl_ms = Some(parse_expiration(&String::from_utf8_lossy(expiration))?);
            }
            has_headers = view.raw(Property::Headers).is_some();
            direct_reply = view.short_str(Property::ReplyTo) == Some(names::REPLY_TO);
        }
        if has_headers {
            extra_keys = sender_selected_keys(&mut message)?;
            Self::permit_extra_keys(ctx, message.exchange(), &extra_keys)?;
        }
        if direct_reply {
            let Some(queue) = &self.reply_queue else {
                return Err(error::precondition("fast reply consumer does not exist"));
            };
            if let Some(properties) = decode_properties(message.raw_properties()) {
                let properties = properties.with_reply_to(queue.name().to_string().into());
                message = message.with_raw_properties(&encode_properties(&properties));
            }
        }
        let publication = Publication {
            message,
            mandatory,
            handling,
            extra_keys,
        };
        if self.tx.is_some() {
            // Routed now, as RabbitMQ does: a missing exchange fails this publish, and
            // the queues found now take the message at commit.
            let queues = self.route_only(ctx, &publication)?;
            if let Some(tx) = &mut self.tx {
                tx.publishes.push((publication, queues));
            }
            return Ok(());
        }
        let queues = self.route_only(ctx, &publication)?;
        let mut queues = queues;
        let outcome = self.enqueue_routed(ctx, publication, &queues);
        queues.clear();
        ctx.routed.queues = queues;
        outcome.map(|_| ())
    }

    /// The queues a publication goes to (each once), taken out of the routing scratch
    /// space; hand the vector back to `ctx.routed.queues` when done to keep its capacity.
    ///
    /// # Errors
    /// 404 for a missing exchange, 403 for an internal one.
    fn route_only(
        &mut self,
        ctx: &mut Context<'_>,
        publication: &Publication,
    ) -> AmqpResult<Vec<Arc<Queue>>> {
        let routed = ctx
            .vhost
            .route(&publication.message, &publication.extra_keys, ctx.routed);
        let queues = std::mem::take(&mut ctx.routed.queues);
        ctx.routed.clear();
        routed.map(|()| queues)
    }

    /// Puts a routed message on its queues (one body shared by all), returns it if it
    /// was mandatory and went nowhere, and counts it for confirms (a nack if a full queue
    /// refused it). Returns whether a queue's log took it (it then awaits a group
    /// commit).
    pub(super) fn enqueue_routed(
        &mut self,
        ctx: &mut Context<'_>,
        publication: Publication,
        routed: &[Arc<Queue>],
    ) -> AmqpResult<bool> {
        let Publication {
            message,
            mandatory,
            handling,
            ..
        } = publication;
        self.tally.publish += 1;
        self.tally.publish_confirm += u64::from(self.confirm.is_some() || self.tx.is_some());
        self.tally.routed += routed.len() as u64;
        if let Some((exchange, publish_in, publish_out)) =
            self.exchange_tally.count(message.exchange(), routed.len())
        {
            ctx.vhost.count_exchange(&exchange, publish_in, publish_out);
        }
        if routed.is_empty() {
            if mandatory {
                self.tally.return_unroutable += 1;
            } else {
                self.tally.drop_unroutable += 1;
            }
        }
        let mut stored = Ok(Stored::default());
        if let Some((last, rest)) = routed.split_last() {
            for queue in rest {
                stored = combine(stored, enqueue(ctx, queue, message.clone(), handling));
            }
            stored = combine(stored, enqueue(ctx, last, message, handling));
        } else if mandatory {
            ctx.send(
                self.id,
                AMQPClass::Basic(b::AMQPMethod::Return(b::Return {
                    reply_code: ReplyCode::NoRoute.code(),
                    reply_text: "NO_ROUTE".into(),
                    exchange: message.exchange().into(),
                    routing_key: message.routing_key().into(),
                })),
            );
            encode::content(
                ctx.out,
                self.id,
                message.raw_properties(),
                message.body(),
                ctx.frame_max,
            );
        }
        let stored = stored?;
        if let Some(confirm) = &mut self.confirm {
            if confirm.published == confirm.scheduled {
                ctx.confirms_due.push(self.id);
            }
            confirm.published += 1;
            if stored.rejected {
                confirm.rejected.push_back(confirm.published);
            }
        }
        Ok(stored.logged)
    }
}

/// What the queues a message was routed to did with it.
#[derive(Debug, Default, Clone, Copy)]
struct Stored {
    /// A full queue refused it.
    rejected: bool,
    /// A queue's log took it.
    logged: bool,
}

/// Combines per-queue outcomes: the first error wins; any refusal makes the publish
/// refused, any log makes it wait for a group commit.
fn combine(acc: AmqpResult<Stored>, next: AmqpResult<Stored>) -> AmqpResult<Stored> {
    let (acc, next) = (acc?, next?);
    Ok(Stored {
        rejected: acc.rejected | next.rejected,
        logged: acc.logged | next.logged,
    })
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
    handling: Handling,
) -> AmqpResult<Stored> {
    let enqueued = queue.publish(message, handling, ctx.effects);
    if matches!(enqueued, Ok(Enqueued::Logged(_) | Enqueued::Memory)) {
        crate::stats::QueueCounters::count(&queue.counters().publish, 1);
    }
    ctx.note_backlog(queue);
    match enqueued {
        Ok(Enqueued::Logged(partition)) => {
            ctx.commit_later(queue, partition);
            Ok(Stored {
                logged: true,
                rejected: false,
            })
        }
        Ok(Enqueued::Memory) => Ok(Stored::default()),
        Ok(Enqueued::Rejected) => Ok(Stored {
            logged: false,
            rejected: true,
        }),
        Err(e) => {
            tracing::error!(queue = %queue.name(), error = %e, "cannot store a message");
            Err(AmqpError::new(
                ReplyCode::ResourceError,
                format!("cannot store the message in queue '{}': {e}", queue.name()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_are_read_as_rabbitmq_reads_them() {
        assert_eq!(parse_expiration("0").ok(), Some(0));
        assert_eq!(parse_expiration("1500").ok(), Some(1500));
        let text = |s: &str| {
            parse_expiration(s)
                .err()
                .map(|e| e.reply_text().replace("PRECONDITION_FAILED - ", ""))
        };
        assert_eq!(
            text("abc").as_deref(),
            Some("invalid expiration 'abc': no_integer")
        );
        assert_eq!(
            text("10x").as_deref(),
            Some("invalid expiration '10x': {leftover_string,\"x\"}")
        );
        assert_eq!(
            text("-5").as_deref(),
            Some("invalid expiration '-5': {value_negative,-5}")
        );
        assert_eq!(
            text("4294967296").as_deref(),
            Some("invalid expiration '4294967296': {value_too_large,4294967296}")
        );
    }
}
