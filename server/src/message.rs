//! A published message as queues hold it: routing facts, encoded properties, body.

use amqp_codec::amq_protocol::types::AMQPValue;
use amqp_codec::properties::{decode_properties, encode_properties};
use amqp_codec::{Content, PropertiesView, ShortStr};
use bytes::Bytes;

use crate::store::SegmentPosition;

/// A message as published. Every field shares the connection's read buffer, so a copy
/// routed to many queues costs reference counts, not bytes.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Routing key it was published with.
    pub routing_key: ShortStr,
    /// Encoded content properties, forwarded to consumers as they came.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// The message a completed `basic.publish` carries.
    pub fn from_content(content: Content) -> Self {
        Self {
            exchange: content.publish.exchange,
            routing_key: content.publish.routing_key,
            properties: content.properties,
            body: content.body,
        }
    }

    /// The message with its `x-delivery-count` header set to `count`, as quorum queues
    /// redeliver it.
    #[must_use]
    pub fn with_delivery_count(mut self, count: u32) -> Self {
        let mut properties = decode_properties(&self.properties).unwrap_or_default();
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(count)),
        );
        properties = properties.with_headers(headers);
        self.properties = encode_properties(&properties);
        self
    }

    /// The `x-delay` header in milliseconds (delayed exchanges hold the message that
    /// long); 0 when absent, not an integer, or not positive.
    pub fn delay_ms(&self) -> u64 {
        let Some(headers) = self.properties().and_then(|p| p.headers()) else {
            return 0;
        };
        let delay = match headers.inner().get("x-delay") {
            Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
            Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
            Some(AMQPValue::ShortInt(n)) => i64::from(*n),
            Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
            Some(AMQPValue::LongInt(n)) => i64::from(*n),
            Some(AMQPValue::LongUInt(n)) => i64::from(*n),
            Some(AMQPValue::LongLongInt(n)) => *n,
            _ => 0,
        };
        u64::try_from(delay).unwrap_or(0)
    }

    /// A view of the properties (validated when the header frame was decoded).
    pub fn properties(&self) -> Option<PropertiesView<'_>> {
        PropertiesView::new(&self.properties).ok()
    }
}

/// A message in a queue: its position there, whether it was delivered before, and the
/// message itself. The position is the message's identity in its queue, so the store can
/// later keep the body elsewhere and acks can name it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue, increasing in publish order.
    pub offset: u64,
    /// Where the message sits in its queue's durable log, if the queue has one.
    pub position: Option<SegmentPosition>,
    /// Set once the message has been delivered and returned.
    pub redelivered: bool,
    /// When it expires (wall-clock milliseconds since the epoch); 0 never.
    pub expires_at_ms: u64,
    /// How often it was delivered and returned (quorum queues' `x-delivery-count`).
    pub delivery_count: u32,
    /// Its priority, for queues with priority levels.
    pub priority: u8,
    /// The message.
    pub message: Message,
}

impl Handling {
    /// How queues treat `message`, read from its properties (for messages the broker
    /// moves itself: dead letters, delayed messages coming due). An invalid
    /// `expiration` counts as none, as it was accepted once already.
    pub fn of(message: &Message) -> Self {
        let Some(view) = message.properties() else {
            return Self::default();
        };
        Self {
            persistent: view.delivery_mode() == Some(2),
            ttl_ms: view
                .short_str(amqp_codec::properties::Property::Expiration)
                .and_then(|e| e.parse().ok()),
            priority: view.priority().unwrap_or(0),
        }
    }
}

/// What a message's properties tell the queues it is routed to, read once per publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handling {
    /// `delivery-mode` 2: kept across a restart by durable queues.
    pub persistent: bool,
    /// The `expiration` property: a per-message TTL in milliseconds.
    pub ttl_ms: Option<u64>,
    /// The `priority` property (0 when absent).
    pub priority: u8,
}
