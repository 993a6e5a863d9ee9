//! Priorities: priority queues (`x-max-priority` and the message `priority` property),
//! consumer priorities (the `x-priority` consumer argument) and single active consumer
//! (`x-single-active-consumer`).

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};

/// Declares `name` with `args`, panicking on refusal.
async fn declare(channel: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    declare_queue_with(channel, name, table(args))
        .await
        .unwrap_or_else(|err| panic!("declare {name} with {args:?}: {err:?}"));
}

/// Publishes each `(body, priority)` in turn (`None`: no priority property).
async fn publish_prioritised(channel: &Channel, queue: &str, messages: &[(&str, Option<u8>)]) {
    for (body, priority) in messages {
        let properties = match priority {
            Some(priority) => BasicProperties::default().with_priority(*priority),
            None => BasicProperties::default(),
        };
        publish_with(channel, "", queue, body.as_bytes(), properties).await;
    }
}

fn bodies(drained: Vec<(String, bool)>) -> Vec<String> {
    drained.into_iter().map(|(body, _)| body).collect()
}

/// A consumer on its own channel with `prefetch` and consumer `args`.
async fn consumer_on(
    conn: &Connection,
    queue: &str,
    tag: &str,
    prefetch_count: u16,
    args: FieldTable,
) -> (Channel, Consumer) {
    let channel = common::channel(conn).await;
    prefetch(&channel, prefetch_count).await;
    let consumer = consume_with(&channel, queue, tag, BasicConsumeOptions::default(), args).await;
    (channel, consumer)
}

fn consumer_priority(priority: i32) -> FieldTable {
    table(&[("x-priority", int(priority))])
}

async fn ack(delivery: &lapin::message::Delivery) {
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

// ---------------------------------------------------------------------------------------
// Priority queues.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn higher_priority_messages_are_delivered_first() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("priority");
    declare(&channel, &queue, &[("x-max-priority", int(10))]).await;
    // No priority property is priority 0; equal priorities keep publish order.
    publish_prioritised(
        &channel,
        &queue,
        &[
            ("p1", Some(1)),
            ("none", None),
            ("p5", Some(5)),
            ("p10", Some(10)),
            ("p0", Some(0)),
            ("p5-again", Some(5)),
        ],
    )
    .await;
    assert_eq!(message_count(&channel, &queue).await, 6);
    assert_eq!(
        bodies(drain(&channel, &queue).await),
        ["p10", "p5", "p5-again", "p1", "none", "p0"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_priority_above_the_maximum_counts_as_the_maximum() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("priority-cap");
    declare(&channel, &queue, &[("x-max-priority", int(5))]).await;
    // "over" (200) ranks with "max" (5), after it in publish order, and above "mid".
    publish_prioritised(
        &channel,
        &queue,
        &[("mid", Some(3)), ("max", Some(5)), ("over", Some(200))],
    )
    .await;
    let first = get(&channel, &queue).await.expect("max");
    assert_eq!(body(&first.delivery), "max");
    let second = get(&channel, &queue).await.expect("over");
    assert_eq!(body(&second.delivery), "over");
    // The property is delivered as published, not capped.
    assert_eq!(second.delivery.properties.priority(), &Some(200));
    let third = get(&channel, &queue).await.expect("mid");
    assert_eq!(body(&third.delivery), "mid");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_without_max_priority_ignores_priorities() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("no-priority");
    declare_queue(&channel, &queue).await;
    publish_prioritised(
        &channel,
        &queue,
        &[("low", Some(0)), ("high", Some(9)), ("none", None)],
    )
    .await;
    assert_eq!(
        bodies(drain(&channel, &queue).await),
        ["low", "high", "none"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_receive_in_priority_order_and_requeues_keep_their_rank() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = unique_name("priority-consume");
    declare(&channel, &queue, &[("x-max-priority", int(3))]).await;
    publish_prioritised(
        &channel,
        &queue,
        &[
            ("a1", Some(1)),
            ("b3", Some(3)),
            ("c2", Some(2)),
            ("d3", Some(3)),
        ],
    )
    .await;
    let (_consumer_channel, mut consumer) =
        consumer_on(&conn, &queue, "ordered", 1, FieldTable::default()).await;
    let first = next_delivery(&mut consumer).await;
    assert_eq!(body(&first), "b3");
    // Requeued, the priority-3 message goes back ahead of everything below it.
    within(
        "basic.reject",
        first.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let mut got = Vec::new();
    for _ in 0..4 {
        let delivery = next_delivery(&mut consumer).await;
        got.push((body(&delivery), delivery.redelivered));
        ack(&delivery).await;
    }
    assert_eq!(
        got,
        [
            ("b3".to_string(), true),
            ("d3".to_string(), false),
            ("c2".to_string(), false),
            ("a1".to_string(), false),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Consumer priorities.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_higher_priority_consumer_with_credit_is_served_first() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = unique_name("consumer-priority");
    declare_queue(&channel, &queue).await;
    // The low-priority consumer subscribes first: subscription order does not matter.
    let (_low_ch, mut low) = consumer_on(&conn, &queue, "low", 10, consumer_priority(1)).await;
    let (_high_ch, mut high) = consumer_on(&conn, &queue, "high", 2, consumer_priority(10)).await;
    for i in 0..5 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    // The high one takes what its prefetch allows; the rest overflows to the low one.
    let h0 = next_delivery(&mut high).await;
    let h1 = next_delivery(&mut high).await;
    assert_eq!((body(&h0), body(&h1)), ("m0".into(), "m1".into()));
    let mut low_got = Vec::new();
    for _ in 0..3 {
        low_got.push(body(&next_delivery(&mut low).await));
    }
    assert_eq!(low_got, ["m2", "m3", "m4"]);
    // With credit again, the high one is served before the low one, which has plenty.
    ack(&h0).await;
    ack(&h1).await;
    for i in 5..7 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    assert_eq!(body(&next_delivery(&mut high).await), "m5");
    assert_eq!(body(&next_delivery(&mut high).await), "m6");
    assert_no_delivery(&mut low).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_consumer_priority_is_zero() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = unique_name("consumer-priority-default");
    declare_queue(&channel, &queue).await;
    let (_neg_ch, mut negative) =
        consumer_on(&conn, &queue, "negative", 0, consumer_priority(-1)).await;
    let (_def_ch, mut default) =
        consumer_on(&conn, &queue, "default", 0, FieldTable::default()).await;
    for i in 0..3 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    for i in 0..3 {
        assert_eq!(body(&next_delivery(&mut default).await), format!("m{i}"));
    }
    assert_no_delivery(&mut negative).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_priority_consumers_share_round_robin() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = unique_name("consumer-priority-equal");
    declare_queue(&channel, &queue).await;
    let (_low_ch, mut low) = consumer_on(&conn, &queue, "low", 0, consumer_priority(1)).await;
    let (_a_ch, mut a) = consumer_on(&conn, &queue, "a", 0, consumer_priority(5)).await;
    let (_b_ch, mut b) = consumer_on(&conn, &queue, "b", 0, consumer_priority(5)).await;
    for i in 0..4 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    let mut a_got = Vec::new();
    let mut b_got = Vec::new();
    for _ in 0..2 {
        a_got.push(body(&next_delivery(&mut a).await));
        b_got.push(body(&next_delivery(&mut b).await));
    }
    assert_eq!(
        (a_got, b_got),
        (
            vec!["m0".to_string(), "m2".into()],
            vec!["m1".to_string(), "m3".into()]
        )
    );
    assert_no_delivery(&mut low).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_priority_must_be_an_integer() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("consumer-priority-type");
    declare_queue(&channel, &queue).await;
    for (value, type_name) in [
        (text("high"), "longstr"),
        (AMQPValue::Boolean(true), "bool"),
        (AMQPValue::Double(1.0), "double"),
    ] {
        let channel = common::channel(&conn).await;
        let result = within(
            "basic.consume",
            channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                table(&[("x-priority", value)]),
            ),
        )
        .await;
        assert_amqp_error(
            result,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' in vhost \
                 '/': \"expected integer, got {type_name}\""
            ),
        );
    }
    // Any integer type, of any size.
    let channel = common::channel(&conn).await;
    for value in [AMQPValue::LongLongInt(1 << 40), AMQPValue::ShortInt(-3)] {
        consume_with(
            &channel,
            &queue,
            "",
            BasicConsumeOptions::default(),
            table(&[("x-priority", value)]),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// Single active consumer.
// ---------------------------------------------------------------------------------------

async fn declare_single_active(channel: &Channel, prefix: &str) -> String {
    let queue = unique_name(prefix);
    declare(
        channel,
        &queue,
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    )
    .await;
    queue
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_single_active_consumer_receives() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = declare_single_active(&channel, "sac").await;
    let (_a_ch, mut a) = consumer_on(&conn, &queue, "a", 0, FieldTable::default()).await;
    let (_b_ch, mut b) = consumer_on(&conn, &queue, "b", 0, FieldTable::default()).await;
    for i in 0..4 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    for i in 0..4 {
        let delivery = next_delivery(&mut a).await;
        assert_eq!(body(&delivery), format!("m{i}"));
        ack(&delivery).await;
    }
    assert_no_delivery(&mut b).await;
    // Both count as consumers of the queue.
    let queue_state = declare_queue_with(
        &channel,
        &queue,
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await
    .expect("redeclare");
    assert_eq!(queue_state.consumer_count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_consumer_takes_over_when_the_active_one_cancels() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = declare_single_active(&channel, "sac-cancel").await;
    let (a_ch, mut a) = consumer_on(&conn, &queue, "a", 1, FieldTable::default()).await;
    let (_b_ch, mut b) = consumer_on(&conn, &queue, "b", 0, FieldTable::default()).await;
    let (_c_ch, mut c) = consumer_on(&conn, &queue, "c", 0, FieldTable::default()).await;
    publish(&channel, "", &queue, b"m0").await;
    let held = next_delivery(&mut a).await;
    assert_eq!(body(&held), "m0");
    // Cancelled with m0 unacked and nothing ready. (RabbitMQ 3.10.8 crashes the queue
    // process if messages are ready behind a cancelled active consumer that still has
    // unacked ones, at the next publish; that case is left out here.)
    within(
        "basic.cancel",
        a_ch.basic_cancel("a".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    // The next consumer in subscription order is the active one now.
    for i in 1..3 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    for expected in ["m1", "m2"] {
        assert_eq!(body(&next_delivery(&mut b).await), expected);
    }
    // The cancelled consumer's unacked message stayed with its channel; requeued from
    // there, it goes to the new active consumer.
    within(
        "basic.reject",
        held.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let again = next_delivery(&mut b).await;
    assert_eq!((body(&again), again.redelivered), ("m0".into(), true));
    assert_no_delivery(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_active_consumer_s_channel_closes_its_unacked_messages_go_to_the_next() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = declare_single_active(&channel, "sac-close").await;
    let (a_ch, mut a) = consumer_on(&conn, &queue, "a", 2, FieldTable::default()).await;
    let (_b_ch, mut b) = consumer_on(&conn, &queue, "b", 0, FieldTable::default()).await;
    for i in 0..4 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    assert_eq!(body(&next_delivery(&mut a).await), "m0");
    assert_eq!(body(&next_delivery(&mut a).await), "m1");
    assert_no_delivery(&mut b).await;
    within("channel.close", a_ch.close(200, "OK".into()))
        .await
        .expect("close the active consumer's channel");
    let mut got = Vec::new();
    for _ in 0..4 {
        let delivery = next_delivery(&mut b).await;
        got.push((body(&delivery), delivery.redelivered));
    }
    assert_eq!(
        got,
        [
            ("m0".to_string(), true),
            ("m1".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_active_consumer_on_another_connection_takes_over_when_it_closes() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = declare_single_active(&channel, "sac-conn").await;
    let (first_conn, first_ch) = open(&server).await;
    prefetch(&first_ch, 1).await;
    let mut first = consume_with(
        &first_ch,
        &queue,
        "first",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    let (_second_ch, mut second) =
        consumer_on(&conn, &queue, "second", 0, FieldTable::default()).await;
    publish(&channel, "", &queue, b"m0").await;
    publish(&channel, "", &queue, b"m1").await;
    assert_eq!(body(&next_delivery(&mut first).await), "m0");
    within("connection.close", first_conn.close(200, "OK".into()))
        .await
        .expect("close the first connection");
    let delivery = next_delivery(&mut second).await;
    assert_eq!((body(&delivery), delivery.redelivered), ("m0".into(), true));
    assert_eq!(body(&next_delivery(&mut second).await), "m1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_active_consumer_queue_refuses_exclusive_consumers() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = declare_single_active(&channel, "sac-exclusive").await;
    // Even with no other consumer.
    let consumer_channel = common::channel(&conn).await;
    let result = within(
        "basic.consume",
        consumer_channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        &format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"),
    );
    let consumer_channel = common::channel(&conn).await;
    consume_with(
        &consumer_channel,
        &queue,
        "",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
}
