//! A published message as queues hold it: routing facts, encoded properties, body.

use amqp_codec::amq_protocol::types::AMQPValue;
use amqp_codec::properties::{decode_properties, encode_properties};
use amqp_codec::{Content, PropertiesView, ShortStr};
use bytes::{BufMut, Bytes, BytesMut};

use crate::store::SegmentPosition;

/// Messages whose body is at most this long are copied out of the connection's read
/// buffer when a queue keeps them ([`Message::compact`]): a kept slice pins the whole
/// read chunk (64 KiB) it arrived in. Larger bodies pin at most a few times their size,
/// and copying them costs more than it saves.
pub const COMPACT_MAX_BODY: usize = 16 * 1024;

/// A message as published. Every field shares the connection's read buffer, so a copy
/// routed to many queues costs reference counts, not bytes; a queue that keeps a small
/// message copies it out ([`Message::compact`]).
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

    /// Copies a small message's routing key, exchange, properties and body into one
    /// allocation of their own, so that a message a queue keeps no longer pins the read
    /// chunk it arrived in (nor makes the memory accounting, which counts bodies, blind
    /// to it). Bodies above [`COMPACT_MAX_BODY`] are left where they are.
    pub fn compact(&mut self) {
        if self.body.len() > COMPACT_MAX_BODY {
            return;
        }
        let parts = [
            self.exchange.as_bytes(),
            self.routing_key.as_bytes(),
            &self.properties[..],
            &self.body[..],
        ];
        let mut buf = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            buf.put_slice(part);
        }
        let mut all = buf.freeze();
        let exchange = all.split_to(self.exchange.len());
        let routing_key = all.split_to(self.routing_key.len());
        let properties = all.split_to(self.properties.len());
        // The names were valid UTF-8 where they came from.
        if let (Ok(exchange), Ok(routing_key)) = (
            ShortStr::try_from(exchange),
            ShortStr::try_from(routing_key),
        ) {
            self.exchange = exchange;
            self.routing_key = routing_key;
        }
        self.properties = properties;
        self.body = all;
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
            compacted: false,
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
    /// The message already has an allocation of its own ([`Message::compact`]), shared
    /// by every queue it was routed to: queues keep it as it is.
    pub compacted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(part: &[u8], whole: &Bytes) -> bool {
        let range = whole.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn a_compacted_small_message_no_longer_shares_its_read_buffer() {
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        let mut message = Message {
            exchange: ShortStr::try_from(chunk.slice(0..3)).expect("utf-8"),
            routing_key: ShortStr::try_from(chunk.slice(3..8)).expect("utf-8"),
            properties: chunk.slice(8..10),
            body: chunk.slice(10..26),
        };
        message.compact();
        assert_eq!(&*message.exchange, "aaa");
        assert_eq!(&*message.routing_key, "aaaaa");
        assert_eq!(&message.properties[..], b"aa");
        assert_eq!(&message.body[..], &[b'a'; 16][..]);
        assert!(!within(&message.body, &chunk));
        assert!(!within(message.routing_key.as_bytes(), &chunk));

        let mut large = Message {
            body: chunk.slice(0..COMPACT_MAX_BODY + 1),
            ..message
        };
        large.compact();
        assert!(
            within(&large.body, &chunk),
            "large bodies stay where they are"
        );
    }
}
