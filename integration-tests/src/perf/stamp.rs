//! What each message carries so that consumers can measure latency and check delivery:
//! a send time and an identity (run nonce, producer, sequence number), 16 bytes in all.
//!
//! Bodies of at least [`STAMP_LEN`] bytes carry the stamp in their first 16 bytes
//! (send time in nanoseconds, then the identity, both big-endian). Smaller bodies carry
//! it in the content properties instead: `timestamp` holds the send time in nanoseconds
//! (brokers forward it untouched) and `message-id` the identity as 16 hex digits.

use std::time::Instant;

use amqp_codec::PropertiesView;
use amqp_codec::properties::Property;

/// Bytes a stamp takes at the start of a body.
pub const STAMP_LEN: usize = 16;

/// Bits of [`MessageId`] given to the sequence number.
const SEQ_BITS: u32 = 40;
/// Bits of [`MessageId`] given to the producer index.
const PRODUCER_BITS: u32 = 16;

/// Property flag of `delivery-mode`.
const FLAG_DELIVERY_MODE: u16 = 1 << (15 - Property::DeliveryMode as u16);
/// Property flag of `message-id`.
const FLAG_MESSAGE_ID: u16 = 1 << (15 - Property::MessageId as u16);
/// Property flag of `timestamp`.
const FLAG_TIMESTAMP: u16 = 1 << (15 - Property::Timestamp as u16);

/// The run's clock: nanoseconds since the run began, on a monotonic clock shared by
/// every producer and consumer thread of this process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the clock started.
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A message's identity: 8 bits of run nonce, 16 bits of producer index, 40 bits of
/// per-producer sequence number (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The identity of message `seq` of producer `producer` in the run `nonce`.
    pub fn new(nonce: u8, producer: u16, seq: u64) -> Self {
        Self(
            (u64::from(nonce) << (SEQ_BITS + PRODUCER_BITS))
                | (u64::from(producer) << SEQ_BITS)
                | (seq & ((1 << SEQ_BITS) - 1)),
        )
    }

    /// The run nonce.
    pub fn nonce(self) -> u8 {
        (self.0 >> (SEQ_BITS + PRODUCER_BITS)) as u8
    }

    /// The producer index.
    pub fn producer(self) -> u16 {
        (self.0 >> SEQ_BITS) as u16
    }

    /// The sequence number within the producer.
    pub fn seq(self) -> u64 {
        self.0 & ((1 << SEQ_BITS) - 1)
    }
}

/// Send time and identity of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// [`Clock::now_nanos`] when the message was written to the socket.
    pub sent_nanos: u64,
    /// Who sent it, and which of theirs it is.
    pub id: MessageId,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `body` (which must be
    /// at least that long; shorter bodies are left alone).
    pub fn write_body(&self, body: &mut [u8]) {
        if let Some(head) = body.get_mut(..STAMP_LEN) {
            head[..8].copy_from_slice(&self.sent_nanos.to_be_bytes());
            head[8..].copy_from_slice(&self.id.0.to_be_bytes());
        }
    }

    /// Reads a stamp from the start of a body; `None` if it is too short.
    pub fn read_body(body: &[u8]) -> Option<Self> {
        let head = body.get(..STAMP_LEN)?;
        Some(Self {
            sent_nanos: u64::from_be_bytes(head[..8].try_into().ok()?),
            id: MessageId(u64::from_be_bytes(head[8..].try_into().ok()?)),
        })
    }

    /// Encodes content properties carrying the stamp, plus `delivery-mode` if given,
    /// replacing `out`'s contents.
    pub fn write_properties(&self, delivery_mode: Option<u8>, out: &mut Vec<u8>) {
        out.clear();
        let mut flags = FLAG_MESSAGE_ID | FLAG_TIMESTAMP;
        if delivery_mode.is_some() {
            flags |= FLAG_DELIVERY_MODE;
        }
        out.extend_from_slice(&flags.to_be_bytes());
        if let Some(mode) = delivery_mode {
            out.push(mode);
        }
        out.push(16);
        out.extend_from_slice(&hex16(self.id.0));
        out.extend_from_slice(&self.sent_nanos.to_be_bytes());
    }

    /// Reads a stamp that [`Stamp::write_properties`] wrote; `None` if the properties
    /// do not carry one.
    pub fn read_properties(properties: &[u8]) -> Option<Self> {
        let view = PropertiesView::new(properties).ok()?;
        let id = std::str::from_utf8(view.raw(Property::MessageId)?).ok()?;
        let sent = view.raw(Property::Timestamp)?;
        Some(Self {
            sent_nanos: u64::from_be_bytes(sent.try_into().ok()?),
            id: MessageId(u64::from_str_radix(id, 16).ok()?),
        })
    }
}

/// Content properties without a stamp: empty, or just `delivery-mode`.
pub fn plain_properties(delivery_mode: Option<u8>) -> Vec<u8> {
    match delivery_mode {
        Some(mode) => {
            let mut out = FLAG_DELIVERY_MODE.to_be_bytes().to_vec();
            out.push(mode);
            out
        }
        None => vec![0, 0],
    }
}

fn hex16(value: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::amq_protocol::protocol::BasicProperties;
    use amqp_codec::properties::encode_properties;

    #[test]
    fn id_round_trips() {
        let id = MessageId::new(0xab, 513, (1 << 40) - 2);
        assert_eq!(
            (id.nonce(), id.producer(), id.seq()),
            (0xab, 513, (1 << 40) - 2)
        );
    }

    #[test]
    fn body_stamp_round_trips() {
        let stamp = Stamp {
            sent_nanos: 123_456_789,
            id: MessageId::new(1, 2, 3),
        };
        let mut body = [0u8; 20];
        stamp.write_body(&mut body);
        assert_eq!(Stamp::read_body(&body), Some(stamp));
        assert_eq!(Stamp::read_body(&body[..15]), None);
    }

    #[test]
    fn property_stamp_round_trips_and_matches_amq_protocol() {
        let stamp = Stamp {
            sent_nanos: 42,
            id: MessageId::new(7, 0, 99),
        };
        let mut ours = Vec::new();
        stamp.write_properties(Some(2), &mut ours);
        assert_eq!(Stamp::read_properties(&ours), Some(stamp));
        let theirs = encode_properties(
            &BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(String::from_utf8_lossy(&hex16(stamp.id.0)).as_ref().into())
                .with_timestamp(42),
        );
        assert_eq!(ours, theirs.to_vec());
        assert_eq!(plain_properties(Some(2)), vec![0x10, 0, 2]);
        assert_eq!(Stamp::read_properties(&plain_properties(None)), None);
    }
}
