//! Channel errors close only their channel, with RabbitMQ's code and text; the
//! connection and its other channels carry on; after `channel.close` the broker ignores
//! the channel until `close-ok`, and the channel number can then be reused.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, channel as channel_methods, queue};
use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicConsumeOptions, ChannelFlowOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

fn declare_method(name: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_error_leaves_the_connection_and_other_channels_working() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let bystander = common::channel(&conn).await;
    let queue = unique_name("bystander");
    declare_queue(&bystander, &queue).await;
    let missing = unique_name("missing");
    let result = within(
        "passive declare",
        channel.queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
    );
    // The failed channel refuses further use on the client side; the others work.
    assert!(!channel.status().connected());
    publish(&bystander, "", &queue, b"fine").await;
    wait_for_count(&bystander, &queue, 1).await;
    let fresh = common::channel(&conn).await;
    declare_queue(&fresh, &unique_name("fresh")).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_close_reports_the_failing_method() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    let missing = unique_name("missing");
    raw.send_method(1, declare_method(&missing, true)).await;
    let (code, text, class, method) = raw.expect_channel_close(1).await;
    assert_eq!(code, 404);
    assert_eq!(
        text,
        format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
    );
    assert_eq!((class, method), (50, 10), "queue.declare");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_channel_close_the_broker_ignores_the_channel_until_close_ok() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    let missing = unique_name("missing");
    // Fail the channel, then keep talking on it before reading the close.
    raw.send_method(1, declare_method(&missing, true)).await;
    let queue = unique_name("ignored");
    raw.send_method(1, declare_method(&queue, false)).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.as_str().into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    // A content header and body for that publish, too.
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&2u64.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    raw.send(&raw_frame(2, 1, &header)).await;
    raw.send(&raw_frame(3, 1, b"hi")).await;
    // Exactly one channel.close comes back, nothing else on channel 1.
    match raw.method().await {
        (1, AMQPClass::Channel(channel_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 404);
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    raw.send_method(
        1,
        AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(
            channel_methods::CloseOk {},
        )),
    )
    .await;
    // The channel number is free again and works; the ignored declare never happened.
    raw.open_channel(1).await;
    raw.send_method(1, declare_method(&queue, true)).await;
    let (code, text, _, _) = raw.expect_channel_close(1).await;
    assert_eq!(
        (code, text),
        (404, format!("NOT_FOUND - no queue '{queue}' in vhost '/'"))
    );
    raw.open_channel(1).await;
    raw.send_method(1, declare_method(&queue, false)).await;
    match raw.method().await {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.queue.as_str(), queue);
        }
        other => panic!("expected declare-ok, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_channel_close_is_answered_with_close_ok() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(7).await;
    raw.send_method(
        7,
        AMQPClass::Channel(channel_methods::AMQPMethod::Close(channel_methods::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    match raw.method().await {
        (7, AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    raw.open_channel(7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_with_a_prefetch_size_is_not_implemented() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    )
    .await;
    match raw.method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))) => {}
        other => panic!("expected qos-ok, got {other:?}"),
    }
    // amq-protocol has no prefetch_size field: write basic.qos by hand with size 1.
    let mut payload = Vec::new();
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&1u32.to_be_bytes()); // prefetch-size
    payload.extend_from_slice(&0u16.to_be_bytes()); // prefetch-count
    payload.push(0); // global
    raw.send(&raw_frame(1, 1, &payload)).await;
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1)")
    );
    assert_eq!((class, method), (60, 10));
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_flow() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let active = within(
        "channel.flow",
        channel.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("flow active=true");
    assert!(active);
    let channel = common::channel(&conn).await;
    let result = within(
        "channel.flow",
        channel.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    assert_amqp_error(result, 540, "NOT_IMPLEMENTED - active=false");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_request_is_accepted() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    within(
        "access.request",
        channel.access_request("/data".into(), Default::default()),
    )
    .await
    .expect("access.request-ok");
    declare_queue(&channel, &unique_name("after-access")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_on_a_queue_deleted_meanwhile_is_404_on_that_channel_only() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("vanishing");
    declare_queue(&channel, &queue).await;
    within(
        "delete",
        channel.queue_delete(queue.as_str().into(), Default::default()),
    )
    .await
    .expect("delete");
    let consumer_ch = common::channel(&conn).await;
    let result = within(
        "consume",
        consumer_ch.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{queue}' in vhost '/'"),
    );
    declare_queue(&channel, &unique_name("still-fine")).await;
}
