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
    let max_payload = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    buf.reserve(body.len() + properties.len() + 64 + FRAME_OVERHEAD * body.len() / max_payload);
    framed(buf, FRAME_HEADER, channel, |buf| {
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(0);
        buf.put_u64(body.len() as u64);
        buf.put_slice(properties);
    });
    for chunk in body.chunks(max_payload) {
        framed(buf, FRAME_BODY, channel, |buf| buf.put_slice(chunk));
    }
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
    use amq_protocol::protocol::basic;
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
}
