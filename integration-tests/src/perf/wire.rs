//! Frames on the client side of the wire: a reusable read buffer, a zero-copy frame
//! splitter over byte slices, and readers for the few server methods on the hot path
//! (`basic.deliver`, `basic.ack`, `basic.nack`).
//!
//! Everything else a server sends is parsed by `amqp_codec::decode::parse_method`
//! (which falls back to `amq-protocol`'s generated parser). The hot loops never
//! allocate per frame: they look at slices of one big read buffer.

use std::io::{self, Read};

use amqp_codec::amq_protocol::protocol::AMQPClass;
use amqp_codec::frame::{FRAME_END, FRAME_OVERHEAD};
use amqp_codec::{Method, decode::parse_method};
use anyhow::{Context, Result, bail};
use bytes::Bytes;

/// Frame type of a method frame.
pub const METHOD: u8 = amqp_codec::frame::FRAME_METHOD;
/// Frame type of a content header frame.
pub const HEADER: u8 = amqp_codec::frame::FRAME_HEADER;
/// Frame type of a content body frame.
pub const BODY: u8 = amqp_codec::frame::FRAME_BODY;
/// Frame type of a heartbeat frame.
pub const HEARTBEAT: u8 = amqp_codec::frame::FRAME_HEARTBEAT;

/// `(class, method)` of `basic.deliver`.
pub const BASIC_DELIVER: (u16, u16) = (60, 60);
/// `(class, method)` of `basic.ack`.
pub const BASIC_ACK: (u16, u16) = (60, 80);
/// `(class, method)` of `basic.nack`.
pub const BASIC_NACK: (u16, u16) = (60, 120);

/// A growable byte buffer that socket reads append to and frame parsing consumes from
/// the front; zeroed once, compacted instead of reallocated.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// A buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(4096)],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` unconsumed bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `source`, first making room for at least `min_room` more bytes
    /// (compacting, then growing). Returns the number of bytes read; 0 means end of stream.
    pub fn fill(&mut self, source: &mut impl Read, min_room: usize) -> io::Result<usize> {
        if self.buf.len() - self.end < min_room {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < min_room {
                let want = (self.end + min_room).next_power_of_two();
                self.buf.resize(want, 0);
            }
        }
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// One frame, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Frame type octet.
    pub kind: u8,
    /// Channel number.
    pub channel: u16,
    /// Payload, without framing.
    pub payload: &'a [u8],
}

/// Splits the first complete frame off `data`: the frame and the bytes it spans, or
/// `None` if more bytes are needed.
///
/// # Errors
/// A frame larger than `frame_max` (0: no limit) or a wrong frame-end octet.
pub fn split_frame(data: &[u8], frame_max: u32) -> Result<Option<(RawFrame<'_>, usize)>> {
    if data.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([data[3], data[4], data[5], data[6]]) as usize;
    let total = size + FRAME_OVERHEAD;
    if frame_max != 0 && total > frame_max as usize {
        bail!("server sent a {total}-byte frame, above the negotiated frame_max {frame_max}");
    }
    if data.len() < total {
        return Ok(None);
    }
    if data[total - 1] != FRAME_END {
        bail!("frame end octet {:#04x} is not 0xce", data[total - 1]);
    }
    let frame = RawFrame {
        kind: data[0],
        channel: u16::from_be_bytes([data[1], data[2]]),
        payload: &data[7..total - 1],
    };
    Ok(Some((frame, total)))
}

/// The `(class, method)` ids at the start of a method payload.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    let ids = payload.get(..4)?;
    Some((
        u16::from_be_bytes([ids[0], ids[1]]),
        u16::from_be_bytes([ids[2], ids[3]]),
    ))
}

/// `basic.deliver`'s delivery tag and redelivered flag, read in place.
pub fn deliver_fields(payload: &[u8]) -> Option<(u64, bool)> {
    let tag_len = usize::from(*payload.get(4)?);
    let at = 5 + tag_len;
    let tag = payload.get(at..at + 8)?;
    let redelivered = *payload.get(at + 8)? & 1 != 0;
    Some((u64::from_be_bytes(tag.try_into().ok()?), redelivered))
}

/// `basic.deliver`'s consumer tag, read in place.
pub fn deliver_consumer_tag(payload: &[u8]) -> Option<&[u8]> {
    let tag_len = usize::from(*payload.get(4)?);
    payload.get(5..5 + tag_len)
}

/// A publisher confirm (`basic.ack` or `basic.nack`): delivery tag and `multiple`.
pub fn confirm_fields(payload: &[u8]) -> Option<(u64, bool)> {
    let tag = payload.get(4..12)?;
    let multiple = *payload.get(12)? & 1 != 0;
    Some((u64::from_be_bytes(tag.try_into().ok()?), multiple))
}

/// A content header: the body size and the encoded properties.
pub fn header_fields(payload: &[u8]) -> Option<(u64, &[u8])> {
    let size = payload.get(4..12)?;
    Some((
        u64::from_be_bytes(size.try_into().ok()?),
        payload.get(12..)?,
    ))
}

/// Parses any method payload into `amq-protocol`'s types (copying it: not for hot paths).
///
/// # Errors
/// A payload `amqp-codec` cannot parse.
pub fn parse_other(payload: &[u8]) -> Result<AMQPClass> {
    match parse_method(Bytes::copy_from_slice(payload)).context("malformed method from server")? {
        Method::Other(class) => Ok(*class),
        Method::Publish(_) => bail!("server sent basic.publish"),
    }
}

/// The text of a `connection.close` or `channel.close`, for error messages; `None` for
/// any other method.
pub fn close_reason(class: &AMQPClass) -> Option<String> {
    use amqp_codec::amq_protocol::protocol::{channel, connection};
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(format!(
            "connection closed by broker: {} {}",
            c.reply_code, c.reply_text
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(format!(
            "channel closed by broker: {} {}",
            c.reply_code, c.reply_text
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::amq_protocol::protocol::basic;
    use amqp_codec::encode;
    use bytes::BytesMut;

    #[test]
    fn splits_frames_and_reads_hot_fields() {
        let mut out = BytesMut::new();
        encode::deliver(
            &mut out,
            1,
            "amq.ctag-xyz",
            encode::DeliveryInfo {
                delivery_tag: 77,
                redelivered: true,
                exchange: "",
                routing_key: "q",
            },
        );
        encode::content(&mut out, 1, &[0, 0], &[9u8; 20], 4096);
        encode::ack(&mut out, 1, 5, true);
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((frame, used)) = split_frame(&out[at..], 4096).expect("valid") {
            at += used;
            seen.push(frame.kind);
            match frame.kind {
                METHOD if method_ids(frame.payload) == Some(BASIC_DELIVER) => {
                    assert_eq!(deliver_fields(frame.payload), Some((77, true)));
                    assert_eq!(
                        deliver_consumer_tag(frame.payload),
                        Some(&b"amq.ctag-xyz"[..])
                    );
                }
                METHOD => {
                    assert_eq!(method_ids(frame.payload), Some(BASIC_ACK));
                    assert_eq!(confirm_fields(frame.payload), Some((5, true)));
                }
                HEADER => assert_eq!(header_fields(frame.payload), Some((20, &[0u8, 0][..]))),
                _ => assert_eq!(frame.payload, &[9u8; 20]),
            }
        }
        assert_eq!(at, out.len());
        assert_eq!(seen, [METHOD, HEADER, BODY, METHOD]);
    }

    #[test]
    fn partial_and_bad_frames() {
        let mut out = BytesMut::new();
        encode::ack(&mut out, 1, 5, false);
        assert!(split_frame(&out[..out.len() - 1], 0).expect("ok").is_none());
        let last = out.len() - 1;
        out[last] = 0;
        assert!(split_frame(&out, 0).is_err());
        assert!(split_frame(&out, 8).is_err());
    }

    #[test]
    fn other_methods_parse_through_the_codec() {
        let mut out = BytesMut::new();
        let qos = AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}));
        encode::method(&mut out, 1, &qos);
        let (frame, _) = split_frame(&out, 0).expect("valid").expect("whole");
        assert_eq!(parse_other(frame.payload).expect("parses"), qos);
    }

    #[test]
    fn read_buf_compacts_and_grows() {
        let mut rb = ReadBuf::with_capacity(4096);
        let mut src: &[u8] = &[1u8; 6000];
        assert_eq!(rb.fill(&mut src, 1).expect("read"), 4096);
        rb.consume(4000);
        assert_eq!(rb.fill(&mut src, 1000).expect("read"), 1904);
        assert_eq!(rb.data().len(), 96 + 1904);
        let mut more: &[u8] = &[2u8; 9000];
        rb.fill(&mut more, 8192).expect("read");
        assert_eq!(rb.data().len(), 2000 + 9000);
    }
}
