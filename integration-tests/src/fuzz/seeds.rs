//! Named inputs that start the corpus: whole sessions a real client would run, odd but
//! legal frames, and inputs that once broke the broker.

use super::*;

fn with_kind(kind: u8, handshake: Option<Handshake>, rest: &[u8]) -> Vec<u8> {
    let mut input = vec![kind];
    if let Some(h) = handshake {
        input.extend_from_slice(&h.to_bytes());
    }
    input.extend_from_slice(rest);
    input
}

fn method(out: &mut BytesMut, channel: u16, class: AMQPClass) {
    encode::method(out, channel, &class);
}

fn publish(out: &mut BytesMut, channel: u16, routing_key: &str, body: &[u8], persistent: bool) {
    method(
        out,
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: true,
            immediate: false,
        })),
    );
    let mut props = BasicProperties::default().with_content_type("text/plain".into());
    if persistent {
        props = props.with_delivery_mode(2);
    }
    let props = amqp_codec::properties::encode_properties(&props);
    encode::content(out, channel, &props, body, 4096);
}

/// Frames of a full, valid session after the handshake: channel, declares, bind,
/// confirms, qos, publishes (empty, small, split over several frames, persistent),
/// consume, get, acks, cancel, purge, deletes, channel close.
pub fn session_frames() -> Vec<u8> {
    let mut out = BytesMut::new();
    method(
        &mut out,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    method(
        &mut out,
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(60_000));
    method(
        &mut out,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            durable: true,
            arguments: args,
            ..Default::default()
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "ex".into(),
            kind: "topic".into(),
            ..Default::default()
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "q".into(),
            exchange: "ex".into(),
            routing_key: "a.#".into(),
            ..Default::default()
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    );
    publish(&mut out, 1, "q", b"", false);
    publish(&mut out, 1, "q", b"hello", true);
    publish(&mut out, 1, "q", &[7u8; 10_000], false);
    publish(&mut out, 1, "nowhere", b"returned", false);
    method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "c1".into(),
            ..Default::default()
        })),
    );
    for tag in 1..=2 {
        method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple: false,
            })),
        );
    }
    method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 3,
            multiple: false,
            requeue: true,
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: "c1".into(),
            nowait: false,
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "q".into(),
            no_ack: true,
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "q".into(),
            nowait: false,
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "q".into(),
            ..Default::default()
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: "ex".into(),
            ..Default::default()
        })),
    );
    method(
        &mut out,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    out.to_vec()
}

/// A transaction and a consumer with acknowledgements on a second channel, with
/// heartbeats, an unknown-but-ignored `connection.blocked` and a channel flow.
pub fn odd_but_legal_frames() -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::heartbeat(&mut out);
    method(
        &mut out,
        2,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    method(
        &mut out,
        2,
        AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
    );
    method(
        &mut out,
        2,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "".into(),
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        })),
    );
    publish(&mut out, 2, "amq.gen-none", b"x", false);
    method(
        &mut out,
        2,
        AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
    );
    method(
        &mut out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
            reason: "client".into(),
        })),
    );
    encode::heartbeat(&mut out);
    method(
        &mut out,
        2,
        AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
    );
    method(
        &mut out,
        2,
        AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
    );
    out.to_vec()
}

/// Every seed, by file name, for `fuzz/corpus/connection/`.
pub fn connection() -> Vec<(&'static str, Vec<u8>)> {
    let handshake = Handshake::default();
    let mut full = handshake.encode();
    full.extend_from_slice(&session_frames());
    full.extend_from_slice(&close_frame());
    let mut seeds = vec![
        ("raw-full-session", with_kind(kind::RAW, None, &full)),
        (
            "frames-full-session",
            with_kind(kind::FRAMES, Some(handshake), &session_frames()),
        ),
        (
            "frames-odd-but-legal",
            with_kind(kind::FRAMES, Some(handshake), &odd_but_legal_frames()),
        ),
        (
            "frames-amqplain-small-frames",
            with_kind(
                kind::FRAMES,
                Some(Handshake {
                    amqplain: true,
                    frame_max: 4096,
                    heartbeat: 5,
                    ..handshake
                }),
                &session_frames(),
            ),
        ),
        (
            "raw-http-request",
            with_kind(kind::RAW, None, b"GET / HTTP/1.1\r\n\r\n"),
        ),
        (
            "raw-amqp-1-0-header",
            with_kind(kind::RAW, None, b"AMQP\x00\x01\x00\x00"),
        ),
        (
            "frames-bad-password",
            with_kind(
                kind::FRAMES,
                Some(Handshake {
                    bad_password: true,
                    ..handshake
                }),
                &[],
            ),
        ),
        (
            "frames-bad-vhost",
            with_kind(
                kind::FRAMES,
                Some(Handshake {
                    bad_vhost: true,
                    ..handshake
                }),
                &[],
            ),
        ),
        (
            "session-empty",
            with_kind(kind::SESSION, Some(handshake), &[]),
        ),
    ];
    // Content interrupted by a method, a body without a header, a frame of an
    // unknown type, a method on a channel never opened.
    let mut broken = BytesMut::new();
    method(
        &mut broken,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    method(
        &mut broken,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish::default())),
    );
    method(
        &mut broken,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close::default())),
    );
    seeds.push((
        "frames-publish-then-method",
        with_kind(kind::FRAMES, Some(handshake), &broken),
    ));
    let mut body_first = BytesMut::new();
    frame(&mut body_first, FRAME_BODY, 1, b"orphan");
    seeds.push((
        "frames-body-without-header",
        with_kind(kind::FRAMES, Some(handshake), &body_first),
    ));
    let mut unknown = BytesMut::new();
    frame(&mut unknown, 9, 0, b"");
    seeds.push((
        "frames-unknown-type",
        with_kind(kind::FRAMES, Some(handshake), &unknown),
    ));
    let mut unopened = BytesMut::new();
    method(
        &mut unopened,
        7,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos::default())),
    );
    seeds.push((
        "frames-unopened-channel",
        with_kind(kind::FRAMES, Some(handshake), &unopened),
    ));
    // Names of 255 bytes, the longest a short string holds, where the server quotes
    // them in an error's reply text.
    let mut long = BytesMut::new();
    let longest = "n".repeat(255);
    method(
        &mut long,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    method(
        &mut long,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: longest.as_str().into(),
            passive: true,
            ..Default::default()
        })),
    );
    seeds.push((
        "frames-long-name-in-error",
        with_kind(kind::FRAMES, Some(handshake), &long),
    ));
    // A dead-letter routing key longer than a short string, multi-byte, on a message
    // that is dead-lettered and then fetched: its routing key goes out in get-ok.
    let mut dlx = BytesMut::new();
    method(
        &mut dlx,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("amq.fanout".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("é".repeat(150).into()),
    );
    method(
        &mut dlx,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "dl-source".into(),
            exclusive: true,
            arguments: args,
            ..Default::default()
        })),
    );
    method(
        &mut dlx,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "dl-target".into(),
            exclusive: true,
            ..Default::default()
        })),
    );
    method(
        &mut dlx,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "dl-target".into(),
            exchange: "amq.fanout".into(),
            ..Default::default()
        })),
    );
    publish(&mut dlx, 1, "dl-source", b"dead", false);
    method(
        &mut dlx,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "dl-source".into(),
            no_ack: false,
        })),
    );
    method(
        &mut dlx,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: 1,
            requeue: false,
        })),
    );
    method(
        &mut dlx,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "dl-target".into(),
            no_ack: true,
        })),
    );
    seeds.push((
        "frames-long-dead-letter-routing-key",
        with_kind(kind::FRAMES, Some(handshake), &dlx),
    ));
    // Before logging in, a connection.start (which only servers send) whose table nests
    // past the depth limit: refused before amq-protocol recurses into it (26,000 levels
    // in one frame once overflowed the stack and aborted the broker).
    let mut deep_start = PROTOCOL_HEADER.to_vec();
    let mut args = vec![0, 9];
    args.extend_from_slice(&nested_table(MAX_TABLE_DEPTH + 8));
    args.extend_from_slice(&[0, 0, 0, 5]);
    args.extend_from_slice(b"PLAIN");
    args.extend_from_slice(&[0, 0, 0, 5]);
    args.extend_from_slice(b"en_US");
    let mut payload = 10u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&args);
    let mut start = BytesMut::new();
    frame(&mut start, FRAME_METHOD, 0, &payload);
    deep_start.extend_from_slice(&start);
    seeds.push((
        "raw-deep-table-in-connection-start",
        with_kind(kind::RAW, None, &deep_start),
    ));
    // A method frame that is not whole when the stream ends.
    let mut cut = session_frames();
    cut.truncate(cut.len() / 2);
    seeds.push((
        "frames-cut-short",
        with_kind(kind::FRAMES, Some(handshake), &cut),
    ));
    seeds
}

/// A table with a value of each of RabbitMQ's types, nested tables and arrays.
fn every_type_table() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("n".into(), AMQPValue::LongLongInt(-1));
    let mut array = FieldArray::default();
    array.push(AMQPValue::Boolean(true));
    array.push(AMQPValue::FieldTable(inner.clone()));
    let values = [
        AMQPValue::Boolean(true),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::ShortShortUInt(255),
        AMQPValue::ShortInt(-2),
        AMQPValue::ShortUInt(65535),
        AMQPValue::LongInt(-3),
        AMQPValue::LongUInt(7),
        AMQPValue::LongLongInt(i64::MIN),
        AMQPValue::Float(1.5),
        AMQPValue::Double(f64::NAN),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 314,
        }),
        AMQPValue::LongString("text".into()),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff])),
        AMQPValue::Timestamp(1_700_000_000),
        AMQPValue::Void,
        AMQPValue::FieldArray(array),
        AMQPValue::FieldTable(inner),
    ];
    let mut table = FieldTable::default();
    for (i, value) in values.into_iter().enumerate() {
        table.insert(format!("k{i}").into(), value);
    }
    table
}

/// Arrays nested `depth` levels in a table's one entry.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut value = vec![b'V'];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut entries = vec![1, b'k'];
    entries.extend_from_slice(&value);
    let mut table = u32::try_from(entries.len())
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    table.extend_from_slice(&entries);
    table
}

fn method_payload(class: &AMQPClass) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::method(&mut out, 1, class);
    out[7..out.len() - 1].to_vec()
}

fn declare_with(arguments: FieldTable) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "q".into(),
        arguments,
        ..Default::default()
    }))
}

/// A method frame on channel 1 whose payload is class, method and `args`.
fn raw_method(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload.extend_from_slice(args);
    let mut out = BytesMut::new();
    frame(&mut out, FRAME_METHOD, 1, &payload);
    out.to_vec()
}

/// Every seed, by file name, for `fuzz/corpus/codec/`: four bytes of settings
/// (`frame_max` / 4, a split seed, flags), then the stream.
pub fn codec() -> Vec<(&'static str, Vec<u8>)> {
    let settings = |frame_max: u32, seed: u8, header: bool| {
        let [hi, lo] = u16::try_from(frame_max / 4)
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        vec![hi, lo, seed, u8::from(header)]
    };
    let with = |mut settings: Vec<u8>, stream: &[u8]| {
        settings.extend_from_slice(stream);
        settings
    };
    let mut full = Handshake::default().encode();
    full.extend_from_slice(&session_frames());
    full.extend_from_slice(&close_frame());
    let deep_declare = {
        let mut args = vec![0, 0, 1, b'q', 0];
        args.extend_from_slice(&nested_table(1000));
        raw_method(50, 10, &args)
    };
    let deep_start = {
        let mut args = vec![0, 9];
        args.extend_from_slice(&nested_table(MAX_TABLE_DEPTH + 8));
        args.extend_from_slice(&[0, 0, 0, 5]);
        args.extend_from_slice(b"PLAIN");
        args.extend_from_slice(&[0, 0, 0, 5]);
        args.extend_from_slice(b"en_US");
        raw_method(10, 10, &args)
    };
    let mut every_type = BytesMut::new();
    encode::method(&mut every_type, 1, &declare_with(every_type_table()));
    let mut oversize = BytesMut::new();
    frame(&mut oversize, FRAME_BODY, 1, &[0u8; 5000]);
    let mut bad_end = BytesMut::new();
    frame(&mut bad_end, FRAME_BODY, 1, b"x");
    let last = bad_end.len() - 1;
    bad_end[last] = 0xCD;
    let mut beat_payload = BytesMut::new();
    frame(&mut beat_payload, FRAME_HEARTBEAT, 0, b"!");
    vec![
        ("full-session", with(settings(131_072, 1, true), &full)),
        (
            "session-small-frame-max",
            with(settings(4096, 7, false), &session_frames()),
        ),
        (
            "odd-but-legal-unlimited",
            with(settings(0, 3, false), &odd_but_legal_frames()),
        ),
        (
            "deep-table-queue-declare",
            with(settings(131_072, 5, false), &deep_declare),
        ),
        (
            "deep-table-connection-start",
            with(settings(131_072, 9, false), &deep_start),
        ),
        (
            "every-field-type",
            with(settings(131_072, 2, false), &every_type),
        ),
        ("oversize-frame", with(settings(4096, 4, false), &oversize)),
        ("bad-end-octet", with(settings(4096, 4, false), &bad_end)),
        (
            "heartbeat-with-payload",
            with(settings(4096, 4, false), &beat_payload),
        ),
        (
            "bad-protocol-header",
            with(settings(4096, 1, true), b"AMQP\x00\x00\x09\x00"),
        ),
    ]
}

/// Every seed, by file name, for `fuzz/corpus/field_table/`: a mode byte (0 a table,
/// 1 content properties, 2 a method payload), then its input.
pub fn field_table() -> Vec<(&'static str, Vec<u8>)> {
    let with = |mode: u8, bytes: &[u8]| {
        let mut input = vec![mode];
        input.extend_from_slice(bytes);
        input
    };
    let mut headers = FieldTable::default();
    headers.insert("x-match".into(), AMQPValue::LongString("any".into()));
    headers.insert("CC".into(), AMQPValue::FieldArray(FieldArray::default()));
    let all_properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(9)
        .with_correlation_id("c".into())
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("1500".into())
        .with_message_id("m".into())
        .with_timestamp(1_700_000_000)
        .with_type("t".into())
        .with_user_id("guest".into())
        .with_app_id("a".into())
        .with_cluster_id("x".into());
    let start = AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: every_type_table(),
        mechanisms: "PLAIN".into(),
        locales: "en_US".into(),
    }));
    let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: "q".into(),
        arguments: every_type_table(),
        ..Default::default()
    }));
    let bind = AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: "a".into(),
        source: "b".into(),
        arguments: every_type_table(),
        ..Default::default()
    }));
    vec![
        (
            "table-every-type",
            with(0, &encode_table(&every_type_table())),
        ),
        ("table-empty", with(0, &[0, 0, 0, 0])),
        (
            "table-nested-at-limit",
            with(0, &nested_table(MAX_TABLE_DEPTH)),
        ),
        (
            "table-nested-past-limit",
            with(0, &nested_table(MAX_TABLE_DEPTH + 1)),
        ),
        (
            "properties-all",
            with(
                1,
                &amqp_codec::properties::encode_properties(&all_properties),
            ),
        ),
        ("properties-none", with(1, &[0, 0])),
        (
            "method-queue-declare",
            with(2, &method_payload(&declare_with(every_type_table()))),
        ),
        ("method-connection-start", with(2, &method_payload(&start))),
        ("method-basic-consume", with(2, &method_payload(&consume))),
        ("method-exchange-bind", with(2, &method_payload(&bind))),
    ]
}
