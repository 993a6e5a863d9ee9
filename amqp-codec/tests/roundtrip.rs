//! Property tests for the frame layer: whatever is encoded comes back exactly, however
//! the byte stream is cut into reads, and no input makes the decoder panic.
//!
//! - Any method frame (`AMQPClass` values of every class, with random names and argument
//!   tables), written with `encode::method` and read back with `FrameDecoder`.
//! - Any published message (random exchange, routing key, `BasicProperties`, body of
//!   0..300 KiB) written with `encode::method` + `encode::content` at any `frame_max` in
//!   4096..=262144 and read back with `FrameDecoder` + `ContentAssembler`.
//! - The hand-encoded hot-path frames (`deliver`, `get_ok`, `ack`, `nack`) are byte for
//!   byte what `amq-protocol` generates.
//! - Random bytes, random frames and mutated valid frames give `Ok` or an error from the
//!   decoder and the assembler, never a panic.
//!
//! Failures that proptest shrank are kept below as named regular tests.

use amqp_codec::amq_protocol::protocol::{
    AMQPClass, BasicProperties, access, basic, channel, confirm, connection, exchange, queue, tx,
};
use amqp_codec::amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use amqp_codec::encode::{self, DeliveryInfo};
use amqp_codec::frame::{FRAME_OVERHEAD, Frame, Method, PROTOCOL_HEADER};
use amqp_codec::properties::{Property, encode_properties};
use amqp_codec::{
    CodecError, Content, ContentAssembler, FrameDecoder, PropertiesView, ProtocolError, ReplyCode,
};
use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// A short string: mostly name-like ASCII, sometimes any Unicode, sometimes near 255 bytes.
fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9_.:/-]{0,32}",
        2 => "\\PC{0,40}",
        1 => "[a-z]{240,255}",
    ]
}

fn short() -> impl Strategy<Value = ShortString> {
    short_string().prop_map(ShortString::from)
}

fn long_string() -> impl Strategy<Value = LongString> {
    vec(any::<u8>(), 0..80).prop_map(LongString::from)
}

fn float() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN is not equal to itself", |f| !f.is_nan())
}

fn double() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan())
}

/// Any field value that survives the wire with RabbitMQ's type tags. `ShortString`
/// values have no tag of their own and are not sent.
fn amqp_value() -> BoxedStrategy<AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        float().prop_map(AMQPValue::Float),
        double().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        long_string().prop_map(AMQPValue::LongString),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..40).prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(2, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            btree_map(short(), inner, 0..4)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
    .boxed()
}

/// An argument table, as in `queue.declare` (`x-message-ttl`, …) or message headers.
fn field_table() -> BoxedStrategy<FieldTable> {
    prop_oneof![
        1 => Just(FieldTable::default()),
        4 => btree_map(short(), amqp_value(), 0..6).prop_map(FieldTable::from),
    ]
    .boxed()
}

fn connection_method() -> BoxedStrategy<connection::AMQPMethod> {
    use connection::*;
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            field_table(),
            long_string(),
            long_string()
        )
            .prop_map(
                |(version_major, version_minor, server_properties, mechanisms, locales)| {
                    AMQPMethod::Start(Start {
                        version_major,
                        version_minor,
                        server_properties,
                        mechanisms,
                        locales,
                    })
                }
            ),
        (field_table(), short(), long_string(), short()).prop_map(
            |(client_properties, mechanism, response, locale)| AMQPMethod::StartOk(StartOk {
                client_properties,
                mechanism,
                response,
                locale,
            })
        ),
        long_string().prop_map(|challenge| AMQPMethod::Secure(Secure { challenge })),
        long_string().prop_map(|response| AMQPMethod::SecureOk(SecureOk { response })),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| AMQPMethod::Tune(Tune {
                channel_max,
                frame_max,
                heartbeat,
            })
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| AMQPMethod::TuneOk(TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })
        ),
        short().prop_map(|virtual_host| AMQPMethod::Open(Open { virtual_host })),
        Just(AMQPMethod::OpenOk(OpenOk {})),
        (any::<u16>(), short(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| AMQPMethod::Close(Close {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        ),
        Just(AMQPMethod::CloseOk(CloseOk {})),
        short().prop_map(|reason| AMQPMethod::Blocked(Blocked { reason })),
        Just(AMQPMethod::Unblocked(Unblocked {})),
        (long_string(), short()).prop_map(|(new_secret, reason)| AMQPMethod::UpdateSecret(
            UpdateSecret { new_secret, reason }
        )),
        Just(AMQPMethod::UpdateSecretOk(UpdateSecretOk {})),
    ]
    .boxed()
}

fn channel_method() -> BoxedStrategy<channel::AMQPMethod> {
    use channel::*;
    prop_oneof![
        Just(AMQPMethod::Open(Open {})),
        Just(AMQPMethod::OpenOk(OpenOk {})),
        any::<bool>().prop_map(|active| AMQPMethod::Flow(Flow { active })),
        any::<bool>().prop_map(|active| AMQPMethod::FlowOk(FlowOk { active })),
        (any::<u16>(), short(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| AMQPMethod::Close(Close {
                reply_code,
                reply_text,
                class_id,
                method_id,
            })
        ),
        Just(AMQPMethod::CloseOk(CloseOk {})),
    ]
    .boxed()
}

fn access_method() -> BoxedStrategy<access::AMQPMethod> {
    use access::*;
    prop_oneof![
        (short(), any::<[bool; 5]>()).prop_map(|(realm, b)| AMQPMethod::Request(Request {
            realm,
            exclusive: b[0],
            passive: b[1],
            active: b[2],
            write: b[3],
            read: b[4],
        })),
        Just(AMQPMethod::RequestOk(RequestOk {})),
    ]
    .boxed()
}

fn exchange_method() -> BoxedStrategy<exchange::AMQPMethod> {
    use exchange::*;
    prop_oneof![
        (short(), short(), any::<[bool; 5]>(), field_table()).prop_map(
            |(exchange, kind, b, arguments)| AMQPMethod::Declare(Declare {
                exchange,
                kind,
                passive: b[0],
                durable: b[1],
                auto_delete: b[2],
                internal: b[3],
                nowait: b[4],
                arguments,
            })
        ),
        Just(AMQPMethod::DeclareOk(DeclareOk {})),
        (short(), any::<bool>(), any::<bool>()).prop_map(|(exchange, if_unused, nowait)| {
            AMQPMethod::Delete(Delete {
                exchange,
                if_unused,
                nowait,
            })
        }),
        Just(AMQPMethod::DeleteOk(DeleteOk {})),
        (short(), short(), short(), any::<bool>(), field_table()).prop_map(
            |(destination, source, routing_key, nowait, arguments)| AMQPMethod::Bind(Bind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            })
        ),
        Just(AMQPMethod::BindOk(BindOk {})),
        (short(), short(), short(), any::<bool>(), field_table()).prop_map(
            |(destination, source, routing_key, nowait, arguments)| AMQPMethod::Unbind(Unbind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            })
        ),
        Just(AMQPMethod::UnbindOk(UnbindOk {})),
    ]
    .boxed()
}

fn queue_method() -> BoxedStrategy<queue::AMQPMethod> {
    use queue::*;
    prop_oneof![
        3 => (short(), any::<[bool; 5]>(), field_table()).prop_map(|(queue, b, arguments)| {
            AMQPMethod::Declare(Declare {
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            })
        }),
        1 => (short(), any::<u32>(), any::<u32>()).prop_map(
            |(queue, message_count, consumer_count)| AMQPMethod::DeclareOk(DeclareOk {
                queue,
                message_count,
                consumer_count,
            })
        ),
        1 => (short(), short(), short(), any::<bool>(), field_table()).prop_map(
            |(queue, exchange, routing_key, nowait, arguments)| AMQPMethod::Bind(Bind {
                queue,
                exchange,
                routing_key,
                nowait,
                arguments,
            })
        ),
        1 => Just(AMQPMethod::BindOk(BindOk {})),
        1 => (short(), any::<bool>()).prop_map(|(queue, nowait)| AMQPMethod::Purge(Purge {
            queue,
            nowait
        })),
        1 => any::<u32>().prop_map(|message_count| AMQPMethod::PurgeOk(PurgeOk { message_count })),
        1 => (short(), any::<[bool; 3]>()).prop_map(|(queue, b)| AMQPMethod::Delete(Delete {
            queue,
            if_unused: b[0],
            if_empty: b[1],
            nowait: b[2],
        })),
        1 => any::<u32>()
            .prop_map(|message_count| AMQPMethod::DeleteOk(DeleteOk { message_count })),
        1 => (short(), short(), short(), field_table()).prop_map(
            |(queue, exchange, routing_key, arguments)| AMQPMethod::Unbind(Unbind {
                queue,
                exchange,
                routing_key,
                arguments,
            })
        ),
        1 => Just(AMQPMethod::UnbindOk(UnbindOk {})),
    ]
    .boxed()
}

fn basic_method() -> BoxedStrategy<basic::AMQPMethod> {
    use basic::*;
    prop_oneof![
        1 => (any::<u16>(), any::<bool>()).prop_map(|(prefetch_count, global)| AMQPMethod::Qos(
            Qos {
                prefetch_count,
                global
            }
        )),
        1 => Just(AMQPMethod::QosOk(QosOk {})),
        1 => (short(), short(), any::<[bool; 4]>(), field_table()).prop_map(
            |(queue, consumer_tag, b, arguments)| AMQPMethod::Consume(Consume {
                queue,
                consumer_tag,
                no_local: b[0],
                no_ack: b[1],
                exclusive: b[2],
                nowait: b[3],
                arguments,
            })
        ),
        1 => short().prop_map(|consumer_tag| AMQPMethod::ConsumeOk(ConsumeOk { consumer_tag })),
        1 => (short(), any::<bool>()).prop_map(|(consumer_tag, nowait)| AMQPMethod::Cancel(Cancel {
            consumer_tag,
            nowait
        })),
        1 => short().prop_map(|consumer_tag| AMQPMethod::CancelOk(CancelOk { consumer_tag })),
        3 => publish_method().prop_map(AMQPMethod::Publish),
        1 => (any::<u16>(), short(), short(), short()).prop_map(
            |(reply_code, reply_text, exchange, routing_key)| AMQPMethod::Return(Return {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            })
        ),
        3 => (short(), any::<u64>(), any::<bool>(), short(), short()).prop_map(
            |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                AMQPMethod::Deliver(Deliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                })
            }
        ),
        1 => (short(), any::<bool>()).prop_map(|(queue, no_ack)| AMQPMethod::Get(Get {
            queue,
            no_ack
        })),
        1 => (any::<u64>(), any::<bool>(), short(), short(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, routing_key, message_count)| {
                AMQPMethod::GetOk(GetOk {
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    message_count,
                })
            }
        ),
        1 => Just(AMQPMethod::GetEmpty(GetEmpty {})),
        3 => (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| AMQPMethod::Ack(
            Ack {
                delivery_tag,
                multiple
            }
        )),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, requeue)| AMQPMethod::Reject(
            Reject {
                delivery_tag,
                requeue
            }
        )),
        1 => any::<bool>().prop_map(|requeue| AMQPMethod::RecoverAsync(RecoverAsync { requeue })),
        1 => any::<bool>().prop_map(|requeue| AMQPMethod::Recover(Recover { requeue })),
        1 => Just(AMQPMethod::RecoverOk(RecoverOk {})),
        1 => (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(delivery_tag, multiple, requeue)| AMQPMethod::Nack(Nack {
                delivery_tag,
                multiple,
                requeue,
            })
        ),
    ]
    .boxed()
}

fn publish_method() -> impl Strategy<Value = basic::Publish> {
    (short(), short(), any::<bool>(), any::<bool>()).prop_map(
        |(exchange, routing_key, mandatory, immediate)| basic::Publish {
            exchange,
            routing_key,
            mandatory,
            immediate,
        },
    )
}

fn confirm_method() -> impl Strategy<Value = confirm::AMQPMethod> {
    use confirm::*;
    prop_oneof![
        any::<bool>().prop_map(|nowait| AMQPMethod::Select(Select { nowait })),
        Just(AMQPMethod::SelectOk(SelectOk {})),
    ]
}

fn tx_method() -> impl Strategy<Value = tx::AMQPMethod> {
    use tx::*;
    prop_oneof![
        Just(AMQPMethod::Select(Select {})),
        Just(AMQPMethod::SelectOk(SelectOk {})),
        Just(AMQPMethod::Commit(Commit {})),
        Just(AMQPMethod::CommitOk(CommitOk {})),
        Just(AMQPMethod::Rollback(Rollback {})),
        Just(AMQPMethod::RollbackOk(RollbackOk {})),
    ]
}

/// Any method of any class, weighted towards the ones a broker sees most.
fn amqp_class() -> BoxedStrategy<AMQPClass> {
    prop_oneof![
        2 => connection_method().prop_map(AMQPClass::Connection),
        1 => channel_method().prop_map(AMQPClass::Channel),
        1 => access_method().prop_map(AMQPClass::Access),
        2 => exchange_method().prop_map(AMQPClass::Exchange),
        3 => queue_method().prop_map(AMQPClass::Queue),
        5 => basic_method().prop_map(AMQPClass::Basic),
        1 => confirm_method().prop_map(AMQPClass::Confirm),
        1 => tx_method().prop_map(AMQPClass::Tx),
    ]
    .boxed()
}

/// Basic properties with any subset set; headers kept small enough for a 4096 frame.
fn basic_properties() -> BoxedStrategy<BasicProperties> {
    let strings = vec(proptest::option::of(short()), 10);
    (
        strings,
        proptest::option::of(field_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(s, headers, delivery_mode, priority, timestamp)| {
            let mut s = s.into_iter();
            let mut p = BasicProperties::default();
            let mut next = || s.next().flatten();
            if let Some(v) = next() {
                p = p.with_content_type(v);
            }
            if let Some(v) = next() {
                p = p.with_content_encoding(v);
            }
            if let Some(v) = next() {
                p = p.with_correlation_id(v);
            }
            if let Some(v) = next() {
                p = p.with_reply_to(v);
            }
            if let Some(v) = next() {
                p = p.with_expiration(v);
            }
            if let Some(v) = next() {
                p = p.with_message_id(v);
            }
            if let Some(v) = next() {
                p = p.with_type(v);
            }
            if let Some(v) = next() {
                p = p.with_user_id(v);
            }
            if let Some(v) = next() {
                p = p.with_app_id(v);
            }
            if let Some(v) = next() {
                p = p.with_cluster_id(v);
            }
            if let Some(v) = headers {
                p = p.with_headers(v);
            }
            if let Some(v) = delivery_mode {
                p = p.with_delivery_mode(v);
            }
            if let Some(v) = priority {
                p = p.with_priority(v);
            }
            if let Some(v) = timestamp {
                p = p.with_timestamp(v);
            }
            p
        })
        .boxed()
}

/// How the stream is cut into reads: at chosen positions, or into small reads in a
/// repeating pattern of sizes.
#[derive(Debug, Clone)]
enum Reads {
    CutAt(Vec<Index>),
    Sizes(Vec<usize>),
}

fn reads() -> impl Strategy<Value = Reads> {
    prop_oneof![
        3 => vec(any::<Index>(), 0..24).prop_map(Reads::CutAt),
        1 => vec(1usize..=64, 1..8).prop_map(Reads::Sizes),
        1 => vec(1usize..=9000, 1..8).prop_map(Reads::Sizes),
    ]
}

/// The reads `stream` arrives in.
fn split<'a>(stream: &'a [u8], reads: &Reads) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = match reads {
        Reads::CutAt(at) => at.iter().map(|i| i.index(stream.len() + 1)).collect(),
        Reads::Sizes(sizes) => {
            let mut at = 0;
            let mut cuts = Vec::new();
            for size in sizes.iter().cycle() {
                at += size;
                if at >= stream.len() {
                    break;
                }
                cuts.push(at);
            }
            cuts
        }
    };
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

/// Feeds `stream` to `decoder` in the given reads, decoding after each read as a
/// connection would; stops at the first error.
fn decode_in_reads(
    decoder: &mut FrameDecoder,
    stream: &[u8],
    reads: &Reads,
) -> (Vec<Frame>, Result<(), CodecError>, usize) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in split(stream, reads) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Err(e), buf.len()),
            }
        }
    }
    (frames, Ok(()), buf.len())
}

/// A body of `len` bytes from a seed: cheap to make, and unlike a constant it catches
/// reordered or repeated chunks.
fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const MAX_BODY: usize = 300 * 1024;

/// A body length for a given `frame_max`: often right at a multiple of the largest body
/// frame payload, where off-by-ones live.
fn body_len(frame_max: u32) -> impl Strategy<Value = usize> {
    let chunk = frame_max as usize - FRAME_OVERHEAD;
    prop_oneof![
        1 => Just(0usize),
        2 => 1usize..=64,
        3 => 0usize..=MAX_BODY,
        2 => (1usize..=MAX_BODY / chunk, -1isize..=1)
            .prop_map(move |(k, d)| (k * chunk).saturating_add_signed(d)),
    ]
}

/// One message a publisher sends.
#[derive(Debug, Clone)]
struct Message {
    publish: basic::Publish,
    properties: BasicProperties,
    body_len: usize,
    seed: u64,
    heartbeat_after: bool,
}

fn messages(frame_max: u32) -> impl Strategy<Value = Vec<Message>> {
    let message = (
        publish_method(),
        basic_properties(),
        body_len(frame_max),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(publish, properties, body_len, seed, heartbeat_after)| Message {
                publish,
                properties,
                body_len,
                seed,
                heartbeat_after,
            },
        );
    vec(message, 1..4)
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// The generated type a decoded method stands for.
fn as_class(method: Method) -> AMQPClass {
    match method {
        Method::Publish(p) => AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::from(p.exchange.to_string()),
            routing_key: ShortString::from(p.routing_key.to_string()),
            mandatory: p.mandatory,
            immediate: p.immediate,
        })),
        Method::Other(class) => *class,
    }
}

fn method_frame(channel: u16, class: &AMQPClass) -> BytesMut {
    let mut out = BytesMut::new();
    encode::method(&mut out, channel, class);
    out
}

/// Encodes `methods`, reads them back in `reads`, and checks that exactly they come
/// back, or, from the first frame larger than `frame_max`, a 501 FRAME_ERROR.
fn check_methods(methods: &[(u16, AMQPClass)], frame_max: u32, reads: &Reads) {
    let mut stream = Vec::new();
    let mut fit = methods.len();
    for (i, (channel, class)) in methods.iter().enumerate() {
        let frame = method_frame(*channel, class);
        if frame.len() > frame_max as usize && fit == methods.len() {
            fit = i;
        }
        stream.extend_from_slice(&frame);
    }
    let mut decoder = FrameDecoder::after_header(frame_max);
    let (frames, result, left) = decode_in_reads(&mut decoder, &stream, reads);
    let decoded: Vec<(u16, AMQPClass)> = frames
        .into_iter()
        .map(|frame| match frame {
            Frame::Method(channel, method) => {
                let ids = method.ids();
                let class = as_class(method);
                assert_eq!(
                    ids,
                    (class.get_amqp_class_id(), class.get_amqp_method_id()),
                    "Method::ids"
                );
                (channel, class)
            }
            other => panic!("a method frame came back as {other:?}"),
        })
        .collect();
    assert_eq!(decoded, methods[..fit]);
    if fit == methods.len() {
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(left, 0, "bytes left in the read buffer");
    } else {
        match result {
            Err(CodecError::Protocol(e)) => assert_eq!(e.code, ReplyCode::FrameError),
            other => panic!("expected 501 for an oversize method frame, got {other:?}"),
        }
    }
}

/// Publishes `messages` at `frame_max` on `channel`, reads the stream back in `reads`
/// through the decoder and the assembler, and checks that every message comes back
/// exactly (or, from a content header larger than `frame_max`, a 501).
fn check_messages(messages: &[Message], channel: u16, frame_max: u32, reads: &Reads) {
    let mut stream = Vec::from(&PROTOCOL_HEADER[..]);
    let mut expected = Vec::new();
    let mut fit = true;
    for m in messages {
        let properties = encode_properties(&m.properties);
        let body = body(m.body_len, m.seed);
        let mut out = method_frame(
            channel,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(m.publish.clone())),
        );
        encode::content(&mut out, channel, &properties, &body, frame_max);
        if m.heartbeat_after {
            encode::heartbeat(&mut out);
        }
        // A content header is never split: one larger than frame_max is the sender's error.
        if FRAME_OVERHEAD + 12 + properties.len() > frame_max as usize {
            fit = false;
        }
        stream.extend_from_slice(&out);
        if fit {
            expected.push((m, properties, body));
        }
    }

    let mut decoder = FrameDecoder::new(frame_max);
    let (frames, result, left) = decode_in_reads(&mut decoder, &stream, reads);
    let mut assembler = ContentAssembler::default();
    let mut contents: Vec<Content> = Vec::new();
    for frame in frames {
        let done = match frame {
            Frame::Method(ch, Method::Publish(p)) => {
                assert_eq!(ch, channel);
                assembler.start(p).map(|()| None)
            }
            Frame::Header(ch, header) => {
                assert_eq!(ch, channel);
                assembler.header(header)
            }
            Frame::Body(ch, payload) => {
                assert_eq!(ch, channel);
                assert!(payload.len() <= frame_max as usize - FRAME_OVERHEAD);
                assert!(!payload.is_empty(), "an empty body frame was sent");
                assembler.body(payload)
            }
            Frame::Heartbeat(ch) => {
                assert_eq!(ch, 0);
                Ok(None)
            }
            other => panic!("unexpected frame {other:?}"),
        };
        if let Some(content) = done.expect("frames in order assemble") {
            contents.push(content);
        }
    }

    assert_eq!(contents.len(), expected.len());
    for (content, (m, properties, body)) in contents.iter().zip(&expected) {
        let p = &content.publish;
        assert_eq!(&*p.exchange, m.publish.exchange.as_str());
        assert_eq!(&*p.routing_key, m.publish.routing_key.as_str());
        assert_eq!(p.mandatory, m.publish.mandatory);
        assert_eq!(p.immediate, m.publish.immediate);
        assert_eq!(content.properties, *properties, "properties bytes");
        assert!(
            content.body == body[..],
            "body differs (len {})",
            body.len()
        );
        check_properties(&content.properties, &m.properties);
    }
    if fit {
        assert!(result.is_ok(), "{result:?}");
        assert!(assembler.is_idle());
        assert_eq!(left, 0, "bytes left in the read buffer");
    } else {
        match result {
            Err(CodecError::Protocol(e)) => assert_eq!(e.code, ReplyCode::FrameError),
            other => panic!("expected 501 for an oversize content header, got {other:?}"),
        }
    }
}

/// The encoded properties decode to `expected`, and `PropertiesView` reads the same.
fn check_properties(raw: &Bytes, expected: &BasicProperties) {
    let (rest, parsed) =
        basic::parse_properties(&raw[..]).expect("amq-protocol parses what was sent");
    assert!(rest.is_empty());
    assert_eq!(&parsed, expected);

    let view = PropertiesView::new(raw).expect("valid properties");
    assert_eq!(view.delivery_mode(), *expected.delivery_mode());
    assert_eq!(view.priority(), *expected.priority());
    assert_eq!(view.headers().as_ref(), expected.headers().as_ref());
    let strings = [
        (Property::ContentType, expected.content_type()),
        (Property::ContentEncoding, expected.content_encoding()),
        (Property::CorrelationId, expected.correlation_id()),
        (Property::ReplyTo, expected.reply_to()),
        (Property::Expiration, expected.expiration()),
        (Property::MessageId, expected.message_id()),
        (Property::Type, expected.kind()),
        (Property::UserId, expected.user_id()),
        (Property::AppId, expected.app_id()),
        (Property::ClusterId, expected.cluster_id()),
    ];
    for (property, value) in strings {
        assert_eq!(
            view.short_str(property),
            value.as_ref().map(ShortString::as_str),
            "{property:?}"
        );
    }
    assert_eq!(
        view.raw(Property::Timestamp).map(|b| b.to_vec()),
        expected.timestamp().map(|t| t.to_be_bytes().to_vec())
    );
}

/// Decodes `stream` in `reads` and hands every frame to an assembler and every header to
/// `PropertiesView`, as a connection would: any outcome but a panic is fine.
fn survive(stream: &[u8], reads: &Reads, frame_max: u32, expect_header: bool) {
    let mut decoder = if expect_header {
        FrameDecoder::new(frame_max)
    } else {
        FrameDecoder::after_header(frame_max)
    };
    let (frames, _result, _left) = decode_in_reads(&mut decoder, stream, reads);
    let mut assembler = ContentAssembler::default();
    for frame in frames {
        let outcome = match frame {
            Frame::Method(_, Method::Publish(p)) => assembler.start(p).map(|()| None),
            Frame::Method(_, Method::Other(class)) => {
                // What a connection does with other methods: look at them.
                let _ = (class.get_amqp_class_id(), class.get_amqp_method_id());
                Ok(None)
            }
            Frame::Header(_, header) => {
                if let Ok(view) = PropertiesView::new(&header.properties) {
                    touch_view(&view);
                }
                assembler.header(header)
            }
            Frame::Body(_, payload) => assembler.body(payload),
            Frame::Heartbeat(_) => Ok(None),
        };
        if outcome.is_err() {
            assembler.reset();
        }
    }
}

fn touch_view(view: &PropertiesView<'_>) {
    let _ = (view.delivery_mode(), view.priority(), view.headers());
    for property in [
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
    ] {
        let _ = (view.raw(property), view.short_str(property));
    }
}

/// A frame with the given type and channel around `payload`, with a correct size and
/// end octet unless told otherwise.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = vec![frame_type];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(end);
    out
}

/// Known (class, method) ids, to aim random argument bytes at real parsers.
const METHOD_IDS: &[(u16, u16)] = &[
    (10, 10),
    (10, 11),
    (10, 20),
    (10, 21),
    (10, 30),
    (10, 31),
    (10, 40),
    (10, 41),
    (10, 50),
    (10, 51),
    (10, 60),
    (10, 61),
    (10, 70),
    (10, 71),
    (20, 10),
    (20, 11),
    (20, 20),
    (20, 21),
    (20, 40),
    (20, 41),
    (30, 10),
    (30, 11),
    (40, 10),
    (40, 11),
    (40, 20),
    (40, 21),
    (40, 30),
    (40, 31),
    (40, 40),
    (40, 51),
    (50, 10),
    (50, 11),
    (50, 20),
    (50, 21),
    (50, 30),
    (50, 31),
    (50, 40),
    (50, 41),
    (50, 50),
    (50, 51),
    (60, 10),
    (60, 11),
    (60, 20),
    (60, 21),
    (60, 30),
    (60, 31),
    (60, 40),
    (60, 50),
    (60, 60),
    (60, 70),
    (60, 71),
    (60, 72),
    (60, 80),
    (60, 90),
    (60, 100),
    (60, 110),
    (60, 111),
    (60, 120),
    (85, 10),
    (85, 11),
    (90, 10),
    (90, 11),
    (90, 20),
    (90, 21),
    (90, 30),
    (90, 31),
];

/// A frame of random content that gets past the framing checks into the parsers.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        // Method: known ids, random arguments.
        3 => (proptest::sample::select(METHOD_IDS), vec(any::<u8>(), 0..200)).prop_map(
            |((class, method), args)| {
                let mut p = class.to_be_bytes().to_vec();
                p.extend_from_slice(&method.to_be_bytes());
                p.extend_from_slice(&args);
                (1u8, p)
            }
        ),
        // Content header: basic, random size and property bytes.
        2 => (any::<u64>(), any::<u16>(), vec(any::<u8>(), 0..200)).prop_map(
            |(size, flags, props)| {
                let mut p = vec![0, 60, 0, 0];
                p.extend_from_slice(&size.to_be_bytes());
                p.extend_from_slice(&flags.to_be_bytes());
                p.extend_from_slice(&props);
                (2u8, p)
            }
        ),
        // Anything of any type.
        2 => (any::<u8>(), vec(any::<u8>(), 0..64)),
    ];
    (
        payload,
        any::<u16>(),
        prop_oneof![9 => Just(0xCEu8), 1 => any::<u8>()],
    )
        .prop_map(|((frame_type, payload), channel, end)| {
            raw_frame(frame_type, channel, &payload, end)
        })
}

/// A valid method frame or publish with bytes flipped, cut or added, its size field
/// fixed up so that the damage reaches the parsers.
fn mutated_frames() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        amqp_class().prop_map(|class| method_frame(1, &class).to_vec()),
        basic_properties().prop_map(|props| {
            let mut out = BytesMut::new();
            encode::content(&mut out, 1, &encode_properties(&props), b"xyz", 131072);
            out.to_vec()
        }),
    ];
    (
        valid,
        vec((any::<Index>(), any::<u8>()), 1..6),
        proptest::option::of(any::<Index>()),
        any::<bool>(),
    )
        .prop_map(|(frame, flips, cut, fix_size)| {
            let mut payload = frame[7..frame.len() - 1].to_vec();
            for (at, xor) in flips {
                if !payload.is_empty() {
                    let i = at.index(payload.len());
                    payload[i] ^= xor.max(1);
                }
            }
            if let Some(cut) = cut {
                payload.truncate(cut.index(payload.len() + 1));
            }
            if fix_size {
                raw_frame(frame[0], 1, &payload, 0xCE)
            } else {
                let mut out = frame[..7].to_vec();
                out.extend_from_slice(&payload);
                out.push(0xCE);
                out
            }
        })
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of method frames comes back exactly, however it is cut into reads.
    #[test]
    fn any_method_frames_round_trip(
        methods in vec((any::<u16>(), amqp_class()), 1..8),
        frame_max in 4096u32..=262_144,
        reads in reads(),
    ) {
        check_methods(&methods, frame_max, &reads);
    }

    /// `deliver`, `get_ok`, `ack` and `nack`, hand-encoded for speed, write exactly what
    /// `amq-protocol` writes for the same method.
    #[test]
    fn hot_path_encoders_match_amq_protocol(
        channel in any::<u16>(),
        consumer_tag in short_string(),
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in short_string(),
        routing_key in short_string(),
        message_count in any::<u32>(),
        multiple in any::<bool>(),
    ) {
        let info = DeliveryInfo {
            delivery_tag,
            redelivered,
            exchange: &exchange,
            routing_key: &routing_key,
        };
        let mut ours = BytesMut::new();
        encode::deliver(&mut ours, channel, &consumer_tag, info);
        let deliver = basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: consumer_tag.as_str().into(),
            delivery_tag,
            redelivered,
            exchange: exchange.as_str().into(),
            routing_key: routing_key.as_str().into(),
        });
        prop_assert_eq!(&ours, &method_frame(channel, &AMQPClass::Basic(deliver)));

        let mut ours = BytesMut::new();
        encode::get_ok(&mut ours, channel, info, message_count);
        let get_ok = basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag,
            redelivered,
            exchange: exchange.as_str().into(),
            routing_key: routing_key.as_str().into(),
            message_count,
        });
        prop_assert_eq!(&ours, &method_frame(channel, &AMQPClass::Basic(get_ok)));

        let mut ours = BytesMut::new();
        encode::ack(&mut ours, channel, delivery_tag, multiple);
        let ack = basic::AMQPMethod::Ack(basic::Ack { delivery_tag, multiple });
        prop_assert_eq!(&ours, &method_frame(channel, &AMQPClass::Basic(ack)));

        let mut ours = BytesMut::new();
        encode::nack(&mut ours, channel, delivery_tag, multiple);
        let nack = basic::AMQPMethod::Nack(basic::Nack { delivery_tag, multiple, requeue: false });
        prop_assert_eq!(&ours, &method_frame(channel, &AMQPClass::Basic(nack)));
    }

    /// Random bytes, with or without the protocol header, never make the decoder panic.
    #[test]
    fn random_bytes_never_panic(
        mut bytes in vec(any::<u8>(), 0..4096),
        with_header in any::<bool>(),
        frame_max in 4096u32..=262_144,
        reads in reads(),
    ) {
        if with_header {
            bytes.splice(0..0, PROTOCOL_HEADER.iter().copied());
        }
        survive(&bytes, &reads, frame_max, with_header);
        survive(&bytes, &reads, frame_max, !with_header);
    }

    /// Well-framed random frames (methods with random arguments, content headers with
    /// random properties, anything) never make the decoder or the assembler panic.
    #[test]
    fn random_frames_never_panic(
        frames in vec(random_frame(), 1..12),
        frame_max in 4096u32..=262_144,
        reads in reads(),
    ) {
        survive(&frames.concat(), &reads, frame_max, false);
    }

    /// Valid frames with damage in them never make the decoder or the assembler panic.
    #[test]
    fn mutated_frames_never_panic(
        frames in vec(mutated_frames(), 1..6),
        reads in reads(),
    ) {
        survive(&frames.concat(), &reads, 131_072, false);
    }
}

proptest! {
    // Bodies up to 300 KiB: fewer cases, each a lot of bytes.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any published message comes back exactly — publish, properties, body — at any
    /// frame_max, however the stream is cut into reads.
    #[test]
    fn any_published_messages_round_trip(
        (frame_max, messages) in (4096u32..=262_144)
            .prop_flat_map(|frame_max| (Just(frame_max), messages(frame_max))),
        channel in 1u16..=u16::MAX,
        reads in reads(),
    ) {
        check_messages(&messages, channel, frame_max, &reads);
    }
}

/// What a channel hands its content assembler.
#[derive(Debug, Clone)]
enum Op {
    Start,
    Header { class_id: u16, body_size: u64 },
    Body(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        2 => (prop_oneof![19 => Just(60u16), 1 => any::<u16>()], 0u64..2000)
            .prop_map(|(class_id, body_size)| Op::Header { class_id, body_size }),
        5 => (0usize..700).prop_map(Op::Body),
    ]
}

/// What the assembler returned for one frame, and what the model expects.
type Step = (
    Result<Option<Content>, ProtocolError>,
    Result<Option<Vec<u8>>, ReplyCode>,
);

/// What the assembler should do, as a plain state machine.
#[derive(Debug, Clone)]
enum Model {
    Idle,
    AwaitingHeader,
    AwaitingBody { size: usize, body: Vec<u8> },
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Any sequence of publish, header and body frames gets from the assembler what the
    /// protocol says: messages when their declared size is reached, with the bodies
    /// joined in order, and 505 / 501 for frames out of order or too long.
    #[test]
    fn assembler_follows_the_protocol(ops in vec(op(), 1..40)) {
        let mut assembler = ContentAssembler::default();
        let mut model = Model::Idle;
        let publish = amqp_codec::Publish {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            mandatory: true,
            immediate: false,
        };
        let mut seed = 0u64;
        for op in ops {
            let (got, expected): Step =
                match op {
                    Op::Start => {
                        let expected = match model {
                            Model::Idle => {
                                model = Model::AwaitingHeader;
                                Ok(None)
                            }
                            _ => Err(ReplyCode::UnexpectedFrame),
                        };
                        (assembler.start(publish.clone()).map(|()| None), expected)
                    }
                    Op::Header { class_id, body_size } => {
                        let header = amqp_codec::ContentHeader {
                            class_id,
                            body_size,
                            properties: Bytes::from_static(&[0x10, 0x00, 2]),
                        };
                        let expected = match model {
                            Model::AwaitingHeader if class_id != 60 => {
                                Err(ReplyCode::UnexpectedFrame)
                            }
                            Model::AwaitingHeader if body_size == 0 => {
                                model = Model::Idle;
                                Ok(Some(Vec::new()))
                            }
                            Model::AwaitingHeader => {
                                model = Model::AwaitingBody {
                                    size: body_size as usize,
                                    body: Vec::new(),
                                };
                                Ok(None)
                            }
                            _ => Err(ReplyCode::UnexpectedFrame),
                        };
                        (assembler.header(header), expected)
                    }
                    Op::Body(len) => {
                        seed += 1;
                        let payload = body(len, seed);
                        let expected = match &mut model {
                            Model::AwaitingBody { size, body } => {
                                if body.len() + len > *size {
                                    Err(ReplyCode::FrameError)
                                } else {
                                    body.extend_from_slice(&payload);
                                    if body.len() == *size {
                                        let done = std::mem::take(body);
                                        model = Model::Idle;
                                        Ok(Some(done))
                                    } else {
                                        Ok(None)
                                    }
                                }
                            }
                            _ => Err(ReplyCode::UnexpectedFrame),
                        };
                        (assembler.body(Bytes::from(payload)), expected)
                    }
                };
            match (got, expected) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(content)), Ok(Some(body))) => {
                    prop_assert_eq!(&content.publish, &publish);
                    prop_assert_eq!(&content.properties[..], &[0x10, 0x00, 2][..]);
                    prop_assert!(content.body == body, "body differs");
                }
                (Err(e), Err(code)) => {
                    prop_assert_eq!(e.code, code);
                    // The connection closes on these: nothing after them matters.
                    break;
                }
                (got, expected) => {
                    prop_assert!(false, "got {:?}, expected {:?}", got, expected);
                }
            }
            prop_assert_eq!(assembler.is_idle(), matches!(model, Model::Idle));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Named cases (edges, and failures proptest shrank)
// ---------------------------------------------------------------------------------------

fn plain_message(body_len: usize) -> Message {
    Message {
        publish: basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        },
        properties: BasicProperties::default().with_delivery_mode(2),
        body_len,
        seed: 7,
        heartbeat_after: false,
    }
}

#[test]
fn body_at_exact_multiples_of_the_frame_payload_round_trips() {
    for frame_max in [4096u32, 4097, 131_072, 262_144] {
        let chunk = frame_max as usize - FRAME_OVERHEAD;
        for len in [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1] {
            check_messages(&[plain_message(len)], 1, frame_max, &Reads::CutAt(vec![]));
        }
    }
}

#[test]
fn a_stream_read_one_byte_at_a_time_round_trips() {
    let messages = [plain_message(10_000), plain_message(0), plain_message(5)];
    check_messages(&messages, 3, 4096, &Reads::Sizes(vec![1]));
}

#[test]
fn largest_body_at_smallest_frame_max_round_trips() {
    let mut m = plain_message(MAX_BODY);
    m.properties = m
        .properties
        .with_content_type("application/octet-stream".into());
    check_messages(&[m], 1, 4096, &Reads::Sizes(vec![4095, 1, 8193]));
}

#[test]
fn a_method_frame_of_exactly_frame_max_is_accepted_and_one_byte_more_is_not() {
    // queue.declare with a 255-byte name and a table padded to land on 4096 bytes.
    let declare = |pad: usize| {
        let mut args = FieldTable::default();
        args.insert(
            "x-pad".into(),
            AMQPValue::LongString(vec![b'p'; pad].into()),
        );
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".repeat(255).into(),
            arguments: args,
            ..Default::default()
        }))
    };
    let base = method_frame(1, &declare(0)).len();
    let exact = declare(4096 - base);
    assert_eq!(method_frame(1, &exact).len(), 4096);
    check_methods(&[(1, exact)], 4096, &Reads::CutAt(vec![]));
    let over = declare(4097 - base);
    check_methods(&[(1, over)], 4096, &Reads::CutAt(vec![]));
}

#[test]
fn every_field_value_type_in_a_queue_declare_round_trips() {
    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::Void);
    let values = [
        AMQPValue::Boolean(true),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::ShortShortUInt(255),
        AMQPValue::ShortInt(-2),
        AMQPValue::ShortUInt(65535),
        AMQPValue::LongInt(-3),
        AMQPValue::LongUInt(u32::MAX),
        AMQPValue::LongLongInt(i64::MIN),
        AMQPValue::Float(1.5),
        AMQPValue::Double(-0.25),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
        AMQPValue::LongString("héllo".into()),
        AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), AMQPValue::Void].into()),
        AMQPValue::Timestamp(1_700_000_000),
        AMQPValue::FieldTable(inner),
        AMQPValue::ByteArray(vec![0, 1, 2].into()),
        AMQPValue::Void,
    ];
    let mut args = FieldTable::default();
    for (i, v) in values.into_iter().enumerate() {
        args.insert(format!("k{i}").into(), v);
    }
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "orders".into(),
        durable: true,
        arguments: args,
        ..Default::default()
    }));
    check_methods(&[(5, declare)], 131_072, &Reads::Sizes(vec![3]));
}

// ---------------------------------------------------------------------------------------
// Deep nesting: a crash, not an error
// ---------------------------------------------------------------------------------------

/// Set in the child process that runs the dangerous part of a test.
const CHILD_ENV: &str = "AMQP_CODEC_ROUNDTRIP_CHILD";
/// Nesting depth of the field values below: 5 bytes a level, about 100 KB in all, so it
/// fits in the default frame_max of 131072.
const DEEP: usize = 20_000;

/// A field array nested `depth` levels deep: `A[A[A[…[]…]]]`.
fn nested_array(depth: usize) -> Vec<u8> {
    let mut value = vec![b'A', 0, 0, 0, 0];
    for _ in 1..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    value
}

/// A field table `{k: value}`, with its length prefix.
fn table_with(value: &[u8]) -> Vec<u8> {
    let mut entries = vec![1, b'k'];
    entries.extend_from_slice(value);
    let mut table = (entries.len() as u32).to_be_bytes().to_vec();
    table.extend_from_slice(&entries);
    table
}

/// Runs `danger` in a child process (this test binary, filtered to `test_name`), on a
/// thread with a 2 MiB stack as a tokio worker has, and asserts that the child ended
/// normally. A stack overflow aborts the whole process, so it cannot be caught in ours.
fn survives_in_child_process(test_name: &str, danger: impl FnOnce() -> String + Send + 'static) {
    if std::env::var_os(CHILD_ENV).is_some() {
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(danger)
            .expect("spawn a thread")
            .join()
            .expect("no panic");
        println!("outcome: {outcome}");
        return;
    }
    let exe = std::env::current_exe().expect("this test binary");
    let output = std::process::Command::new(exe)
        .args([test_name, "--exact", "--include-ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child");
    assert!(
        output.status.success(),
        "the process died ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("outcome: "),
        "the child did not run the test:\n{stdout}"
    );
}

/// Found in review while writing the garbage tests: `parse_method` hands the whole
/// payload to `amq_protocol::protocol::parse_class`, whose field-table and field-array
/// parsers recurse once per nesting level with no limit. A `queue.declare` whose
/// arguments nest arrays 20,000 deep (a 100 KB frame, under frame_max 131072) overflows
/// a 2 MiB stack and aborts the process — the whole broker. In release builds about
/// 2,000 levels (a 10 KB frame) suffice, in debug builds 500 (2.5 KB). The same holds
/// for `connection.start-ok`'s client properties, which arrive before authentication.
/// Expected: an error (502 SYNTAX_ERROR past some depth limit) or Ok, never a crash.
#[test]

fn deeply_nested_arguments_do_not_crash_the_decoder() {
    survives_in_child_process("deeply_nested_arguments_do_not_crash_the_decoder", || {
        // queue.declare: ticket, queue "q", bits, arguments.
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&table_with(&nested_array(DEEP)));
        let frame = raw_frame(1, 1, &payload, 0xCE);
        assert!(frame.len() <= 131_072);
        let mut decoder = FrameDecoder::after_header(131_072);
        let mut buf = BytesMut::from(&frame[..]);
        format!("{:?}", decoder.decode(&mut buf).map(|f| f.is_some()))
    });
}

/// The same recursion behind `PropertiesView::headers`, which the headers exchange will
/// call on every message: a content header whose `headers` table nests arrays 20,000
/// deep passes the decoder (which checks only the table's length) and then aborts the
/// process when read. Expected: `None` (malformed) or the table, never a crash.
#[test]

fn deeply_nested_headers_do_not_crash_properties_view() {
    survives_in_child_process("deeply_nested_headers_do_not_crash_properties_view", || {
        let mut properties = vec![0x20, 0x00]; // headers only
        properties.extend_from_slice(&table_with(&nested_array(DEEP)));
        let mut out = BytesMut::new();
        encode::content(&mut out, 1, &properties, b"", 131_072);
        let mut decoder = FrameDecoder::after_header(131_072);
        let Ok(Some(Frame::Header(_, header))) = decoder.decode(&mut out) else {
            return "the decoder refused the header".to_owned();
        };
        let view = PropertiesView::new(&header.properties).expect("well-formed lengths");
        format!("headers present: {}", view.headers().is_some())
    });
}

/// Found in review: once a body spans more than one frame, `ContentAssembler::body`
/// calls `rest.reserve(body_size)` with the size the peer declared in its content
/// header, before any of those bytes exist. A header declaring 2^50 bytes followed by
/// two small body frames makes the allocation fail, which aborts the process (the whole
/// broker); u64::MAX panics with "capacity overflow"; a few GB short of the machine's
/// memory is reserved for real, per channel. Expected: `Ok(None)` (or an error) for the
/// two frames, never a crash; the reservation should be bounded by what has arrived
/// (or by a maximum message size), not by what was announced.
#[test]

fn a_huge_declared_body_size_does_not_crash_the_assembler() {
    survives_in_child_process(
        "a_huge_declared_body_size_does_not_crash_the_assembler",
        || {
            let mut outcomes = Vec::new();
            for body_size in [1u64 << 50, u64::MAX] {
                let mut a = ContentAssembler::default();
                let publish = amqp_codec::Publish {
                    exchange: "".into(),
                    routing_key: "q".into(),
                    mandatory: false,
                    immediate: false,
                };
                a.start(publish).expect("idle");
                let header = amqp_codec::ContentHeader {
                    class_id: 60,
                    body_size,
                    properties: Bytes::from_static(&[0, 0]),
                };
                let first = a.header(header).map(|c| c.is_some());
                let second = a.body(Bytes::from_static(b"ab")).map(|c| c.is_some());
                let third = a.body(Bytes::from_static(b"cd")).map(|c| c.is_some());
                outcomes.push(format!("{first:?} {second:?} {third:?}"));
            }
            outcomes.join("; ")
        },
    );
}
