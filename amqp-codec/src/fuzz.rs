//! Fuzz harnesses for the codec: the checks the `codec` and `field_table` targets in the
//! repository's `fuzz/` directory run on every input.
//!
//! The targets are thin wrappers around [`codec`] and [`field_table`], so the same
//! checks also run in the ordinary test command: the tests at the foot of this file
//! replay every committed corpus file (`fuzz/corpus/<target>/`) and a few seconds of
//! seeded random inputs. Each harness panics when the codec breaks a promise; anything
//! else (an input the codec rightly refuses) simply returns.
//!
//! Compiled for tests and with the `fuzzing` feature only.

use std::collections::HashMap;

use amq_protocol::protocol::{AMQPClass, basic, connection, exchange, queue};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::content::{Content, ContentAssembler};
use crate::decode::FrameDecoder;
use crate::encode;
use crate::error::{CodecError, ProtocolError};
use crate::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_MIN_SIZE, FRAME_OVERHEAD, Frame,
    Method, Publish,
};
use crate::properties::{PropertiesView, Property, decode_properties, encode_properties};
use crate::reply::ReplyCode;
use crate::table::{Entries, MAX_DEPTH, check_method_tables, check_table, length_prefixed};

/// Inputs at most this long are also given to `amq-protocol`'s recursive decoders when
/// the bounded walker refused them: five bytes per nesting level keep them shallow
/// enough for any thread's stack.
const SMALL_INPUT: usize = 5 * (MAX_DEPTH + 16);

/// Feeds a byte stream to a [`FrameDecoder`] twice, whole and cut at pseudo-random read
/// splits, then checks what came out.
///
/// Input layout: two bytes give `frame_max` (times four, so 0 means unlimited and
/// values below 4096 occur), one byte seeds the read splits, one flag byte says
/// whether the stream starts with the protocol header (bit 0); the rest is the stream.
///
/// # Panics
/// When the codec breaks a promise:
/// - decoding depends on how the stream was split into reads;
/// - a decode error is not a connection error with a short reply text;
/// - a decoded frame, encoded again, does not decode to the same frame;
/// - a method carries a field table nested deeper than [`MAX_DEPTH`];
/// - a message assembled from publish, header and bodies, split again at `frame_max` by
///   [`encode::content`], does not reassemble to the same message.
pub fn codec(data: &[u8]) {
    let [hi, lo, seed, flags, stream @ ..] = data else {
        return;
    };
    let frame_max = u32::from(u16::from_be_bytes([*hi, *lo])) * 4;
    let with_header = flags & 1 != 0;
    let whole = decode_stream(stream, frame_max, with_header, &mut || usize::MAX);
    let mut splits = Splits::new(*seed);
    let split = decode_stream(stream, frame_max, with_header, &mut || splits.next());
    let encoded: Vec<Vec<u8>> = whole.frames.iter().map(encode_frame).collect();
    let encoded_split: Vec<Vec<u8>> = split.frames.iter().map(encode_frame).collect();
    assert_eq!(encoded, encoded_split, "frames depend on the read splits");
    assert_eq!(
        whole.end, split.end,
        "the outcome depends on the read splits"
    );
    if let End::Error(error) = &whole.end {
        check_error(error);
    }
    for (frame, bytes) in whole.frames.iter().zip(&encoded) {
        check_tables(frame);
        round_trip(frame, bytes);
    }
    assemble(&whole.frames, frame_max);
}

/// Runs the field-table walker, the content-properties reader (and the `x-partition`
/// annotation of [`encode::content_annotated`]) and the method-table check on
/// arbitrary bytes, comparing them with `amq-protocol`'s decoders.
///
/// Input layout: one byte picks the check (modulo 3: a field table, content
/// properties, a method payload); the rest is its input.
///
/// # Panics
/// When the walker and the decoder disagree on a table both accept or on its length, a
/// shallow table the decoder reads is refused by the walker, a decoded table encodes to
/// something that does not decode to the same, the properties reader breaks a
/// promise (see [`PropertiesView`]), or annotating valid properties with `x-partition`
/// gives properties that are not the same plus exactly that one header.
pub fn field_table(data: &[u8]) {
    let Some((mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_field_table(bytes),
        1 => check_properties(bytes),
        _ => check_method_payload(bytes),
    }
}

/// How decoding a stream ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The stream ran out, leaving this many bytes of an unfinished frame.
    Incomplete(usize),
    /// The stream did not start with `AMQP 0-9-1`.
    BadProtocolHeader,
    /// A protocol error.
    Error(ProtocolError),
}

struct Decoded {
    frames: Vec<Frame>,
    end: End,
}

/// Read sizes from a small xorshift generator: mostly small, sometimes large, so that
/// frame boundaries, headers and the protocol header all get cut.
struct Splits(u32);

impl Splits {
    fn new(seed: u8) -> Self {
        Self(u32::from(seed).wrapping_mul(0x9E37_79B9) | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        match self.0 % 8 {
            0..=3 => 1 + (self.0 >> 8) as usize % 8,
            4 | 5 => 1 + (self.0 >> 8) as usize % 64,
            6 => 1 + (self.0 >> 8) as usize % 4096,
            _ => usize::MAX,
        }
    }
}

fn decode_stream(
    stream: &[u8],
    frame_max: u32,
    with_header: bool,
    read_len: &mut dyn FnMut() -> usize,
) -> Decoded {
    let mut decoder = if with_header {
        FrameDecoder::new(frame_max)
    } else {
        FrameDecoder::after_header(frame_max)
    };
    let mut buf = BytesMut::new();
    let mut rest = stream;
    let mut frames = Vec::new();
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(CodecError::BadProtocolHeader) => {
                    return Decoded {
                        frames,
                        end: End::BadProtocolHeader,
                    };
                }
                Err(CodecError::Protocol(error)) => {
                    return Decoded {
                        frames,
                        end: End::Error(error),
                    };
                }
                Err(CodecError::Io(error)) => panic!("a decoder without a socket failed: {error}"),
            }
        }
        if rest.is_empty() {
            return Decoded {
                frames,
                end: End::Incomplete(buf.len()),
            };
        }
        let n = read_len().clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Every error the codec reports must close the connection, with a text that fits the
/// short string of `connection.close`.
fn check_error(error: &ProtocolError) {
    assert!(
        error.code.is_connection_error(),
        "codec error {error:?} must be a connection error"
    );
    assert!(!error.text.is_empty(), "codec error {error:?} has no text");
    assert!(
        error.reply_text().len() <= 255,
        "reply text of {error:?} does not fit a short string"
    );
}

fn framed(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.put_u8(frame_type);
    out.put_u16(channel);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.put_u8(FRAME_END);
    out
}

/// The generated form of a zero-copy `basic.publish`.
fn publish_class(p: &Publish) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: (&*p.exchange).into(),
        routing_key: (&*p.routing_key).into(),
        mandatory: p.mandatory,
        immediate: p.immediate,
    }))
}

/// A frame in its wire form, written by the codec's own encoders where it has them.
fn encode_frame(frame: &Frame) -> Vec<u8> {
    match frame {
        Frame::Method(channel, Method::Publish(p)) => {
            let mut out = BytesMut::new();
            encode::method(&mut out, *channel, &publish_class(p));
            out.to_vec()
        }
        Frame::Method(channel, Method::Other(class)) => {
            let mut out = BytesMut::new();
            encode::method(&mut out, *channel, class);
            out.to_vec()
        }
        Frame::Header(channel, header) => {
            let mut payload = Vec::with_capacity(12 + header.properties.len());
            payload.put_u16(header.class_id);
            payload.put_u16(0);
            payload.put_u64(header.body_size);
            payload.put_slice(&header.properties);
            framed(FRAME_HEADER, *channel, &payload)
        }
        Frame::Body(channel, body) => framed(FRAME_BODY, *channel, body),
        Frame::Heartbeat(channel) => framed(FRAME_HEARTBEAT, *channel, &[]),
    }
}

/// A decoded frame, encoded again, decodes to itself: encoding is stable after one pass
/// (the first may normalise: unused flag bits, duplicate table keys, type tag aliases).
fn round_trip(frame: &Frame, bytes: &[u8]) {
    let mut decoder = FrameDecoder::after_header(0);
    let mut buf = BytesMut::from(bytes);
    let again = match decoder.decode(&mut buf) {
        Ok(Some(again)) => again,
        other => panic!("{frame:?} was encoded as {bytes:?}, which decodes to {other:?}"),
    };
    assert!(buf.is_empty(), "{frame:?} encodes to more than one frame");
    assert_eq!(
        encode_frame(&again),
        bytes,
        "{frame:?} encodes to a frame that decodes to {again:?}"
    );
}

/// The field tables a method carries, for the methods `amq-protocol` gives one.
fn method_tables(class: &AMQPClass) -> Vec<&FieldTable> {
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Start(m)) => vec![&m.server_properties],
        AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => vec![&m.client_properties],
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => vec![&m.arguments],
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => vec![&m.arguments],
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => vec![&m.arguments],
        AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => vec![&m.arguments],
        AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => vec![&m.arguments],
        AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => vec![&m.arguments],
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => vec![&m.arguments],
        _ => Vec::new(),
    }
}

/// Levels of tables and arrays in a table, itself included.
fn table_depth(table: &FieldTable) -> usize {
    1 + table.inner().values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::FieldTable(t) => table_depth(t),
        AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The decoder must never hand over (and so never have recursed into) a table nested
/// deeper than the walker allows: the top table is level 0, so MAX_DEPTH + 1 levels.
fn check_tables(frame: &Frame) {
    if let Frame::Method(_, Method::Other(class)) = frame {
        for table in method_tables(class) {
            let depth = table_depth(table);
            assert!(
                depth <= MAX_DEPTH + 1,
                "method {:?} carries a table {depth} levels deep",
                (class.get_amqp_class_id(), class.get_amqp_method_id())
            );
        }
    }
}

/// Runs the frames through one content assembler per channel, as a connection does,
/// until the first error; every message that completes must survive being split again.
fn assemble(frames: &[Frame], frame_max: u32) {
    let mut channels: HashMap<u16, ContentAssembler> = HashMap::new();
    for frame in frames {
        let (channel, result) = match frame {
            Frame::Method(channel, Method::Publish(p)) => (
                *channel,
                channels
                    .entry(*channel)
                    .or_default()
                    .start(p.clone())
                    .map(|()| None),
            ),
            Frame::Method(channel, Method::Other(_)) => (
                *channel,
                channels
                    .entry(*channel)
                    .or_default()
                    .expect_method()
                    .map(|()| None),
            ),
            Frame::Header(channel, header) => (
                *channel,
                channels.entry(*channel).or_default().header(header.clone()),
            ),
            Frame::Body(channel, body) => (
                *channel,
                channels.entry(*channel).or_default().body(body.clone()),
            ),
            Frame::Heartbeat(_) => continue,
        };
        match result {
            Ok(Some(content)) => {
                let idle = channels.get(&channel).is_none_or(ContentAssembler::is_idle);
                assert!(idle, "an assembler that completed a message is not idle");
                resplit(channel, &content, frame_max);
            }
            Ok(None) => {}
            Err(error) => {
                check_error(&error);
                return;
            }
        }
    }
}

/// Writes a message as the broker delivers it (header, then bodies cut at `frame_max`),
/// checks the framing, and assembles it again.
fn resplit(channel: u16, content: &Content, frame_max: u32) {
    let frame_max = frame_max.max(FRAME_MIN_SIZE);
    let mut out = BytesMut::new();
    encode::method(&mut out, channel, &publish_class(&content.publish));
    encode::content(
        &mut out,
        channel,
        &content.properties,
        &content.body,
        frame_max,
    );
    let mut decoder = FrameDecoder::after_header(0);
    let mut assembler = ContentAssembler::default();
    let mut assembled = None;
    let mut bodies = 0usize;
    while let Some(frame) = decoder.decode(&mut out).unwrap_or_else(|e| {
        panic!("content written by encode::content does not decode: {e}");
    }) {
        assert!(
            assembled.is_none(),
            "frames left after the message completed"
        );
        let step = match frame {
            Frame::Method(_, Method::Publish(p)) => assembler.start(p).map(|()| None),
            Frame::Header(_, header) => {
                assert_eq!(header.body_size, content.body.len() as u64);
                assembler.header(header)
            }
            Frame::Body(_, body) => {
                bodies += 1;
                assert!(!body.is_empty(), "an empty body frame was written");
                assert!(
                    body.len() + FRAME_OVERHEAD <= frame_max as usize,
                    "a body frame exceeds frame_max {frame_max}"
                );
                assembler.body(body)
            }
            other => panic!("encode::content wrote {other:?}"),
        };
        match step {
            Ok(done) => assembled = done,
            Err(e) => panic!("content written by encode::content does not assemble: {e}"),
        }
    }
    assert!(out.is_empty(), "encode::content left a partial frame");
    if content.body.is_empty() {
        assert_eq!(bodies, 0, "an empty body must be a header alone");
    }
    assert_eq!(
        assembled.as_ref(),
        Some(content),
        "content changed on re-split"
    );
}

fn encode_table(table: &FieldTable) -> Vec<u8> {
    match cookie_factory::r#gen(gen_field_table(table), Vec::new()) {
        Ok((bytes, _)) => bytes,
        Err(e) => panic!("encoding a field table into a Vec failed: {e:?}"),
    }
}

fn check_field_table(bytes: &[u8]) {
    let walked = check_table(bytes);
    if walked.is_none() && bytes.len() > SMALL_INPUT {
        // Possibly deep: the recursive decoder must not see it.
        return;
    }
    let parsed = match parse_field_table(bytes) {
        Ok((rest, table)) => Some((bytes.len() - rest.len(), table)),
        Err(_) => None,
    };
    let Some((used, table)) = parsed else {
        // The walker may accept what the decoder refuses (keys that are not UTF-8): the
        // connection then answers with a syntax error instead of crashing.
        return;
    };
    let depth = table_depth(&table);
    match walked {
        Some(walked) => assert_eq!(walked, used, "walker and decoder disagree on the length"),
        None => assert!(
            depth > MAX_DEPTH + 1,
            "the walker refused a table {depth} levels deep that the decoder reads"
        ),
    }
    if walked.is_none() {
        return;
    }
    let encoded = encode_table(&table);
    assert_eq!(
        check_table(&encoded),
        Some(encoded.len()),
        "the walker refuses a table amq-protocol encoded"
    );
    match parse_field_table(&encoded[..]) {
        Ok((rest, again)) => {
            assert!(rest.is_empty());
            assert_eq!(
                encode_table(&again),
                encoded,
                "table encoding is not stable"
            );
        }
        Err(e) => panic!("an encoded table does not decode: {e:?}"),
    }
}

const PROPERTIES: [Property; 14] = [
    Property::ContentType,
    Property::ContentEncoding,
    Property::Headers,
    Property::DeliveryMode,
    Property::Priority,
    Property::CorrelationId,
    Property::ReplyTo,
    Property::Expiration,
    Property::MessageId,
    Property::Timestamp,
    Property::Type,
    Property::UserId,
    Property::AppId,
    Property::ClusterId,
];

fn check_properties(bytes: &[u8]) {
    check_annotated(bytes);
    let view = match PropertiesView::new(bytes) {
        Ok(view) => view,
        Err(error) => {
            assert_eq!(error.code, ReplyCode::SyntaxError);
            if bytes.len() <= SMALL_INPUT
                && let Some(props) = decode_properties(bytes)
            {
                // amq-protocol read it: only tables too deep may be refused.
                let depth = props.headers().as_ref().map_or(0, table_depth);
                assert!(
                    depth > MAX_DEPTH + 1,
                    "properties amq-protocol reads were refused"
                );
            }
            return;
        }
    };
    for property in PROPERTIES {
        let raw = view.raw(property);
        let stripped = view.without(property);
        let stripped_view = PropertiesView::new(&stripped)
            .unwrap_or_else(|e| panic!("properties without {property:?} are malformed: {e}"));
        assert_eq!(stripped_view.raw(property), None);
        if raw.is_none() {
            assert_eq!(
                &stripped[..],
                bytes,
                "removing an absent property changed bytes"
            );
        }
        for other in PROPERTIES.iter().filter(|p| **p != property) {
            assert_eq!(view.raw(*other), stripped_view.raw(*other));
        }
    }
    let _ = (view.delivery_mode(), view.priority(), view.headers());
    let Some(props) = decode_properties(bytes) else {
        // Short strings that are not UTF-8 (amq-protocol refuses them; we pass them on).
        return;
    };
    assert_eq!(*props.delivery_mode(), view.delivery_mode());
    assert_eq!(*props.priority(), view.priority());
    let encoded = encode_properties(&props);
    PropertiesView::new(&encoded)
        .unwrap_or_else(|e| panic!("properties amq-protocol encoded are refused: {e}"));
    let again = decode_properties(&encoded).unwrap_or_else(|| {
        panic!("properties amq-protocol encoded do not decode");
    });
    assert_eq!(
        encode_properties(&again),
        encoded,
        "properties encoding is not stable"
    );
}

/// The entries of a headers table other than `x-partition`, as encoded.
fn other_entries(table: Option<&[u8]>) -> Vec<&[u8]> {
    let Some((body, _)) = table.and_then(length_prefixed) else {
        return Vec::new();
    };
    Entries::new(body)
        .filter(|e| e.name != encode::PARTITION_HEADER.as_bytes())
        .map(|e| e.encoded)
        .collect()
}

/// Annotates `bytes` as content properties with `x-partition` and checks the result:
/// never a panic; valid properties stay valid, with every other property and header
/// as it was and exactly one `x-partition` holding the partition.
fn check_annotated(bytes: &[u8]) {
    let partition = i64::from_be_bytes(array8(bytes)).rotate_left(bytes.len() as u32 % 64);
    let mut out = BytesMut::new();
    encode::content_annotated(
        &mut out,
        1,
        bytes,
        &[encode::Annotation::partition(partition)],
        &[],
        0,
    );
    // One header frame: type, channel, size; class, weight, body size; properties; end.
    let annotated = &out[7 + 12..out.len() - 1];
    let Ok(view) = PropertiesView::new(bytes) else {
        return;
    };
    if bytes.get(1).is_some_and(|low| low & 1 != 0) {
        // A second flags word announced: no layout to splice into, copied as it is.
        assert_eq!(
            annotated, bytes,
            "properties with a flags continuation changed"
        );
        return;
    }
    let after = PropertiesView::new(annotated)
        .unwrap_or_else(|e| panic!("annotated properties are malformed: {e}"));
    for property in PROPERTIES.iter().filter(|p| **p != Property::Headers) {
        assert_eq!(
            view.raw(*property),
            after.raw(*property),
            "{property:?} changed"
        );
    }
    let table = after
        .raw(Property::Headers)
        .expect("annotated without headers");
    let (body, _) = length_prefixed(table).expect("the headers are a table");
    let partitions: Vec<_> = Entries::new(body)
        .filter(|e| e.name == encode::PARTITION_HEADER.as_bytes())
        .map(|e| (e.tag, e.value))
        .collect();
    assert_eq!(partitions, [(b'l', &partition.to_be_bytes()[..])]);
    assert_eq!(
        other_entries(view.raw(Property::Headers)),
        other_entries(Some(table)),
        "other headers changed"
    );
    if let Some(props) = decode_properties(bytes) {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            encode::PARTITION_HEADER.into(),
            AMQPValue::LongLongInt(partition),
        );
        assert_eq!(
            decode_properties(annotated),
            Some(props.with_headers(headers)),
            "amq-protocol reads other properties from the annotated ones"
        );
    }
}

/// The first eight bytes of `bytes`, zero-padded.
fn array8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

fn check_method_payload(bytes: &[u8]) {
    if !check_method_tables(bytes) {
        return;
    }
    let payload = Bytes::copy_from_slice(bytes);
    match crate::decode::parse_method(payload) {
        Ok(method) => check_tables(&Frame::Method(1, method)),
        Err(error) => check_error(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    fn corpus(target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        files
    }

    fn replay(target: &str, harness: fn(&[u8])) {
        for file in corpus(target) {
            let data = std::fs::read(&file).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{} fails", file.display());
        }
    }

    /// Seeded random inputs for `budget`: random bytes, and corpus files with random
    /// bytes overwritten, so that the run starts from inputs that get somewhere.
    fn random_run(target: &str, harness: fn(&[u8]), budget: Duration) {
        let seeds: Vec<Vec<u8>> = corpus(target)
            .iter()
            .map(|f| std::fs::read(f).expect("read a corpus file"))
            .collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let started = Instant::now();
        while started.elapsed() < budget {
            let mut input = if next() % 4 == 0 {
                (0..next() % 512).map(|_| next() as u8).collect()
            } else {
                seeds[next() as usize % seeds.len()].clone()
            };
            for _ in 0..1 + next() % 4 {
                if input.is_empty() {
                    break;
                }
                let at = next() as usize % input.len();
                input[at] = next() as u8;
            }
            let outcome = std::panic::catch_unwind(|| harness(&input));
            assert!(outcome.is_ok(), "input {input:?} fails");
        }
    }

    #[test]
    fn codec_corpus_replays() {
        replay("codec", codec);
    }

    #[test]
    fn field_table_corpus_replays() {
        replay("field_table", field_table);
    }

    #[test]
    fn codec_random_run() {
        random_run("codec", codec, Duration::from_secs(2));
    }

    #[test]
    fn field_table_random_run() {
        random_run("field_table", field_table, Duration::from_secs(2));
    }
}
