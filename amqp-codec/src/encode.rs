//! Writing frames into an output buffer that the connection flushes in one write.
//!
//! Deliveries, confirms and content are hand-encoded: they are the hot path and need no
//! allocation. Rare methods go through `amq-protocol`'s generator.

use amq_protocol::protocol::{AMQPClass, gen_class};
use bytes::{BufMut, BytesMut};

use crate::frame::{
    CLASS_BASIC, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD, PROTOCOL_HEADER,
};
use crate::table::{Entries, length_prefixed};

/// Writes one frame whose payload `payload` appends, patching the size afterwards.
fn framed(buf: &mut BytesMut, frame_type: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    payload(buf);
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Writes a short string, cut to 255 bytes at a character boundary: a longer one (a
/// routing key set by `x-dead-letter-routing-key`, which is a long string) must still
/// reach clients as valid UTF-8.
fn put_short_str(buf: &mut BytesMut, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &s.as_bytes()[..end];
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

/// Writes the protocol header this server speaks (also the answer to a wrong header).
pub fn protocol_header(buf: &mut BytesMut) {
    buf.put_slice(PROTOCOL_HEADER);
}

/// Writes a heartbeat frame.
pub fn heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Writes any method frame through `amq-protocol`'s generator.
pub fn method(buf: &mut BytesMut, channel: u16, class: &AMQPClass) {
    framed(buf, FRAME_METHOD, channel, |buf| {
        // Generating into a Vec only fails on a full fixed-size buffer, which a Vec is not.
        if let Ok((bytes, _)) = cookie_factory::r#gen(gen_class(class), Vec::with_capacity(64)) {
            buf.put_slice(&bytes);
        }
    });
}

/// Writes a content header and the body frames, each body frame at most `frame_max`
/// bytes with its framing; a zero-length body is a header alone.
pub fn content(buf: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    reserve_content(buf, properties.len(), body, frame_max);
    header_frame(buf, channel, body.len(), |buf| buf.put_slice(properties));
    body_frames(buf, channel, body, frame_max);
}

/// The header entry [`content_annotated`] adds for a partitioned queue.
pub const PARTITION_HEADER: &str = "x-partition";
/// The header entry [`content_annotated`] adds for a stream.
pub const STREAM_OFFSET_HEADER: &str = "x-stream-offset";

/// A header entry the broker states on a delivery: its name (one of the broker's
/// own) and a long value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation {
    name: &'static str,
    value: i64,
}

impl Annotation {
    /// `x-partition`: the partition of a partitioned queue a message came from.
    pub fn partition(partition: i64) -> Self {
        Self {
            name: PARTITION_HEADER,
            value: partition,
        }
    }

    /// `x-stream-offset`: a stream message's offset.
    pub fn stream_offset(offset: i64) -> Self {
        Self {
            name: STREAM_OFFSET_HEADER,
            value: offset,
        }
    }

    /// The encoded table entry and its length: name, tag `l`, 64-bit value.
    fn entry(self) -> ([u8; MAX_ENTRY_LEN], usize) {
        let mut entry = [0u8; MAX_ENTRY_LEN];
        let name = self.name.as_bytes();
        entry[0] = name.len() as u8;
        entry[1..1 + name.len()].copy_from_slice(name);
        entry[1 + name.len()] = b'l';
        entry[2 + name.len()..10 + name.len()].copy_from_slice(&self.value.to_be_bytes());
        (entry, 10 + name.len())
    }
}

/// The longest entry an [`Annotation`] encodes to.
const MAX_ENTRY_LEN: usize = 1 + STREAM_OFFSET_HEADER.len() + 1 + 8;

/// The `headers` bit of the basic property flags.
const HEADERS_FLAG: u16 = 0x2000;

/// The property flags before `headers`: content-type, then content-encoding.
const BEFORE_HEADERS: [u16; 2] = [0x8000, 0x4000];

/// Size of the `x-partition` entry: name length, name, tag `l`, 64-bit value.
#[cfg(test)]
const PARTITION_ENTRY_LEN: usize = 1 + PARTITION_HEADER.len() + 1 + 8;

/// Like [`content`], with headers of type `l` (signed 64-bit, as RabbitMQ's
/// `x-delivery-count`) that the broker states, such as `x-partition` (so that a consumer
/// of a partitioned queue sees where each message came from) and `x-stream-offset`. The
/// message's stored properties stay as published.
///
/// The entries are spliced in while the raw properties are copied into `buf`, which
/// happens anyway: no decode, no allocation. With a headers table, its length is
/// rewritten and the entries appended, and any entry of the same names the publisher
/// set is left out, so there is exactly one of each; without one, the headers flag is
/// set and a table of the annotations inserted after content-type and
/// content-encoding.
///
/// Properties this cannot splice into (cut short, a malformed headers table, a second
/// flags word, or a table that would outgrow its `u32` length) are copied unchanged,
/// as [`content`] would: the broker forwards what it accepted rather than fail. When
/// the entries would push the header past `frame_max` (a content header is one frame),
/// the consumer gets the message without them rather than a frame error; entries of
/// their names the publisher set are still left out, so the header never claims a
/// partition or offset the broker did not state.
pub fn content_annotated(
    buf: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    annotations: &[Annotation],
    body: &[u8],
    frame_max: u32,
) {
    reserve_content(
        buf,
        properties.len() + 4 + MAX_ENTRY_LEN * annotations.len(),
        body,
        frame_max,
    );
    let start = buf.len();
    header_frame(buf, channel, body.len(), |buf| {
        spliced(buf, properties, annotations, true);
    });
    if frame_max > 0 && buf.len() - start > frame_max as usize {
        buf.truncate(start);
        header_frame(buf, channel, body.len(), |buf| {
            spliced(buf, properties, annotations, false);
        });
    }
    body_frames(buf, channel, body, frame_max);
}

/// Appends `properties` with any entry of an annotation's name replaced by the
/// annotations (left out unless `add`), or unchanged when they cannot be read that far.
fn spliced(buf: &mut BytesMut, properties: &[u8], annotations: &[Annotation], add: bool) {
    let start = buf.len();
    if annotate(buf, properties, annotations, add).is_none() {
        buf.truncate(start);
        buf.put_slice(properties);
    }
}

/// Makes room in `buf` for a content header with about `properties_len` bytes of
/// properties and `body` in frames of at most `frame_max` bytes.
fn reserve_content(buf: &mut BytesMut, properties_len: usize, body: &[u8], frame_max: u32) {
    let max_payload = max_body_payload(frame_max);
    buf.reserve(body.len() + properties_len + 64 + FRAME_OVERHEAD * body.len() / max_payload);
}

/// The most body bytes one body frame carries under `frame_max`.
fn max_body_payload(frame_max: u32) -> usize {
    (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
}

/// Writes a content header frame for a body of `body_len` bytes, its properties
/// written by `properties`.
fn header_frame(
    buf: &mut BytesMut,
    channel: u16,
    body_len: usize,
    properties: impl FnOnce(&mut BytesMut),
) {
    framed(buf, FRAME_HEADER, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(0);
        buf.put_u64(body_len as u64);
        properties(buf);
    });
}

/// Writes `body` as body frames of at most `frame_max` bytes each.
fn body_frames(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    for chunk in body.chunks(max_body_payload(frame_max)) {
        framed(buf, FRAME_BODY, channel, |buf| buf.put_slice(chunk));
    }
}

/// Appends `properties` with the annotations spliced in (with `add`), any entry of
/// their names the publisher set left out (see [`content_annotated`]); `None` when they
/// cannot be read that far, leaving partial output for the caller to truncate.
fn annotate(
    buf: &mut BytesMut,
    properties: &[u8],
    annotations: &[Annotation],
    add: bool,
) -> Option<()> {
    let flags = u16::from_be_bytes(properties.get(..2)?.try_into().ok()?);
    if flags & 1 != 0 {
        // A second flags word: no basic property uses one, so no layout to follow.
        return None;
    }
    let mut at = 2usize;
    for flag in BEFORE_HEADERS {
        if flags & flag != 0 {
            at = at.checked_add(1 + usize::from(*properties.get(at)?))?;
        }
    }
    let (before, after) = (properties.get(2..at)?, properties.get(at..)?);
    let added: usize = if add {
        annotations.iter().map(|a| a.entry().1).sum()
    } else {
        0
    };
    if flags & HEADERS_FLAG == 0 && added == 0 {
        buf.put_slice(properties);
        return Some(());
    }

    buf.put_u16(flags | HEADERS_FLAG);
    buf.put_slice(before);
    let rest = if flags & HEADERS_FLAG == 0 {
        buf.put_u32(u32::try_from(added).ok()?);
        after
    } else {
        let (table, used) = length_prefixed(after)?;
        let len_at = buf.len();
        buf.put_u32(0);
        // Copy the entries in runs, leaving out any of the annotations' already there.
        let mut entries = Entries::new(table);
        let mut copied = 0;
        loop {
            let at = table.len() - entries.rest().len();
            let Some(e) = entries.next() else {
                break;
            };
            if annotations.iter().any(|a| e.name == a.name.as_bytes()) {
                buf.put_slice(table.get(copied..at)?);
                copied = at + e.encoded.len();
            }
        }
        if !entries.rest().is_empty() {
            return None;
        }
        buf.put_slice(table.get(copied..)?);
        let len = u32::try_from(buf.len() - len_at - 4 + added).ok()?;
        buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        after.get(used..)?
    };
    if add {
        for annotation in annotations {
            let (encoded, len) = annotation.entry();
            buf.put_slice(&encoded[..len]);
        }
    }
    buf.put_slice(rest);
    Some(())
}

/// The routing facts a delivery carries.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryInfo<'a> {
    /// Channel-scoped tag for acks.
    pub delivery_tag: u64,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// Exchange it was published to.
    pub exchange: &'a str,
    /// Routing key it was published with.
    pub routing_key: &'a str,
}

/// Writes a `basic.deliver` method frame.
pub fn deliver(buf: &mut BytesMut, channel: u16, consumer_tag: &str, info: DeliveryInfo<'_>) {
    framed(buf, FRAME_METHOD, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(60);
        put_short_str(buf, consumer_tag);
        buf.put_u64(info.delivery_tag);
        buf.put_u8(u8::from(info.redelivered));
        put_short_str(buf, info.exchange);
        put_short_str(buf, info.routing_key);
    });
}

/// Writes a `basic.get-ok` method frame.
pub fn get_ok(buf: &mut BytesMut, channel: u16, info: DeliveryInfo<'_>, message_count: u32) {
    framed(buf, FRAME_METHOD, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(71);
        buf.put_u64(info.delivery_tag);
        buf.put_u8(u8::from(info.redelivered));
        put_short_str(buf, info.exchange);
        put_short_str(buf, info.routing_key);
        buf.put_u32(message_count);
    });
}

/// Writes a `basic.ack` (publisher confirm) method frame.
pub fn ack(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    framed(buf, FRAME_METHOD, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(80);
        buf.put_u64(delivery_tag);
        buf.put_u8(u8::from(multiple));
    });
}

/// Writes a `basic.nack` (negative publisher confirm) method frame.
pub fn nack(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    framed(buf, FRAME_METHOD, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(120);
        buf.put_u64(delivery_tag);
        buf.put_u8(u8::from(multiple));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::FrameDecoder;
    use crate::frame::{Frame, Method};
    use crate::properties::{PropertiesView, Property, decode_properties, encode_properties};
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::protocol::basic;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
    use bytes::Bytes;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn deliver_matches_amq_protocol() {
        let mut ours = BytesMut::new();
        deliver(
            &mut ours,
            7,
            "ctag",
            DeliveryInfo {
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.direct",
                routing_key: "k",
            },
        );
        let mut theirs = BytesMut::new();
        method(
            &mut theirs,
            7,
            &AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
            })),
        );
        assert_eq!(ours, theirs);
    }

    /// Found by the connection fuzz harness: a dead-letter routing key of 150 'é' (300
    /// bytes) went out in get-ok cut at byte 255, inside a character, and amq-protocol
    /// (like every client) refused the frame.
    #[test]
    fn regression_long_short_strings_are_cut_at_a_character_boundary() {
        let key = "é".repeat(150);
        let mut ours = BytesMut::new();
        get_ok(
            &mut ours,
            1,
            DeliveryInfo {
                delivery_tag: 1,
                redelivered: false,
                exchange: "amq.fanout",
                routing_key: &key,
            },
            0,
        );
        match amq_protocol::frame::parse_frame(&ours[..]) {
            Ok((rest, amq_protocol::frame::AMQPFrame::Method(1, class))) => {
                assert!(rest.is_empty());
                let AMQPClass::Basic(basic::AMQPMethod::GetOk(get_ok)) = class else {
                    panic!("expected get-ok, got {class:?}");
                };
                assert_eq!(get_ok.routing_key.as_str(), "é".repeat(127));
            }
            other => panic!("get-ok with a long routing key does not parse: {other:?}"),
        }
    }

    #[test]
    fn get_ok_and_acks_match_amq_protocol() {
        let info = DeliveryInfo {
            delivery_tag: 9,
            redelivered: false,
            exchange: "",
            routing_key: "q",
        };
        let mut ours = BytesMut::new();
        get_ok(&mut ours, 1, info, 5);
        ack(&mut ours, 1, 3, true);
        nack(&mut ours, 1, 4, false);
        let mut theirs = BytesMut::new();
        method(
            &mut theirs,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 9,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 5,
            })),
        );
        method(
            &mut theirs,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 3,
                multiple: true,
            })),
        );
        method(
            &mut theirs,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 4,
                multiple: false,
                requeue: false,
            })),
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn content_is_split_by_frame_max_and_empty_body_has_no_body_frame() {
        let mut out = BytesMut::new();
        content(&mut out, 1, &[0, 0], &[7u8; 10000], 4096);
        content(&mut out, 1, &[0, 0], &[], 4096);
        let mut dec = FrameDecoder::after_header(4096);
        let mut kinds = Vec::new();
        while let Some(f) = dec.decode(&mut out).expect("decodes") {
            kinds.push(match f {
                Frame::Header(_, h) => format!("h{}", h.body_size),
                Frame::Body(_, b) => format!("b{}", b.len()),
                Frame::Method(_, Method::Publish(_)) | Frame::Method(..) => "m".into(),
                Frame::Heartbeat(_) => "hb".into(),
            });
        }
        assert_eq!(kinds, ["h10000", "b4088", "b4088", "b1824", "h0"]);
    }

    /// Decodes what `content` or `content_annotated` wrote: the header's properties and
    /// the body, checking the sizes and that no frame exceeds `frame_max`.
    fn decode_content(mut out: BytesMut, channel: u16, frame_max: u32) -> (Bytes, Vec<u8>) {
        let mut dec = FrameDecoder::after_header(frame_max);
        let mut header = None;
        let mut body = Vec::new();
        while !out.is_empty() {
            let before = out.len();
            match dec.decode(&mut out).expect("decodes") {
                Some(Frame::Header(ch, h)) => {
                    assert_eq!(ch, channel);
                    assert!(header.is_none(), "two headers");
                    header = Some(h);
                }
                Some(Frame::Body(ch, b)) => {
                    assert_eq!(ch, channel);
                    assert!(frame_max == 0 || before - out.len() <= frame_max as usize);
                    body.extend_from_slice(&b);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let header = header.expect("a header");
        assert_eq!(header.class_id, CLASS_BASIC);
        assert_eq!(header.body_size, body.len() as u64);
        (header.properties, body)
    }

    /// `properties` as a consumer of partition `partition` must see them.
    fn annotated(properties: &BasicProperties, partition: i64) -> BasicProperties {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(PARTITION_HEADER.into(), AMQPValue::LongLongInt(partition));
        properties.clone().with_headers(headers)
    }

    /// Writes `properties` annotated with `partition` around `body` and checks what a
    /// client decodes.
    fn check_annotated(properties: &BasicProperties, partition: i64, body: &[u8], frame_max: u32) {
        let raw = encode_properties(properties);
        let mut out = BytesMut::new();
        content_annotated(
            &mut out,
            3,
            &raw,
            &[Annotation::partition(partition)],
            body,
            frame_max,
        );
        let (written, got_body) = decode_content(out, 3, frame_max);
        assert!(PropertiesView::new(&written).is_ok());
        assert_eq!(
            decode_properties(&written),
            Some(annotated(properties, partition)),
            "from {properties:?}"
        );
        assert_eq!(got_body, body);
        // Exactly one entry of that name.
        let table = PropertiesView::new(&written)
            .ok()
            .and_then(|v| v.raw(Property::Headers))
            .expect("headers");
        let (inner, _) = length_prefixed(table).expect("a table");
        let count = Entries::new(inner)
            .filter(|e| e.name == PARTITION_HEADER.as_bytes())
            .count();
        assert_eq!(count, 1);
    }

    /// Properties with the flags in `mask` (bit 13 for content-type, down to bit 0 for
    /// cluster-id) set to fixed values, headers holding `headers`.
    fn properties_of(mask: u16, headers: &FieldTable) -> BasicProperties {
        type Set = fn(BasicProperties, &FieldTable) -> BasicProperties;
        let setters: [Set; 14] = [
            |p, _| p.with_content_type("application/json".into()),
            |p, _| p.with_content_encoding("gzip".into()),
            |p, h| p.with_headers(h.clone()),
            |p, _| p.with_delivery_mode(2),
            |p, _| p.with_priority(5),
            |p, _| p.with_correlation_id("corr".into()),
            |p, _| p.with_reply_to("amq.rabbitmq.reply-to".into()),
            |p, _| p.with_expiration("60000".into()),
            |p, _| p.with_message_id("id-1".into()),
            |p, _| p.with_timestamp(1_700_000_000),
            |p, _| p.with_type("order".into()),
            |p, _| p.with_user_id("guest".into()),
            |p, _| p.with_app_id("app".into()),
            |p, _| p.with_cluster_id("".into()),
        ];
        let on = |bit: usize| mask & (1 << (13 - bit)) != 0;
        setters
            .iter()
            .enumerate()
            .filter(|(bit, _)| on(*bit))
            .fold(BasicProperties::default(), |p, (_, set)| set(p, headers))
    }

    fn some_headers() -> Vec<FieldTable> {
        let mut with_old = FieldTable::default();
        with_old.insert("a".into(), AMQPValue::LongString("1".into()));
        with_old.insert(PARTITION_HEADER.into(), AMQPValue::LongString("old".into()));
        with_old.insert("z".into(), AMQPValue::LongLongInt(-1));
        let mut only_old = FieldTable::default();
        only_old.insert(PARTITION_HEADER.into(), AMQPValue::LongLongInt(99));
        let mut nested = FieldTable::default();
        nested.insert("t".into(), AMQPValue::FieldTable(with_old.clone()));
        nested.insert(
            "arr".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
        );
        vec![FieldTable::default(), with_old, only_old, nested]
    }

    #[test]
    fn annotated_content_decodes_for_every_flag_mix() {
        let headers = some_headers();
        for mask in 0..1u16 << 14 {
            let table = &headers[usize::from(mask) % headers.len()];
            check_annotated(
                &properties_of(mask, table),
                i64::from(mask) - 7,
                b"hi",
                4096,
            );
        }
    }

    #[test]
    fn annotated_content_drops_a_published_x_partition() {
        for table in some_headers() {
            let properties = BasicProperties::default().with_headers(table);
            for partition in [0, 1, -1, i64::MIN, i64::MAX] {
                check_annotated(&properties, partition, b"", 4096);
            }
        }
        // Repeated entries of that name, which amq-protocol would never write.
        let raw = [
            &[0x20, 0x00, 0, 0, 0, 31][..],
            &[11],
            PARTITION_HEADER.as_bytes(),
            &[b't', 1],
            &[11],
            PARTITION_HEADER.as_bytes(),
            b"V",
            &[1, b'k', b'b', 7],
        ]
        .concat();
        let mut out = BytesMut::new();
        content_annotated(&mut out, 1, &raw, &[Annotation::partition(4)], &[], 4096);
        let (written, _) = decode_content(out, 1, 4096);
        let expected = [
            &[0x20, 0x00, 0, 0, 0, 25][..],
            &[1, b'k', b'b', 7],
            &[11],
            PARTITION_HEADER.as_bytes(),
            &[b'l', 0, 0, 0, 0, 0, 0, 0, 4],
        ]
        .concat();
        assert_eq!(&written[..], &expected[..]);
    }

    #[test]
    fn two_annotations_replace_both_published_entries_once_each() {
        for table in some_headers() {
            let mut forged = table.clone();
            forged.insert(PARTITION_HEADER.into(), AMQPValue::LongString("9".into()));
            forged.insert(STREAM_OFFSET_HEADER.into(), AMQPValue::Boolean(true));
            let properties = BasicProperties::default().with_headers(forged);
            let raw = encode_properties(&properties);
            let mut out = BytesMut::new();
            let both = [Annotation::stream_offset(77), Annotation::partition(5)];
            content_annotated(&mut out, 2, &raw, &both, b"x", 4096);
            let (written, body) = decode_content(out, 2, 4096);
            assert_eq!(body, b"x");
            let mut want = table.clone();
            want.insert(STREAM_OFFSET_HEADER.into(), AMQPValue::LongLongInt(77));
            want.insert(PARTITION_HEADER.into(), AMQPValue::LongLongInt(5));
            let got = decode_properties(&written).expect("properties");
            assert_eq!(got.headers().clone(), Some(want), "from {table:?}");
        }
        // Without headers: a table of both is inserted.
        let mut out = BytesMut::new();
        let both = [Annotation::partition(1), Annotation::stream_offset(2)];
        content_annotated(&mut out, 1, &[0, 0], &both, b"", 4096);
        let (written, _) = decode_content(out, 1, 4096);
        let headers = decode_properties(&written)
            .and_then(|p| p.headers().clone())
            .expect("headers");
        assert_eq!(headers.inner().len(), 2);
    }

    #[test]
    fn annotated_content_splits_large_bodies_like_content() {
        let body: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let properties = BasicProperties::default().with_delivery_mode(2);
        for frame_max in [4096, 8192, 131_072, 0] {
            check_annotated(&properties, 12, &body, frame_max);
            let raw = encode_properties(&properties);
            let (mut plain, mut ours) = (BytesMut::new(), BytesMut::new());
            content(&mut plain, 1, &raw, &body, frame_max);
            content_annotated(
                &mut ours,
                1,
                &raw,
                &[Annotation::partition(12)],
                &body,
                frame_max,
            );
            // The same body frames after a header longer by the new table.
            let grown = 4 + PARTITION_ENTRY_LEN;
            assert_eq!(ours.len(), plain.len() + grown);
            let header_end = 7 + 12 + raw.len() + 1;
            assert_eq!(&ours[header_end + grown..], &plain[header_end..]);
        }
    }

    #[test]
    fn the_entry_is_left_out_where_it_would_push_the_header_past_frame_max() {
        let long = "t".repeat(255);
        let plain = BasicProperties::default()
            .with_content_type(long.as_str().into())
            .with_content_encoding(long.as_str().into());
        let mut forged = FieldTable::default();
        forged.insert(PARTITION_HEADER.into(), AMQPValue::LongLongInt(99));
        forged.insert("kept".into(), AMQPValue::Boolean(true));
        let mut kept = FieldTable::default();
        kept.insert("kept".into(), AMQPValue::Boolean(true));
        let with_headers = plain.clone().with_headers(forged);
        let cases = [
            (&plain, plain.clone()),
            (&with_headers, plain.clone().with_headers(kept)),
        ];
        for (properties, stripped) in cases {
            // The smallest frame_max the annotated header fits in: it is added there.
            let mut fitting = BytesMut::new();
            content_annotated(
                &mut fitting,
                1,
                &encode_properties(properties),
                &[Annotation::partition(3)],
                b"",
                0,
            );
            let fits = u32::try_from(fitting.len()).unwrap_or(u32::MAX);
            check_annotated(properties, 3, b"body", fits);

            // One byte less: no `x-partition` at all, not even the publisher's, and the
            // rest as published; the header within frame_max.
            let raw = encode_properties(properties);
            let mut out = BytesMut::new();
            content_annotated(
                &mut out,
                1,
                &raw,
                &[Annotation::partition(3)],
                b"body",
                fits - 1,
            );
            let (written, body) = decode_content(out, 1, fits - 1);
            assert_eq!(body, b"body");
            assert_eq!(decode_properties(&written), Some(stripped));
        }
    }

    #[test]
    fn a_stream_offset_replaces_a_published_one() {
        let mut headers = FieldTable::default();
        headers.insert(
            STREAM_OFFSET_HEADER.into(),
            AMQPValue::LongString("forged".into()),
        );
        headers.insert("kept".into(), AMQPValue::Boolean(true));
        let properties = BasicProperties::default().with_headers(headers);
        let raw = encode_properties(&properties);
        let mut out = BytesMut::new();
        content_annotated(
            &mut out,
            1,
            &raw,
            &[Annotation::stream_offset(1 << 40)],
            b"b",
            4096,
        );
        let (written, _) = decode_content(out, 1, 4096);
        let mut expected = FieldTable::default();
        expected.insert("kept".into(), AMQPValue::Boolean(true));
        expected.insert(STREAM_OFFSET_HEADER.into(), AMQPValue::LongLongInt(1 << 40));
        assert_eq!(
            decode_properties(&written),
            Some(BasicProperties::default().with_headers(expected))
        );
    }

    #[test]
    fn unreadable_properties_are_copied_unchanged() {
        let mut long_table = vec![0x20, 0x00];
        long_table.extend_from_slice(&[0, 0, 0, 9, 1, b'k']);
        for raw in [
            &[][..],
            &[0x20],
            &[0x80, 0x00],                            // content-type cut short
            &[0x80, 0x00, 5, b'a'],                   // content-type runs past the end
            &[0x20, 0x00, 0, 0],                      // table length cut short
            &long_table,                              // table runs past the end
            &[0x20, 0x00, 0, 0, 0, 3, 1, b'k', b'?'], // unknown type tag
            &[0x20, 0x00, 0, 0, 0, 2, 5, b'k'],       // entry name cut short
            &[0x00, 0x01, 0x00, 0x00],                // a second flags word
        ] {
            let mut ours = BytesMut::new();
            content_annotated(
                &mut ours,
                1,
                raw,
                &[Annotation::partition(3)],
                b"body",
                4096,
            );
            let mut plain = BytesMut::new();
            content(&mut plain, 1, raw, b"body", 4096);
            assert_eq!(ours, plain, "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn annotated_content_matches_the_property_decoder(
            mask in any::<u16>(),
            entries in proptest::collection::vec((0usize..4, any::<i64>()), 0..6),
            partition in any::<i64>(),
            body_len in 0usize..20_000,
            frame_max in prop_oneof![Just(4096u32), Just(4097), Just(65_536), Just(0)],
        ) {
            let names = ["a", PARTITION_HEADER, "b", "x-partitio"];
            let mut table = FieldTable::default();
            for (name, n) in entries {
                let value = if n % 2 == 0 {
                    AMQPValue::LongLongInt(n)
                } else {
                    AMQPValue::LongString(n.to_string().into())
                };
                table.insert(names[name].into(), value);
            }
            let body: Vec<u8> = (0..body_len).map(|i| (i * 7) as u8).collect();
            check_annotated(&properties_of(mask & 0x3fff, &table), partition, &body, frame_max);
        }
    }
}
