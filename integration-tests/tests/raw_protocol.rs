//! Raw bytes over TCP: protocol headers, framing errors, unknown classes and methods,
//! frames on unopened channels, content and methods out of order. Each error must get
//! RabbitMQ's answer, never hang, and leave other connections working.
//!
//! Where RabbitMQ's reply text embeds an Erlang term dump (FRAME_ERROR and some
//! UNEXPECTED_FRAME texts), the tests check the code, the text's prefix and the failing
//! class/method, and quote RabbitMQ 3.10's exact text in a comment.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, confirm, connection};
use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;

fn method_payload(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    p
}

fn header_payload(class: u16, body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // weight
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // no properties
    p
}

/// `basic.publish` to the default exchange with `routing_key`, as a method frame.
fn publish_frame(channel: u16, routing_key: &str) -> Vec<u8> {
    Raw::encode(&AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    ))
}

/// A well-formed `queue.declare` of `name` (ticket, name, flags, empty table).
fn declare_args(name: &str) -> Vec<u8> {
    let mut a = vec![0, 0, u8::try_from(name.len()).expect("short name")];
    a.extend_from_slice(name.as_bytes());
    a.push(0);
    a.extend_from_slice(&[0, 0, 0, 0]);
    a
}

/// Opens a bystander lapin connection, sends `bytes` on a fresh raw connection (with
/// channel 1 open when `open_channel`), and expects a connection error. Checks that the
/// bystander and a new connection still work. Returns (code, text, class, method).
async fn hard_error(
    server: &TestServer,
    open_channel: bool,
    bytes: &[u8],
) -> (u16, String, u16, u16) {
    let (_bystander, bystander_channel) = open(server).await;
    let mut raw = Raw::connect_open(server.addr()).await;
    if open_channel {
        raw.open_channel(1).await;
    }
    raw.send_lenient(bytes).await;
    let close = raw.expect_connection_close().await;
    declare_queue(&bystander_channel, &unique_name("bystander")).await;
    assert_broker_works(server).await;
    close
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_protocol_header_is_answered_with_ours_and_closed() {
    let server = TestServer::start().await;
    for header in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x00\x00\x0a\x00",
        b"AMQP\x00\x01\x00\x00",
        b"XMPP\x00\x00\x09\x01",
    ] {
        let mut raw = Raw::connect(server.addr()).await;
        raw.send_lenient(header).await;
        let answer = raw.read_to_eof().await;
        assert_eq!(
            answer,
            PROTOCOL_HEADER,
            "answer to {:?}",
            String::from_utf8_lossy(header)
        );
    }
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_written_one_byte_at_a_time_works() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    for byte in PROTOCOL_HEADER {
        raw.send(&[*byte]).await;
    }
    match raw.method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
    let credentials = amq_protocol::auth::Credentials::new("guest".into(), "guest".into());
    let start_ok = Raw::encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: credentials.sasl_auth_string(amq_protocol::auth::SASLMechanism::Plain),
            locale: "en_US".into(),
        })),
    ));
    for byte in &start_ok {
        raw.send(&[*byte]).await;
    }
    let tune = raw.tune().await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.open_vhost("/").await;
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_split_across_frames_and_odd_writes_arrives_whole() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("split");
    declare_queue(&channel, &queue).await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut bytes = publish_frame(1, &queue);
    bytes.extend(raw_frame(
        FRAME_HEADER,
        1,
        &header_payload(60, body.len() as u64),
    ));
    for chunk in body.chunks(4000) {
        bytes.extend(raw_frame(FRAME_BODY, 1, chunk));
    }
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    for piece in bytes.chunks(7) {
        raw.send(piece).await;
    }
    wait_for_count(&channel, &queue, 1).await;
    let got = get(&channel, &queue).await.expect("the message");
    assert!(got.delivery.data == body, "body corrupted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_length_body_is_a_header_without_body_frames() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("empty-body");
    declare_queue(&channel, &queue).await;
    let mut bytes = publish_frame(1, &queue);
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 0)));
    // The next publish follows straight away: the first one is complete.
    bytes.extend(publish_frame(1, &queue));
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 1)));
    bytes.extend(raw_frame(FRAME_BODY, 1, b"x"));
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send(&bytes).await;
    wait_for_count(&channel, &queue, 2).await;
    assert_eq!(
        drain(&channel, &queue).await,
        vec![(String::new(), false), ("x".to_string(), false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_of_exactly_frame_max_is_accepted() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("frame-max");
    declare_queue(&channel, &queue).await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    raw.tune().await;
    raw.tune_ok(2047, 4096, 0).await;
    raw.open_vhost("/").await;
    raw.open_channel(1).await;
    // A body frame of 4096 bytes in all: 7 header bytes, 4088 payload, frame end.
    let body = vec![b'z'; 4096 - 8];
    let mut bytes = publish_frame(1, &queue);
    bytes.extend(raw_frame(
        FRAME_HEADER,
        1,
        &header_payload(60, body.len() as u64),
    ));
    bytes.extend(raw_frame(FRAME_BODY, 1, &body));
    raw.send(&bytes).await;
    wait_for_count(&channel, &queue, 1).await;
    let got = get(&channel, &queue).await.expect("the message");
    assert_eq!(got.delivery.data.len(), body.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_frame_is_a_frame_error() {
    let server = TestServer::start().await;
    // Announce a 200,000-byte payload (frame_max is 131,072) and send it.
    let mut bytes = vec![FRAME_METHOD, 0, 1];
    bytes.extend_from_slice(&200_000u32.to_be_bytes());
    bytes.extend(vec![0u8; 200_001]);
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    // RabbitMQ: "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200000,131064}"
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    assert_eq!((class, method), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_frame_end_octet_is_a_frame_error() {
    let server = TestServer::start().await;
    let mut bytes = raw_frame(FRAME_METHOD, 1, &method_payload(50, 10, &declare_args("x")));
    let last = bytes.len() - 1;
    bytes[last] = 0x00;
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    // RabbitMQ: "FRAME_ERROR - type 1, all octets = <<0,50,...>>:
    // {invalid_frame_end_marker,\n   0}" (an Erlang term, line break included).
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    assert_eq!((class, method), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_frame_type_is_a_frame_error() {
    let server = TestServer::start().await;
    let (code, text, class, method) = hard_error(&server, true, &raw_frame(9, 1, b"abc")).await;
    // RabbitMQ: "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame"
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    assert_eq!((class, method), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_method_and_header_frames_are_frame_errors() {
    let server = TestServer::start().await;
    // An empty method frame. RabbitMQ: "FRAME_ERROR - type 1, all octets = <<>>:
    // unknown_frame"
    let (code, text, class, method) =
        hard_error(&server, true, &raw_frame(FRAME_METHOD, 1, &[])).await;
    assert_eq!((code, class, method), (501, 0, 0), "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    // A content header frame too short to hold its fields. RabbitMQ: "FRAME_ERROR -
    // type 2, all octets = <<0,60>>: unknown_frame"
    let (code, text, class, method) =
        hard_error(&server, true, &raw_frame(FRAME_HEADER, 1, &[0, 60])).await;
    assert_eq!((code, class, method), (501, 0, 0), "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    // A heartbeat with a payload. RabbitMQ: "FRAME_ERROR - type 8, all octets =
    // <<\"xx\">>: unknown_frame"
    let (code, text, class, method) =
        hard_error(&server, true, &raw_frame(FRAME_HEARTBEAT, 0, b"xx")).await;
    assert_eq!((code, class, method), (501, 0, 0), "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_method_arguments_are_a_frame_error_naming_the_method() {
    let server = TestServer::start().await;
    // queue.declare whose queue name says 5 bytes but carries 1, and nothing after.
    let bytes = raw_frame(FRAME_METHOD, 1, &method_payload(50, 10, &[0, 0, 5, b'a']));
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    // RabbitMQ: "FRAME_ERROR - cannot decode <<0,0,5,97>>" (502 SYNTAX_ERROR in the
    // spec, but RabbitMQ answers 501).
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - cannot decode"), "{text}");
    assert_eq!((class, method), (50, 10));
}

/// RabbitMQ 3.10 drops the socket without a connection.close for a method it does not
/// know; a connection.close with 540 NOT_IMPLEMENTED or 503 COMMAND_INVALID first is
/// accepted too.
async fn expect_dropped_or_refused(server: &TestServer, channel: u16, payload: &[u8]) {
    let (_bystander, bystander_channel) = open(server).await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_lenient(&raw_frame(FRAME_METHOD, channel, payload))
        .await;
    for frame in raw.frames_until_eof(BOUND).await {
        match frame {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                assert!(
                    [503, 540].contains(&close.reply_code),
                    "unexpected close {close:?}"
                );
                let close_ok = Raw::encode(&AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ));
                raw.send_lenient(&close_ok).await;
            }
            AMQPFrame::Heartbeat => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    declare_queue(&bystander_channel, &unique_name("bystander")).await;
    assert_broker_works(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_class_closes_the_connection() {
    let server = TestServer::start().await;
    expect_dropped_or_refused(&server, 1, &method_payload(999, 1, &[])).await;
    expect_dropped_or_refused(&server, 0, &method_payload(999, 1, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_method_closes_the_connection() {
    let server = TestServer::start().await;
    expect_dropped_or_refused(&server, 1, &method_payload(50, 99, &[])).await;
    expect_dropped_or_refused(&server, 1, &method_payload(60, 999, &[])).await;
    expect_dropped_or_refused(&server, 0, &method_payload(10, 99, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_on_an_unopened_channel_are_channel_errors() {
    let server = TestServer::start().await;
    let expected = "CHANNEL_ERROR - expected 'channel.open'";
    let declare = raw_frame(FRAME_METHOD, 5, &method_payload(50, 10, &declare_args("x")));
    let (code, text, class, method) = hard_error(&server, true, &declare).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, expected, 50, 10)
    );
    let close = raw_frame(
        FRAME_METHOD,
        5,
        &method_payload(20, 40, &[0, 200, 0, 0, 0, 0, 0]),
    );
    let (code, text, class, method) = hard_error(&server, true, &close).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, expected, 20, 40)
    );
    let close_ok = raw_frame(FRAME_METHOD, 5, &method_payload(20, 41, &[]));
    let (code, text, class, method) = hard_error(&server, true, &close_ok).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, expected, 20, 41)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_frames_on_an_unopened_channel_are_unexpected() {
    let server = TestServer::start().await;
    let expected = "UNEXPECTED_FRAME - expected method frame, got non method frame instead";
    let header = raw_frame(FRAME_HEADER, 5, &header_payload(60, 1));
    let (code, text, class, method) = hard_error(&server, true, &header).await;
    assert_eq!((code, text.as_str(), class, method), (505, expected, 0, 0));
    let body = raw_frame(FRAME_BODY, 5, b"x");
    let (code, text, class, method) = hard_error(&server, true, &body).await;
    assert_eq!((code, text.as_str(), class, method), (505, expected, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn content_without_a_publish_is_unexpected() {
    let server = TestServer::start().await;
    let expected = "UNEXPECTED_FRAME - expected method frame, got non method frame instead";
    let header = raw_frame(FRAME_HEADER, 1, &header_payload(60, 1));
    let (code, text, class, method) = hard_error(&server, true, &header).await;
    assert_eq!((code, text.as_str(), class, method), (505, expected, 0, 0));
    let body = raw_frame(FRAME_BODY, 1, b"x");
    let (code, text, class, method) = hard_error(&server, true, &body).await;
    assert_eq!((code, text.as_str(), class, method), (505, expected, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn content_out_of_order_is_unexpected_frame() {
    let server = TestServer::start().await;
    let want_header = "UNEXPECTED_FRAME - expected content header for class 60, got non \
                       content header frame instead";
    let declare = raw_frame(FRAME_METHOD, 1, &method_payload(50, 10, &declare_args("x")));

    // publish, then a method instead of the content header
    let mut bytes = publish_frame(1, "q");
    bytes.extend(&declare);
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (505, want_header, 60, 40)
    );

    // publish, then a body instead of the content header
    let mut bytes = publish_frame(1, "q");
    bytes.extend(raw_frame(FRAME_BODY, 1, b"x"));
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (505, want_header, 60, 40)
    );

    // publish, a header of another class
    let mut bytes = publish_frame(1, "q");
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(50, 2)));
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 \
             instead",
            60,
            40
        )
    );

    // publish, header announcing 5 bytes, then a method instead of the body
    let mut bytes = publish_frame(1, "q");
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 5)));
    bytes.extend(&declare);
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_longer_than_announced_never_becomes_a_message() {
    // RabbitMQ 3.10 waits forever for the body to add up (no error); a connection error
    // (501 or 505) is accepted too. Either way no message is enqueued and nothing hangs.
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("overlong");
    declare_queue(&channel, &queue).await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    let mut bytes = publish_frame(1, &queue);
    bytes.extend(raw_frame(FRAME_HEADER, 1, &header_payload(60, 2)));
    bytes.extend(raw_frame(FRAME_BODY, 1, b"xyz"));
    raw.send(&bytes).await;
    if let Ok(Read::Frame(AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(close)),
    ))) = tokio::time::timeout(Duration::from_millis(500), raw.read()).await
    {
        assert!([501, 505].contains(&close.reply_code), "{close:?}");
    }
    assert_eq!(message_count(&channel, &queue).await, 0);
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_out_of_order_are_connection_errors() {
    let server = TestServer::start().await;
    // channel.open on an open channel
    let bytes = raw_frame(FRAME_METHOD, 1, &method_payload(20, 10, &[0]));
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    );
    // connection.open again once open
    let bytes = raw_frame(FRAME_METHOD, 0, &method_payload(10, 40, &[1, b'/', 0, 0]));
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            10,
            40
        )
    );
    // connection.tune-ok once open
    let bytes = raw_frame(
        FRAME_METHOD,
        0,
        &method_payload(10, 31, &[0, 1, 0, 0, 16, 0, 0, 0]),
    );
    let (code, text, class, method) = hard_error(&server, true, &bytes).await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            10,
            31
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_only_and_unsolicited_methods_are_command_invalid() {
    let server = TestServer::start().await;
    for (class_id, method_id, args) in [
        (20u16, 41u16, &[][..]), // channel.close-ok nobody asked for
        (20, 21, &[1][..]),      // channel.flow-ok
        (40, 11, &[][..]),       // exchange.declare-ok
    ] {
        let bytes = raw_frame(FRAME_METHOD, 1, &method_payload(class_id, method_id, args));
        let (code, text, class, method) = hard_error(&server, true, &bytes).await;
        assert_eq!(
            (code, text.as_str(), class, method),
            (
                503,
                "COMMAND_INVALID - unimplemented method",
                class_id,
                method_id
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_on_the_wrong_channel_kind_are_errors() {
    let server = TestServer::start().await;
    // A heartbeat on channel 1. RabbitMQ: "UNEXPECTED_FRAME - type 8, all octets = <<>>"
    let (code, text, _, _) = hard_error(&server, true, &raw_frame(FRAME_HEARTBEAT, 1, &[])).await;
    assert_eq!(code, 505);
    assert!(text.starts_with("UNEXPECTED_FRAME - "), "{text}");
    // A content header on channel 0. RabbitMQ: "UNEXPECTED_FRAME - type 2, all octets =
    // <<0,60,0,0,0,0,0,0,0,0,0,1,0,0>>"
    let header = raw_frame(FRAME_HEADER, 0, &header_payload(60, 1));
    let (code, text, _, _) = hard_error(&server, true, &header).await;
    assert_eq!(code, 505);
    assert!(text.starts_with("UNEXPECTED_FRAME - "), "{text}");
    // A body on channel 0. RabbitMQ: "UNEXPECTED_FRAME - type 3, all octets = <<\"x\">>"
    let (code, text, _, _) = hard_error(&server, true, &raw_frame(FRAME_BODY, 0, b"x")).await;
    assert_eq!(code, 505);
    assert!(text.starts_with("UNEXPECTED_FRAME - "), "{text}");
    // A channel-class method on channel 0 (RabbitMQ 3.10 answers 541 INTERNAL_ERROR,
    // a crash; 503 COMMAND_INVALID or 504 CHANNEL_ERROR are the sensible answers).
    let declare = raw_frame(FRAME_METHOD, 0, &method_payload(50, 10, &declare_args("x")));
    let (code, text, _, _) = hard_error(&server, true, &declare).await;
    assert!([503, 504, 541].contains(&code), "{code} {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_before_the_handshake_completes_end_the_connection() {
    let server = TestServer::start().await;
    let addr = server.addr();
    // connection.open before start-ok: RabbitMQ closes the socket (silently, after 3 s).
    let open_early = async {
        let mut raw = Raw::connect(addr).await;
        raw.start().await;
        raw.send(&raw_frame(
            FRAME_METHOD,
            0,
            &method_payload(10, 40, &[1, b'/', 0, 0]),
        ))
        .await;
        raw.expect_handshake_abort(Duration::from_secs(10)).await;
    };
    // channel.open before tune-ok: the same.
    let channel_early = async {
        let mut raw = Raw::connect(addr).await;
        raw.start().await;
        raw.start_ok().await;
        raw.tune().await;
        raw.send(&raw_frame(FRAME_METHOD, 1, &method_payload(20, 10, &[0])))
            .await;
        raw.expect_handshake_abort(Duration::from_secs(10)).await;
    };
    tokio::join!(open_early, channel_early);

    // channel.open after tune-ok but before connection.open: 505. RabbitMQ:
    // "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>>"
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.send(&raw_frame(FRAME_METHOD, 1, &method_payload(20, 10, &[0])))
        .await;
    let (code, text, _, _) = raw.expect_connection_close().await;
    assert_eq!(code, 505, "{text}");
    assert!(text.starts_with("UNEXPECTED_FRAME - "), "{text}");
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_publishes_are_all_confirmed_once_in_order() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("pipelined");
    declare_queue(&channel, &queue).await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    match raw.method().await {
        (1, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    const N: u64 = 200;
    let mut bytes = Vec::new();
    for i in 0..N {
        bytes.extend(publish_frame(1, &queue));
        let body = format!("m{i}");
        bytes.extend(raw_frame(
            FRAME_HEADER,
            1,
            &header_payload(60, body.len() as u64),
        ));
        bytes.extend(raw_frame(FRAME_BODY, 1, body.as_bytes()));
    }
    raw.send(&bytes).await;
    // Every tag 1..=N confirmed exactly once, acks in increasing order; `multiple`
    // covers every tag up to its own.
    let mut confirmed = 0u64;
    let mut multiple_acks = 0;
    while confirmed < N {
        match raw.method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                assert!(
                    ack.delivery_tag > confirmed,
                    "ack {ack:?} after {confirmed}"
                );
                if ack.multiple {
                    multiple_acks += 1;
                } else {
                    assert_eq!(ack.delivery_tag, confirmed + 1, "a single ack skipped tags");
                }
                confirmed = ack.delivery_tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(confirmed, N);
    let _ = multiple_acks; // how many acks were batched is the broker's choice
    assert_eq!(message_count(&channel, &queue).await, N as u32);
    // A consumer sees them in publish order.
    let mut consumer = within(
        "consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    for i in 0..N {
        assert_eq!(body(&next_delivery(&mut consumer).await), format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_open_sent_with_connection_open_is_answered() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    // connection.open and channel.open in one write, without waiting for open-ok.
    let mut bytes = Raw::encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    bytes.extend(Raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
            amq_protocol::protocol::channel::Open {},
        )),
    )));
    raw.send(&bytes).await;
    match raw.method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected connection.open-ok, got {other:?}"),
    }
    match raw.method().await {
        (1, AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected channel.open-ok, got {other:?}"),
    }
}
