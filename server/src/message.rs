//! A published message as queues hold it: routing facts, encoded properties, body.

use amqp_codec::amq_protocol::types::AMQPValue;
use amqp_codec::properties::{decode_properties, encode_properties};
use amqp_codec::{Content, PropertiesView};
use bytes::Bytes;

use crate::store::SegmentPosition;

/// Bodies at most this long are kept in the same allocation as the message's exchange,
/// routing key and properties ([`Message::new`]): a small body kept as a slice of the
/// connection's read buffer would pin the whole read chunk (64 KiB) it arrived in, and a
/// second allocation would cost its own header and size-class rounding. Larger bodies
/// stay where they arrived (they pin at most a few times their size), since copying them
/// costs more than it saves.
pub const COMPACT_MAX_BODY: usize = 16 * 1024;

/// A message as published: exchange, routing key, encoded properties and body.
///
/// Laid out for the many a queue may hold (72 bytes plus one allocation): the names
/// and properties are kept one after the other in one buffer of their own, followed by
/// the body when it is small; a large body is a second, shared slice. A copy routed to
/// many queues costs reference counts, not bytes.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange, routing key and properties, then the body unless it is in `large_body`.
    head: Bytes,
    /// A body above [`COMPACT_MAX_BODY`], as it arrived; empty otherwise.
    large_body: Bytes,
    exchange_len: u8,
    routing_key_len: u8,
    properties_len: u32,
}

/// `name` cut to the 255 bytes a short string holds, at a character boundary.
fn short(name: &str) -> &str {
    let mut end = name.len().min(usize::from(u8::MAX));
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl Message {
    /// A message of these parts, copied into one allocation (with the body unless it is
    /// larger than [`COMPACT_MAX_BODY`]). Names longer than a short string are cut to
    /// 255 bytes, as the wire could not carry more.
    pub fn new(exchange: &str, routing_key: &str, properties: &[u8], body: Bytes) -> Self {
        let (exchange, routing_key) = (short(exchange), short(routing_key));
        // Encoded properties come from one frame, whose size is a u32.
        let properties = &properties[..properties.len().min(u32::MAX as usize)];
        let inline = body.len() <= COMPACT_MAX_BODY;
        let parts = [
            exchange.as_bytes(),
            routing_key.as_bytes(),
            properties,
            if inline { &body[..] } else { &[] },
        ];
        let mut head = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            head.extend_from_slice(part);
        }
        Self {
            // A boxed slice of its exact size: the `Bytes` needs no second allocation
            // until it is shared.
            head: Bytes::from(head.into_boxed_slice()),
            large_body: if inline { Bytes::new() } else { body },
            exchange_len: u8::try_from(exchange.len()).unwrap_or(u8::MAX),
            routing_key_len: u8::try_from(routing_key.len()).unwrap_or(u8::MAX),
            properties_len: u32::try_from(properties.len()).unwrap_or(u32::MAX),
        }
    }

    /// The message a completed `basic.publish` carries.
    pub fn from_content(content: Content) -> Self {
        Self::new(
            &content.publish.exchange,
            &content.publish.routing_key,
            &content.properties,
            content.body,
        )
    }

    fn routing_key_at(&self) -> usize {
        usize::from(self.exchange_len)
    }

    fn properties_at(&self) -> usize {
        self.routing_key_at() + usize::from(self.routing_key_len)
    }

    fn body_at(&self) -> usize {
        self.properties_at() + self.properties_len as usize
    }

    /// Exchange it was published to.
    pub fn exchange(&self) -> &str {
        std::str::from_utf8(&self.head[..self.routing_key_at()]).unwrap_or_default()
    }

    /// Routing key it was published with.
    pub fn routing_key(&self) -> &str {
        std::str::from_utf8(&self.head[self.routing_key_at()..self.properties_at()])
            .unwrap_or_default()
    }

    /// Encoded content properties, forwarded to consumers as they came.
    pub fn raw_properties(&self) -> &[u8] {
        &self.head[self.properties_at()..self.body_at()]
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        if self.large_body.is_empty() {
            &self.head[self.body_at()..]
        } else {
            &self.large_body
        }
    }

    /// The body as shared bytes (a reference, not a copy).
    pub fn body_bytes(&self) -> Bytes {
        if self.large_body.is_empty() {
            self.head.slice(self.body_at()..)
        } else {
            self.large_body.clone()
        }
    }

    /// The same message with other encoded properties.
    #[must_use]
    pub fn with_raw_properties(&self, properties: &[u8]) -> Self {
        Self::new(
            self.exchange(),
            self.routing_key(),
            properties,
            self.body_bytes(),
        )
    }

    /// The same message under another exchange and routing key (a dead letter's).
    #[must_use]
    pub fn with_route(&self, exchange: &str, routing_key: &str) -> Self {
        Self::new(
            exchange,
            routing_key,
            self.raw_properties(),
            self.body_bytes(),
        )
    }

    /// The message with its `x-delivery-count` header set to `count`, as quorum queues
    /// redeliver it.
    #[must_use]
    pub fn with_delivery_count(self, count: u32) -> Self {
        let mut properties = decode_properties(self.raw_properties()).unwrap_or_default();
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(count)),
        );
        properties = properties.with_headers(headers);
        self.with_raw_properties(&encode_properties(&properties))
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
        PropertiesView::new(self.raw_properties()).ok()
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
    /// The partition of a partitioned queue that handed it out (0 otherwise).
    pub partition: u16,
    /// Handed out to be acked: counted in its queue's unacknowledged deliveries until
    /// settled.
    pub awaiting_ack: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn within(part: &[u8], whole: &Bytes) -> bool {
        let range = whole.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn a_small_message_shares_one_allocation_and_no_read_buffer() {
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        let message = Message::new("aaa", "bbbbb", b"pp", chunk.slice(10..26));
        assert_eq!(message.exchange(), "aaa");
        assert_eq!(message.routing_key(), "bbbbb");
        assert_eq!(message.raw_properties(), b"pp");
        assert_eq!(message.body(), &[b'a'; 16][..]);
        assert!(!within(message.body(), &chunk));
        assert!(within(message.body(), &message.head));
        assert_eq!(message.head.len(), 3 + 5 + 2 + 16);
        assert!(std::mem::size_of::<Message>() <= 72);

        let large = Message::new("", "q", b"", chunk.slice(0..=COMPACT_MAX_BODY));
        assert!(
            within(large.body(), &chunk),
            "large bodies stay where they are"
        );
        assert_eq!(large.body().len(), COMPACT_MAX_BODY + 1);
        assert_eq!(large.routing_key(), "q");
    }

    #[test]
    fn new_properties_or_route_keep_the_rest() {
        let message = Message::new("ex", "rk", b"\x00\x00", Bytes::from_static(b"body"));
        let other = message.with_raw_properties(b"\x10\x00\x02");
        assert_eq!(
            (other.exchange(), other.routing_key(), other.body()),
            ("ex", "rk", &b"body"[..])
        );
        assert_eq!(other.raw_properties(), b"\x10\x00\x02");
        let moved = other.with_route("dlx", "dead");
        assert_eq!((moved.exchange(), moved.routing_key()), ("dlx", "dead"));
        assert_eq!(moved.raw_properties(), b"\x10\x00\x02");
        assert_eq!(moved.body_bytes(), Bytes::from_static(b"body"));
    }

    #[test]
    fn names_longer_than_a_short_string_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let message = Message::new(&long, "k", b"", Bytes::new());
        assert_eq!(message.exchange().len(), 254);
        assert_eq!(message.routing_key(), "k");
    }
}
