//! Which partition of a partitioned queue a message goes to: the hash of its key.
//!
//! The function is RabbitMQ's .NET stream client's (`HashRoutingMurmurStrategy`):
//! murmur3 x86_32 with seed [`SEED`] over the key's UTF-8 bytes, read as unsigned,
//! modulo the partition count, so producers in any language can compute it.
//!
//! The key is read from the message's encoded properties without decoding them
//! ([`amqp_codec::table::find_header`]), and hashed without allocating: this runs for
//! every message published to a partitioned queue.

use amqp_codec::PropertiesView;
use amqp_codec::properties::Property;
use amqp_codec::table::find_header;

use crate::message::Message;

/// The murmur3 seed of partition hashing (the .NET and Go stream clients' 104729).
pub const SEED: u32 = 104_729;

/// What a partitioned queue hashes a message by (`x-partition-hash-header` /
/// `x-partition-hash-property`, else the routing key). The consistent-hash exchange
/// picks its key from the same choices (`hash-header` / `hash-property`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashOn {
    /// The routing key (the default). A publish through the default exchange has none:
    /// its routing key is the queue's own name.
    #[default]
    RoutingKey,
    /// The value of the header with this name.
    Header(Box<[u8]>),
    /// A message property.
    Property(HashProperty),
}

/// A property a partitioned queue may hash by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashProperty {
    /// `message_id`.
    MessageId,
    /// `correlation_id`.
    CorrelationId,
    /// `timestamp`, as decimal seconds.
    Timestamp,
}

/// The property a `hash-property` or `x-partition-hash-property` value names
/// (`message_id`, `correlation_id` or `timestamp`, as RabbitMQ spells them); `None` for
/// any other, which the argument checks refuse.
pub fn parse_hash_property(name: &[u8]) -> Option<HashProperty> {
    match name {
        b"message_id" => Some(HashProperty::MessageId),
        b"correlation_id" => Some(HashProperty::CorrelationId),
        b"timestamp" => Some(HashProperty::Timestamp),
        _ => None,
    }
}

/// Room for any integer a header or property holds, in decimal with its sign.
pub type Digits = [u8; 40];

/// `n` in decimal ASCII, written into the end of `buf`: how integer keys are hashed,
/// so that a producer hashing the number's text gets the same partition.
pub fn decimal(n: i128, buf: &mut Digits) -> &[u8] {
    let mut at = buf.len();
    let mut magnitude = n.unsigned_abs();
    loop {
        at -= 1;
        // A digit, below 10, so the cast keeps it.
        buf[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// The key bytes of `property` in `properties`: `message_id` and `correlation_id` as
/// their bytes, `timestamp` as its decimal seconds (written into `digits`); `None`
/// when the message does not carry it. An empty string is returned as it is: what an
/// empty key means is the caller's to say.
pub fn property_key<'a>(
    properties: &PropertiesView<'a>,
    property: HashProperty,
    digits: &'a mut Digits,
) -> Option<&'a [u8]> {
    match property {
        HashProperty::MessageId => properties.raw(Property::MessageId),
        HashProperty::CorrelationId => properties.raw(Property::CorrelationId),
        HashProperty::Timestamp => {
            let raw = properties.raw(Property::Timestamp)?;
            let seconds = u64::from_be_bytes(raw.try_into().ok()?);
            Some(decimal(i128::from(seconds), digits))
        }
    }
}

/// The key bytes of a header value of type `tag` (`value` as encoded after the tag):
/// long strings and byte arrays as their bytes, integers of any width and timestamps
/// as decimal ASCII; `None` for any other type (booleans, floats, decimals, arrays,
/// tables, void), which has no key.
fn header_key<'a>(tag: u8, value: &'a [u8], digits: &'a mut Digits) -> Option<&'a [u8]> {
    let n = match tag {
        b'S' | b'x' => return value.get(4..),
        b'b' => i128::from(i8::from_be_bytes(value.try_into().ok()?)),
        b'B' => i128::from(u8::from_be_bytes(value.try_into().ok()?)),
        b's' | b'U' => i128::from(i16::from_be_bytes(value.try_into().ok()?)),
        b'u' => i128::from(u16::from_be_bytes(value.try_into().ok()?)),
        b'I' => i128::from(i32::from_be_bytes(value.try_into().ok()?)),
        b'i' => i128::from(u32::from_be_bytes(value.try_into().ok()?)),
        b'L' | b'l' => i128::from(i64::from_be_bytes(value.try_into().ok()?)),
        b'T' => i128::from(u64::from_be_bytes(value.try_into().ok()?)),
        _ => return None,
    };
    Some(decimal(n, digits))
}

/// MurmurHash3 x86_32 (Austin Appleby's reference `MurmurHash3_x86_32`: 4-byte
/// little-endian blocks, tail, length, final mix), the stream clients' partition hash.
/// Our own few lines rather than a dependency, so the function producers must match
/// is pinned here, with the clients' test vectors beside it.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= scramble(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .rev()
            .fold(0u32, |k, &b| (k << 8) | u32::from(b));
        h ^= scramble(k);
    }
    // The reference takes the length as a 32-bit int: longer inputs wrap, as there.
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The partition (of `n`) that `message` goes to when hashed `on` its key:
/// `murmur3_x86_32(key, SEED) % n`, the key read as [`HashOn`] says.
///
/// `None` when the message has no key, and the queue then spreads such messages round
/// robin: an empty key; a missing header or property; a header of a type without a key
/// (see `x-partition-hash-header`: only strings, byte arrays, integers and timestamps
/// have one); and a routing key given through the default exchange, where it is the
/// queue's own name and would send everything to one partition. Also `None` for
/// `n == 0`, which a partitioned queue never has.
pub fn partition_of(message: &Message, on: &HashOn, n: u16) -> Option<u16> {
    if n == 0 {
        return None;
    }
    let mut digits: Digits = [0; 40];
    let key = match on {
        HashOn::RoutingKey if message.exchange().is_empty() => return None,
        HashOn::RoutingKey => message.routing_key().as_bytes(),
        HashOn::Header(name) => {
            let table = message.properties()?.raw(Property::Headers)?;
            let (tag, value) = find_header(table, name)?;
            header_key(tag, value, &mut digits)?
        }
        HashOn::Property(property) => property_key(&message.properties()?, *property, &mut digits)?,
    };
    if key.is_empty() {
        return None;
    }
    u16::try_from(murmur3_x86_32(key, SEED) % u32::from(n)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::amq_protocol::protocol::BasicProperties;
    use amqp_codec::amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};
    use amqp_codec::properties::encode_properties;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// A partition count large enough that keys hashing alike by chance are rare.
    const WIDE: u16 = u16::MAX;

    /// The partition of `key`, as producers compute it.
    fn expected(key: &str, n: u16) -> Option<u16> {
        u16::try_from(murmur3_x86_32(key.as_bytes(), SEED) % u32::from(n)).ok()
    }

    fn published(routing_key: &str, properties: &BasicProperties) -> Message {
        Message::new(
            "amq.direct",
            routing_key,
            &encode_properties(properties),
            Bytes::new(),
        )
    }

    /// A message published to `exchange` with header `h` set to `value` (and another).
    fn header_via(exchange: &str, value: AMQPValue) -> Message {
        let mut headers = FieldTable::default();
        headers.insert("h".into(), value);
        headers.insert("other".into(), AMQPValue::LongString("decoy".into()));
        let properties = BasicProperties::default().with_headers(headers);
        Message::new(
            exchange,
            "rk",
            &encode_properties(&properties),
            Bytes::new(),
        )
    }

    fn with_header(value: AMQPValue) -> Message {
        header_via("amq.direct", value)
    }

    fn header() -> HashOn {
        HashOn::Header(b"h".to_vec().into())
    }

    /// A message whose only property is a headers table of one entry `h`, encoded by
    /// hand (for the tags amq-protocol never writes).
    fn with_raw_header(tag: u8, value: &[u8]) -> Message {
        let mut entry = vec![1, b'h', tag];
        entry.extend_from_slice(value);
        let mut properties = vec![0x20, 0x00];
        properties.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        properties.extend_from_slice(&entry);
        Message::new("x", "rk", &properties, Bytes::new())
    }

    #[test]
    fn murmur3_matches_the_stream_clients_vectors() {
        assert_eq!(murmur3_x86_32(b"hello1", SEED), 0x10f9_983a);
        assert_eq!(murmur3_x86_32(b"hello2", SEED), 0xc071_bd04);
        assert_eq!(murmur3_x86_32(b"hello10", SEED), 0x9f77_94ad);
        assert_eq!(murmur3_x86_32(b"", SEED), 0xc675_7d56);
        let table = [
            ("hello1", 1),
            ("hello2", 0),
            ("hello3", 1),
            ("hello4", 2),
            ("hello5", 0),
            ("hello6", 2),
            ("hello7", 0),
            ("hello8", 1),
            ("hello9", 0),
            ("hello10", 2),
            ("hello88", 1),
        ];
        for (key, partition) in table {
            assert_eq!(murmur3_x86_32(key.as_bytes(), SEED) % 3, partition, "{key}");
            let message = published(key, &BasicProperties::default());
            assert_eq!(
                partition_of(&message, &HashOn::RoutingKey, 3),
                Some(partition as u16),
                "{key}"
            );
        }
    }

    #[test]
    fn murmur3_matches_the_reference_on_every_tail_length() {
        // Appleby's SMHasher verification values for seed 0 and a few published ones.
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_x86_32(&[0xff; 4], 0), 0x7629_3b50);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43], 0), 0xa0f7_b07a);
        assert_eq!(murmur3_x86_32(&[0x21], 0), 0x7266_1cf4);
        assert_eq!(murmur3_x86_32(&[0; 4], 0), 0x2362_f9de);
    }

    proptest! {
        #[test]
        fn murmur3_matches_the_murmur3_crate(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            seed in any::<u32>(),
        ) {
            let theirs = murmur3::murmur3_32(&mut std::io::Cursor::new(&data), seed)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(murmur3_x86_32(&data, seed), theirs);
        }
    }

    #[test]
    fn routing_keys_spread_over_every_partition() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let message = published(&format!("key-{i}"), &BasicProperties::default());
            let p = partition_of(&message, &HashOn::RoutingKey, 16).expect("a key");
            counts[usize::from(p)] += 1;
        }
        for (p, n) in counts.iter().enumerate() {
            assert!((800..1_200).contains(n), "partition {p} got {n} of 16000");
        }
    }

    #[test]
    fn the_default_exchange_and_empty_keys_have_no_partition() {
        // Through the default exchange the routing key is the queue's name.
        let direct = Message::new("", "orders", &[0, 0], Bytes::new());
        assert_eq!(partition_of(&direct, &HashOn::RoutingKey, 16), None);
        let empty = Message::new("amq.direct", "", &[0, 0], Bytes::new());
        assert_eq!(partition_of(&empty, &HashOn::RoutingKey, 16), None);
        let keyed = Message::new("amq.direct", "orders", &[0, 0], Bytes::new());
        assert_eq!(
            partition_of(&keyed, &HashOn::RoutingKey, 16),
            expected("orders", 16)
        );
        // No partitions, no partition (rather than a division by zero).
        assert_eq!(partition_of(&keyed, &HashOn::RoutingKey, 0), None);
        assert_eq!(partition_of(&keyed, &HashOn::RoutingKey, 1), Some(0));
    }

    #[test]
    fn a_header_key_ignores_the_exchange_and_routing_key() {
        let via_default = header_via("", AMQPValue::LongString("user-7".into()));
        assert_eq!(
            partition_of(&via_default, &header(), WIDE),
            expected("user-7", WIDE)
        );
    }

    #[test]
    fn header_keys_of_every_type() {
        let cases = [
            (AMQPValue::LongString("user-1".into()), "user-1"),
            (AMQPValue::ByteArray(b"bytes".to_vec().into()), "bytes"),
            (AMQPValue::ShortShortInt(-5), "-5"),
            (AMQPValue::ShortShortUInt(200), "200"),
            (AMQPValue::ShortInt(-300), "-300"),
            (AMQPValue::ShortUInt(65_000), "65000"),
            (AMQPValue::LongInt(-70_000), "-70000"),
            (AMQPValue::LongUInt(4_000_000_000), "4000000000"),
            (AMQPValue::LongLongInt(i64::MIN), "-9223372036854775808"),
            (AMQPValue::LongLongInt(42), "42"),
            (AMQPValue::Timestamp(1_700_000_000), "1700000000"),
        ];
        for (value, key) in cases {
            let message = with_header(value.clone());
            assert_eq!(
                partition_of(&message, &header(), WIDE),
                expected(key, WIDE),
                "{value:?}"
            );
        }
        // Integers hash by number whatever their width, like their text.
        assert_eq!(
            partition_of(&with_header(AMQPValue::ShortShortUInt(42)), &header(), WIDE),
            partition_of(&with_header(AMQPValue::LongLongInt(42)), &header(), WIDE),
        );
        // Tags amq-protocol reads but never writes: 'U' (i16) and 'L' (i64).
        let raw = with_raw_header(b'U', &(-2i16).to_be_bytes());
        assert_eq!(partition_of(&raw, &header(), WIDE), expected("-2", WIDE));
        let raw = with_raw_header(b'L', &u64::MAX.to_be_bytes());
        assert_eq!(partition_of(&raw, &header(), WIDE), expected("-1", WIDE));
        // The last of repeated names counts, as in RabbitMQ.
        let mut properties = vec![0x20, 0x00, 0, 0, 0, 20];
        properties.extend_from_slice(&[1, b'h', b'S', 0, 0, 0, 1, b'a']);
        properties.extend_from_slice(&[1, b'h', b'S', 0, 0, 0, 2, b'b', b'c']);
        properties.extend_from_slice(&[1, b'z', b'V']);
        let repeated = Message::new("x", "rk", &properties, Bytes::new());
        assert_eq!(
            partition_of(&repeated, &header(), WIDE),
            expected("bc", WIDE)
        );
    }

    #[test]
    fn headers_without_a_key_have_no_partition() {
        let table = {
            let mut t = FieldTable::default();
            t.insert("a".into(), AMQPValue::LongInt(1));
            t
        };
        for value in [
            AMQPValue::Boolean(true),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue { scale: 1, value: 5 }),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                "user-1".into(),
            )])),
            AMQPValue::FieldTable(table),
            AMQPValue::Void,
            AMQPValue::LongString("".into()),
            AMQPValue::ByteArray(Vec::new().into()),
        ] {
            let message = with_header(value.clone());
            assert_eq!(partition_of(&message, &header(), WIDE), None, "{value:?}");
        }
        let missing = HashOn::Header(b"absent".to_vec().into());
        assert_eq!(
            partition_of(&with_header(AMQPValue::LongInt(1)), &missing, WIDE),
            None
        );
        let no_headers = published("rk", &BasicProperties::default());
        assert_eq!(partition_of(&no_headers, &header(), WIDE), None);
        // Malformed properties (never accepted from a client) have no key either.
        let malformed = Message::new("x", "rk", &[0x20, 0x00, 0, 0, 0, 9], Bytes::new());
        assert_eq!(partition_of(&malformed, &header(), WIDE), None);
    }

    #[test]
    fn property_keys() {
        let on = |p| HashOn::Property(p);
        let with_id = BasicProperties::default()
            .with_message_id("id-17".into())
            .with_correlation_id("corr-3".into())
            .with_timestamp(1_700_000_123);
        let message = published("rk", &with_id);
        assert_eq!(
            partition_of(&message, &on(HashProperty::MessageId), WIDE),
            expected("id-17", WIDE)
        );
        assert_eq!(
            partition_of(&message, &on(HashProperty::CorrelationId), WIDE),
            expected("corr-3", WIDE)
        );
        assert_eq!(
            partition_of(&message, &on(HashProperty::Timestamp), WIDE),
            expected("1700000123", WIDE)
        );
        // Through the default exchange too: the key is not the routing key.
        let direct = Message::new("", "q", &encode_properties(&with_id), Bytes::new());
        assert_eq!(
            partition_of(&direct, &on(HashProperty::MessageId), WIDE),
            expected("id-17", WIDE)
        );
        let bare = published("rk", &BasicProperties::default());
        let empty = published("rk", &BasicProperties::default().with_message_id("".into()));
        for property in [
            HashProperty::MessageId,
            HashProperty::CorrelationId,
            HashProperty::Timestamp,
        ] {
            assert_eq!(partition_of(&bare, &on(property), WIDE), None);
        }
        assert_eq!(
            partition_of(&empty, &on(HashProperty::MessageId), WIDE),
            None
        );
    }

    #[test]
    fn hash_properties_are_named_as_in_rabbitmq() {
        assert_eq!(
            parse_hash_property(b"message_id"),
            Some(HashProperty::MessageId)
        );
        assert_eq!(
            parse_hash_property(b"correlation_id"),
            Some(HashProperty::CorrelationId)
        );
        assert_eq!(
            parse_hash_property(b"timestamp"),
            Some(HashProperty::Timestamp)
        );
        for other in [&b"app_id"[..], b"messageId", b"", b"message_id "] {
            assert_eq!(parse_hash_property(other), None);
        }
    }

    #[test]
    fn decimal_writes_any_integer() {
        let mut buf: Digits = [0; 40];
        for n in [
            0i128,
            7,
            -1,
            10,
            i128::from(i64::MIN),
            i128::from(u64::MAX),
            i128::MIN,
            i128::MAX,
        ] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
