//! Quorum queues as clients see them: declared durable, redeliveries counted in
//! `x-delivery-count`, and a message returned more often than `x-delivery-limit` allows
//! dead-lettered with reason `delivery_limit`. Streams have their own tests (`streams.rs`).

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = table(extra);
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

async fn declare(
    channel: &lapin::Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        channel.queue_declare(name.into(), options, args),
    )
    .await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn requeue(delivery: &lapin::message::BasicGetMessage) {
    within(
        "basic.reject",
        delivery
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
}

fn delivery_count(message: &lapin::message::BasicGetMessage) -> Option<i64> {
    match header(&message.delivery.properties, "x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        other => panic!("x-delivery-count is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_queue_must_be_durable_and_not_exclusive() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("qq-transient");
    assert_amqp_error(
        declare(&channel, &name, QueueDeclareOptions::default(), quorum(&[])).await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue '{name}' in vhost '/'"
        ),
    );
    let channel = common::channel(&conn).await;
    let name = unique_name("qq-exclusive");
    let exclusive = QueueDeclareOptions {
        durable: true,
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    assert_amqp_error(
        declare(&channel, &name, exclusive, quorum(&[])).await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{name}' in vhost '/'"
        ),
    );
    let channel = common::channel(&conn).await;
    declare(&channel, &unique_name("qq"), durable(), quorum(&[]))
        .await
        .expect("a durable quorum queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliveries_carry_a_delivery_count() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("qq-count");
    declare(&channel, &name, durable(), quorum(&[]))
        .await
        .expect("declare");
    publish(&channel, "", &name, b"m").await;
    let first = wait_for_get(&channel, &name).await;
    assert_eq!(delivery_count(&first), None);
    assert!(!first.delivery.redelivered);
    requeue(&first).await;
    let second = wait_for_get(&channel, &name).await;
    assert_eq!(delivery_count(&second), Some(1));
    assert!(second.delivery.redelivered);
    requeue(&second).await;
    let third = wait_for_get(&channel, &name).await;
    assert_eq!(delivery_count(&third), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_delivery_limit_a_message_is_dead_lettered() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let dlq = unique_name("qq-dlq");
    declare_queue(&channel, &dlq).await;
    let name = unique_name("qq-limit");
    declare(
        &channel,
        &name,
        durable(),
        quorum(&[
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dlq)),
        ]),
    )
    .await
    .expect("declare");
    publish(&channel, "", &name, b"poison").await;
    for _ in 0..3 {
        let message = wait_for_get(&channel, &name).await;
        requeue(&message).await;
    }
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(dead.delivery.data, b"poison");
    let deaths = x_death(&dead.delivery.properties);
    assert_eq!(
        field_text(&deaths[0], "reason").as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(message_count(&channel, &name).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_delivery_limit_the_twenty_first_return_dead_letters() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        // RabbitMQ 3.x has no default delivery limit; 4.x has this one.
        return;
    }
    let (_conn, channel) = open(&server).await;
    let dlq = unique_name("qq-default-dlq");
    declare_queue(&channel, &dlq).await;
    let name = unique_name("qq-default-limit");
    declare(
        &channel,
        &name,
        durable(),
        quorum(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dlq)),
        ]),
    )
    .await
    .expect("declare");
    publish(&channel, "", &name, b"again and again").await;
    for returned in 1..=20 {
        let message = wait_for_get(&channel, &name).await;
        requeue(&message).await;
        if returned < 20 {
            assert_eq!(
                message_count(&channel, &dlq).await,
                0,
                "dead-lettered after {returned}"
            );
        }
    }
    let last = wait_for_get(&channel, &name).await;
    assert_eq!(delivery_count(&last), Some(20));
    requeue(&last).await;
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(
        field_text(&x_death(&dead.delivery.properties)[0], "reason").as_deref(),
        Some("delivery_limit")
    );
}
