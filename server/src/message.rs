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
