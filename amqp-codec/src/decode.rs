//! The frame decoder: protocol header, framing, `frame_max`, and method parsing.

use amq_protocol::protocol::parse_class;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use tokio_util::codec::Decoder;

use crate::error::{CodecError, ProtocolError};
use crate::frame::{
    CLASS_BASIC, ContentHeader, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD, Frame, Method, PROTOCOL_HEADER, Publish,
};
use crate::properties::PropertiesView;
use crate::reply::ReplyCode;

/// The most a frame header alone makes the decoder reserve for the rest of its frame.
const MAX_RESERVE: usize = 1024 * 1024;

/// Decodes the byte stream of one client connection into frames.
///
/// Body payloads and `basic.publish` strings are `split_to` slices of the read buffer,
/// so reading in large chunks costs no copy per frame.
#[derive(Debug)]
pub struct FrameDecoder {
    frame_max: u32,
    header_seen: bool,
}

impl FrameDecoder {
    /// A decoder that first expects the protocol header, then frames of at most
    /// `frame_max` bytes (framing included).
    pub fn new(frame_max: u32) -> Self {
        Self {
            frame_max,
            header_seen: false,
        }
    }

    /// A decoder for a stream whose protocol header was already consumed.
    pub fn after_header(frame_max: u32) -> Self {
        Self {
            frame_max,
            header_seen: true,
        }
    }

    /// Applies the `frame_max` negotiated in `connection.tune-ok`.
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    fn check_protocol_header(&mut self, src: &mut BytesMut) -> Result<bool, CodecError> {
        let have = src.len().min(PROTOCOL_HEADER.len());
        if src[..have] != PROTOCOL_HEADER[..have] {
            return Err(CodecError::BadProtocolHeader);
        }
        if have < PROTOCOL_HEADER.len() {
            return Ok(false);
        }
        src.advance(PROTOCOL_HEADER.len());
        self.header_seen = true;
        Ok(true)
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if !self.header_seen && !self.check_protocol_header(src)? {
            return Ok(None);
        }
        if src.len() < 7 {
            return Ok(None);
        }
        let frame_type = src[0];
        let channel = u16::from_be_bytes([src[1], src[2]]);
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
        let total = size + FRAME_OVERHEAD;
        if self.frame_max != 0 && total > self.frame_max as usize {
            return Err(ProtocolError::new(
                ReplyCode::FrameError,
                format!(
                    "frame size {total} exceeds negotiated frame_max {}",
                    self.frame_max
                ),
            )
            .into());
        }
        if src.len() < total {
            // Room for the rest of the frame, so that one read can bring it; but never
            // more than MAX_RESERVE on a peer's word: beyond that the buffer grows with
            // what arrives (frame_max 0 means no limit, and an operator may set a
            // large one).
            src.reserve((total - src.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        if src[total - 1] != FRAME_END {
            return Err(ProtocolError::new(
                ReplyCode::FrameError,
                format!("frame end octet {:#04x} is not 0xce", src[total - 1]),
            )
            .into());
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(7);
        frame.truncate(size);
        let frame = match frame_type {
            FRAME_METHOD => Frame::Method(channel, parse_method(frame)?),
            FRAME_HEADER => Frame::Header(channel, parse_header(frame)?),
            FRAME_BODY => Frame::Body(channel, frame),
            FRAME_HEARTBEAT if frame.is_empty() => Frame::Heartbeat(channel),
            FRAME_HEARTBEAT => {
                return Err(ProtocolError::new(
                    ReplyCode::FrameError,
                    "type 8, heartbeat frame with a payload: unknown_frame",
                )
                .into());
            }
            other => {
                return Err(ProtocolError::new(
                    ReplyCode::FrameError,
                    format!("unknown frame type {other}"),
                )
                .into());
            }
        };
        Ok(Some(frame))
    }
}

/// Parses a method payload; `basic.publish` without allocating.
///
/// # Errors
/// 540 NOT_IMPLEMENTED for an unknown class or method, 501 FRAME_ERROR for arguments
/// that do not decode (as RabbitMQ answers).
pub fn parse_method(payload: Bytes) -> Result<Method, ProtocolError> {
    if payload.len() < 4 {
        return Err(ProtocolError::new(
            ReplyCode::FrameError,
            "method frame too short",
        ));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if class_id == CLASS_BASIC && method_id == 40 {
        return parse_publish(payload)
            .map(Method::Publish)
            .ok_or_else(|| syntax_error(class_id, method_id));
    }
    if !is_known_method(class_id, method_id) {
        return Err(ProtocolError::new(
            ReplyCode::NotImplemented,
            format!("unknown method {class_id}/{method_id}"),
        )
        .for_method(class_id, method_id));
    }
    // amq-protocol drops basic.qos's prefetch_size; RabbitMQ refuses any but 0.
    if (class_id, method_id) == (CLASS_BASIC, 10)
        && let Some(size) = payload.get(4..8)
        && size != [0, 0, 0, 0]
    {
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        return Err(ProtocolError::new(
            ReplyCode::NotImplemented,
            format!("prefetch_size!=0 ({size})"),
        )
        .for_method(class_id, method_id));
    }
    if !crate::table::check_method_tables(&payload) {
        return Err(syntax_error(class_id, method_id));
    }
    match parse_class(&payload[..]) {
        Ok((&[], class)) => Ok(Method::Other(Box::new(class))),
        _ => Err(syntax_error(class_id, method_id)),
    }
}

/// Arguments that do not decode: RabbitMQ answers 501 FRAME_ERROR naming the method.
fn syntax_error(class_id: u16, method_id: u16) -> ProtocolError {
    ProtocolError::new(
        ReplyCode::FrameError,
        format!("cannot decode the arguments of method {class_id}/{method_id}"),
    )
    .for_method(class_id, method_id)
}

/// Whether (class, method) is an AMQP 0-9-1 method (RabbitMQ's extensions included).
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

fn parse_publish(mut p: Bytes) -> Option<Publish> {
    p.advance(4);
    if p.len() < 2 {
        return None;
    }
    p.advance(2); // reserved ticket
    let exchange = take_short_str(&mut p)?;
    let routing_key = take_short_str(&mut p)?;
    if p.len() != 1 {
        return None;
    }
    let bits = p[0];
    Some(Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

fn take_short_str(p: &mut Bytes) -> Option<ByteString> {
    let len = usize::from(*p.first()?);
    if p.len() < 1 + len {
        return None;
    }
    p.advance(1);
    ByteString::try_from(p.split_to(len)).ok()
}

fn parse_header(mut p: Bytes) -> Result<ContentHeader, ProtocolError> {
    if p.len() < 14 {
        return Err(ProtocolError::new(
            ReplyCode::FrameError,
            "content header frame too short",
        ));
    }
    let class_id = p.get_u16();
    let _weight = p.get_u16();
    let body_size = p.get_u64();
    PropertiesView::new(&p)?;
    Ok(ContentHeader {
        class_id,
        body_size,
        properties: p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;
    use amq_protocol::protocol::{AMQPClass, basic, queue};

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
        let mut dec = FrameDecoder::after_header(131072);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn protocol_header_is_checked() {
        let mut dec = FrameDecoder::new(131072);
        let mut buf = BytesMut::from(&b"AMQP"[..]);
        assert!(matches!(dec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"\x00\x00\x09\x01");
        assert!(matches!(dec.decode(&mut buf), Ok(None)));
        assert!(buf.is_empty());

        let mut dec = FrameDecoder::new(131072);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(CodecError::BadProtocolHeader)
        ));
        let mut dec = FrameDecoder::new(131072);
        let mut buf = BytesMut::from(&b"AMQP\x00\x00\x09\x00"[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(CodecError::BadProtocolHeader)
        ));
    }

    #[test]
    fn publish_is_parsed_zero_copy_and_matches_amq_protocol() {
        let mut out = BytesMut::new();
        encode::method(
            &mut out,
            3,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "ex".into(),
                routing_key: "rk.1".into(),
                mandatory: true,
                immediate: false,
            })),
        );
        let frames = decode_all(&out).expect("decodes");
        assert_eq!(
            frames,
            vec![Frame::Method(
                3,
                Method::Publish(Publish {
                    exchange: "ex".into(),
                    routing_key: "rk.1".into(),
                    mandatory: true,
                    immediate: false,
                })
            )]
        );
    }

    #[test]
    fn oversize_frame_is_a_frame_error() {
        let mut dec = FrameDecoder::after_header(4096);
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x10, 0][..]);
        match dec.decode(&mut buf) {
            Err(CodecError::Protocol(e)) => assert_eq!(e.code, ReplyCode::FrameError),
            other => panic!("expected frame error, got {other:?}"),
        }
    }

    /// Found by the codec fuzz target: with no frame_max (0), seven bytes announcing a
    /// 3.4 GB frame made the decoder reserve 3.4 GB before any of it arrived.
    #[test]
    fn regression_an_announced_size_reserves_at_most_a_bounded_buffer() {
        let mut dec = FrameDecoder::after_header(0);
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0xCE, 0x00, 0x00, 0x00][..]);
        assert!(matches!(dec.decode(&mut buf), Ok(None)));
        assert!(
            buf.capacity() <= 2 * MAX_RESERVE,
            "reserved {}",
            buf.capacity()
        );
        // The frame still decodes once it is all there.
        let mut dec = FrameDecoder::after_header(0);
        let size = 3 * MAX_RESERVE;
        let mut buf = BytesMut::from(&[3u8, 0, 1][..]);
        buf.extend_from_slice(&(size as u32).to_be_bytes());
        for chunk in 0..3 {
            assert!(matches!(dec.decode(&mut buf), Ok(None)), "chunk {chunk}");
            buf.extend_from_slice(&vec![7u8; MAX_RESERVE]);
        }
        buf.extend_from_slice(&[FRAME_END]);
        match dec.decode(&mut buf) {
            Ok(Some(Frame::Body(1, body))) => assert_eq!(body.len(), size),
            other => panic!("expected the body frame, got {other:?}"),
        }
    }

    #[test]
    fn bad_end_octet_and_unknown_type_are_frame_errors() {
        for bytes in [
            &[3u8, 0, 1, 0, 0, 0, 1, b'x', 0xCD][..],
            &[9u8, 0, 1, 0, 0, 0, 0, 0xCE][..],
        ] {
            match decode_all(bytes) {
                Err(CodecError::Protocol(e)) => assert_eq!(e.code, ReplyCode::FrameError),
                other => panic!("expected frame error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_malformed_methods_carry_their_codes() {
        let unknown = [1u8, 0, 1, 0, 0, 0, 4, 0x03, 0xE7, 0, 10, 0xCE];
        match decode_all(&unknown) {
            Err(CodecError::Protocol(e)) => assert_eq!(e.code, ReplyCode::NotImplemented),
            other => panic!("expected 540, got {other:?}"),
        }
        // queue.declare cut short after the class and method ids.
        let malformed = [1u8, 0, 1, 0, 0, 0, 5, 0, 50, 0, 10, 0, 0xCE];
        match decode_all(&malformed) {
            Err(CodecError::Protocol(e)) => {
                assert_eq!(e.code, ReplyCode::FrameError);
                assert_eq!((e.class_id, e.method_id), (50, 10));
            }
            other => panic!("expected 501, got {other:?}"),
        }
    }

    /// Found while writing the fuzz harness: `connection.start` carries a field table
    /// that the depth check did not cover, so a client that sent one nested thousands of
    /// levels deep made `amq-protocol` recurse until the broker's stack overflowed.
    #[test]
    fn regression_deep_table_in_connection_start_is_refused() {
        let mut nested = vec![b'V'];
        for _ in 0..crate::table::MAX_DEPTH + 8 {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(nested.len() as u32).to_be_bytes());
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        let mut entries = vec![1, b'k'];
        entries.extend_from_slice(&nested);
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        payload.extend_from_slice(&entries);
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"PLAIN");
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"en_US");
        match parse_method(Bytes::from(payload)) {
            Err(e) => assert_eq!(
                (e.code, e.class_id, e.method_id),
                (ReplyCode::FrameError, 10, 10)
            ),
            Ok(method) => panic!(
                "a table {} levels deep was decoded: {method:?}",
                crate::table::MAX_DEPTH + 9
            ),
        }
    }

    #[test]
    fn other_methods_decode_through_amq_protocol() {
        let mut out = BytesMut::new();
        let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            durable: true,
            ..Default::default()
        }));
        encode::method(&mut out, 1, &declare);
        let frames = decode_all(&out).expect("decodes");
        assert_eq!(
            frames,
            vec![Frame::Method(1, Method::Other(Box::new(declare)))]
        );
    }
}
