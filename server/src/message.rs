//! A published message as queues hold it: routing facts, encoded properties, body.

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
    /// The message.
    pub message: Message,
}
