//! Connection handshake: SASL PLAIN and AMQPLAIN, refused logins, unknown vhosts,
//! negotiation of channel_max / frame_max / heartbeat, heartbeats, Connection.Start.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::AMQPValue;
use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const LOGIN_REFUSED_PLAIN: &str = "ACCESS_REFUSED - Login was refused using authentication \
                                   mechanism PLAIN. For details see the broker logfile.";
const LOGIN_REFUSED_AMQPLAIN: &str = "ACCESS_REFUSED - Login was refused using authentication \
                                      mechanism AMQPLAIN. For details see the broker logfile.";

#[tokio::test(flavor = "multi_thread")]
async fn plain_login_negotiates_the_servers_defaults() {
    let server = TestServer::start().await;
    let conn = within("connect", server.connect()).await;
    let config = conn.configuration();
    assert_eq!(config.channel_max(), 2047);
    assert_eq!(config.frame_max(), 131_072);
    assert_eq!(config.heartbeat(), 60);
    assert_eq!(conn.status().vhost().as_str(), "/");
    let channel = channel(&conn).await;
    declare_queue(&channel, &unique_name("plain")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn amqplain_login_works() {
    let server = TestServer::start().await;
    let uri = uri_with(&server, "guest", "guest", "%2f", "?auth_mechanism=amqplain");
    let conn = connect_uri(&uri).await.expect("AMQPLAIN login");
    let channel = channel(&conn).await;
    let queue = unique_name("amqplain");
    declare_queue(&channel, &queue).await;
    publish(&channel, "", &queue, b"hi").await;
    wait_for_count(&channel, &queue, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused_with_403() {
    let server = TestServer::start().await;
    let uri = uri_with(&server, "guest", "wrong", "%2f", "");
    assert_amqp_error(connect_uri(&uri).await, 403, LOGIN_REFUSED_PLAIN);
    // The same with AMQPLAIN names that mechanism.
    let uri = uri_with(&server, "guest", "wrong", "%2f", "?auth_mechanism=amqplain");
    assert_amqp_error(connect_uri(&uri).await, 403, LOGIN_REFUSED_AMQPLAIN);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_is_refused_with_403() {
    let server = TestServer::start().await;
    let uri = uri_with(&server, &unique_name("nobody"), "guest", "%2f", "");
    assert_amqp_error(connect_uri(&uri).await, 403, LOGIN_REFUSED_PLAIN);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_login_over_raw_socket_gets_connection_close_then_socket_close() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok_with("PLAIN", "guest", "bad-password").await;
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!((code, text.as_str()), (403, LOGIN_REFUSED_PLAIN));
    // RabbitMQ names no method here.
    assert_eq!((class, method), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_mechanism_fails_the_handshake() {
    // RabbitMQ closes the socket (after a 3 s anti-brute-force delay) without a
    // connection.close: no authentication_failure_close for an unknown mechanism.
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok_with("CRAM-MD5", "guest", "guest").await;
    raw.expect_handshake_abort(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_vhost_is_530_not_allowed() {
    let server = TestServer::start().await;
    let vhost = unique_name("no-such-vhost");
    let uri = uri_with(&server, "guest", "guest", &vhost, "");
    assert_amqp_error(
        connect_uri(&uri).await,
        530,
        &format!("NOT_ALLOWED - vhost {vhost} not found"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_can_lower_channel_max_frame_max_and_heartbeat() {
    let server = TestServer::start().await;
    let uri = uri_with(
        &server,
        "guest",
        "guest",
        "%2f",
        "?frame_max=8192&channel_max=16&heartbeat=5",
    );
    let conn = connect_uri(&uri).await.expect("connect with lower limits");
    let config = conn.configuration();
    assert_eq!(config.frame_max(), 8192);
    assert_eq!(config.channel_max(), 16);
    assert_eq!(config.heartbeat(), 5);

    // A body far larger than frame_max travels in many body frames, both ways.
    let channel = channel(&conn).await;
    let queue = unique_name("small-frames");
    declare_queue(&channel, &queue).await;
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    publish(&channel, "", &queue, &big).await;
    let mut consumer = within(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data.len(), big.len());
    assert!(delivery.data == big, "body corrupted across frames");
}

#[tokio::test(flavor = "multi_thread")]
async fn tune_proposes_rabbitmqs_limits_and_accepts_them_back() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    assert_eq!(tune.channel_max, 2047);
    assert_eq!(tune.frame_max, 131_072);
    assert_eq!(tune.heartbeat, 60);
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.open_vhost("/").await;
    raw.open_channel(2047).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frame_max_4096_is_accepted_for_old_clients() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    raw.tune().await;
    raw.tune_ok(2047, 4096, 0).await;
    raw.open_vhost("/").await;
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tune_ok_outside_the_servers_limits_fails_the_handshake() {
    // RabbitMQ refuses frame_max below 4096 or above its own, and 0 ("no limit") for
    // channel_max or frame_max when it has a limit: it closes the socket without
    // connection.open-ok (silently, after 3 s).
    let server = TestServer::start().await;
    let cases: [(u16, u32); 4] = [(2047, 4095), (2047, 131_073), (2047, 0), (0, 131_072)];
    let mut tasks = Vec::new();
    for (channel_max, frame_max) in cases {
        let addr = server.addr();
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            raw.start().await;
            raw.start_ok().await;
            raw.tune().await;
            raw.tune_ok(channel_max, frame_max, 0).await;
            raw.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            )
            .await;
            raw.expect_handshake_abort(Duration::from_secs(10)).await;
        }));
    }
    for task in tasks {
        task.await.expect("case passed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_more_channels_than_channel_max_is_a_connection_error() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    raw.tune().await;
    raw.tune_ok(3, 131_072, 0).await;
    raw.open_vhost("/").await;
    // channel_max limits how many channels are open, not their numbers.
    raw.open_channel(10).await;
    raw.open_channel(11).await;
    raw.open_channel(12).await;
    raw.send_method(
        13,
        AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
            amq_protocol::protocol::channel::Open {},
        )),
    )
    .await;
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            530,
            "NOT_ALLOWED - number of channels opened (3) has reached the negotiated \
             channel_max (3)"
        )
    );
    assert_eq!((class, method), (0, 0));
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_start_announces_version_mechanisms_locales_and_capabilities() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    let start = raw.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms: Vec<String> = start
        .mechanisms
        .to_string()
        .split(' ')
        .map(str::to_string)
        .collect();
    assert!(mechanisms.contains(&"PLAIN".to_string()), "{mechanisms:?}");
    assert!(
        mechanisms.contains(&"AMQPLAIN".to_string()),
        "{mechanisms:?}"
    );
    assert_eq!(start.locales.to_string(), "en_US");
    let props = start.server_properties.inner();
    for key in ["product", "version", "platform", "capabilities"] {
        assert!(
            props.contains_key(key),
            "server_properties lack {key}: {props:?}"
        );
    }
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("capabilities is not a table: {props:?}");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
        "connection.blocked",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap} missing: {caps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_sends_heartbeats_and_closes_a_silent_peer() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    // The client asks for 1 s heartbeats, then says nothing at all.
    raw.tune_ok(tune.channel_max, tune.frame_max, 1).await;
    raw.open_vhost("/").await;
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    loop {
        match raw.read().await {
            Read::Frame(AMQPFrame::Heartbeat) => heartbeats += 1,
            Read::Frame(other) => panic!("unexpected frame {other:?}"),
            Read::Eof => break,
        }
    }
    let silent_for = started.elapsed();
    assert!(heartbeats >= 1, "no heartbeat before closing");
    // Two missed intervals of 1 s: closed after ~2 s, certainly not before 1 s.
    assert!(
        silent_for >= Duration::from_millis(1500) && silent_for <= Duration::from_secs(5),
        "silent peer closed after {silent_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_heartbeats_stays_connected() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 1).await;
    raw.open_vhost("/").await;
    let heartbeat = Raw::encode(&AMQPFrame::Heartbeat);
    // Three seconds of 1 s heartbeats from our side: well past two intervals.
    for _ in 0..6 {
        raw.send(&heartbeat).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_may_log_in_only_from_loopback() {
    let server = TestServer::start_with(|config| {
        config.bind = "0.0.0.0".parse().expect("any address");
    })
    .await;
    if !server.is_warren() {
        // A Warren-only setting: the test RabbitMQ allows guest from anywhere.
        return;
    }
    let Some(ip) = non_loopback_ip() else {
        return;
    };
    let uri = format!("amqp://guest:guest@{ip}:{}/%2f", server.addr().port());
    assert_amqp_error(connect_uri(&uri).await, 403, LOGIN_REFUSED_PLAIN);
    // From loopback it works.
    let (_conn, channel) = open(&server).await;
    within(
        "queue.declare",
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare from loopback");
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_guest_is_allowed_when_configured() {
    let server = TestServer::start_with(|config| {
        config.bind = "0.0.0.0".parse().expect("any address");
        config.allow_remote_default_user = true;
    })
    .await;
    if !server.is_warren() {
        return;
    }
    let Some(ip) = non_loopback_ip() else {
        return;
    };
    let uri = format!("amqp://guest:guest@{ip}:{}/%2f", server.addr().port());
    let conn = connect_uri(&uri).await.expect("remote guest allowed");
    let _ = channel(&conn).await;
}

/// This machine's address on its default route, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    ["8.8.8.8:9", "192.0.2.1:9", "10.0.0.1:9"]
        .into_iter()
        .find_map(|target| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect(target).ok()?;
            let ip = socket.local_addr().ok()?.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_close_is_answered_with_close_ok() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    match raw.method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    // RabbitMQ leaves closing the socket to the client after close-ok.
    // And lapin's orderly close works too.
    let conn = within("connect", server.connect()).await;
    within("close", conn.close(200, "OK".into()))
        .await
        .expect("close");
}
