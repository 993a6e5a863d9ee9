//! Delayed delivery: an `x-delayed-message` exchange (as RabbitMQ's community plugin
//! offers it) holds a message with an `x-delay` header that many milliseconds, then
//! routes it by its `x-delayed-type`. Held messages of a durable exchange are logged, so
//! they fire after a restart. Runs against Warren only: the plugin is not enabled on the
//! comparison RabbitMQ.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_lite::StreamExt;
use integration_tests::{TestServer, temp_data_dir, unique_name};
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_delayed(
    channel: &Channel,
    name: &str,
    durable: bool,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable,
                ..ExchangeDeclareOptions::default()
            },
            args,
        ),
    )
    .await
}

fn direct() -> FieldTable {
    table(&[("x-delayed-type", text("direct"))])
}

fn delayed(ms: i32) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-delay", AMQPValue::LongInt(ms))]))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_waits_its_delay_and_delays_order_delivery() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (_conn, channel) = open(&server).await;
    let exchange = unique_name("delayed");
    declare_delayed(&channel, &exchange, false, direct())
        .await
        .expect("declare");
    let queue = unique_name("delayed-q");
    declare_queue(&channel, &queue).await;
    bind_queue(&channel, &queue, &exchange, "k").await;
    let mut consumer = consume_with(
        &channel,
        &queue,
        "c",
        BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    )
    .await;
    let started = Instant::now();
    publish_with(&channel, &exchange, "k", b"late", delayed(400)).await;
    publish_with(&channel, &exchange, "k", b"early", delayed(100)).await;
    publish_with(&channel, &exchange, "k", b"middle", delayed(250)).await;
    publish_with(&channel, &exchange, "k", b"now", BasicProperties::default()).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let delivery = next_delivery(&mut consumer).await;
        order.push((body(&delivery), started.elapsed()));
    }
    let names: Vec<&str> = order.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(names, ["now", "early", "middle", "late"]);
    assert!(
        order[3].1 >= Duration::from_millis(400),
        "the 400 ms message came after {:?}",
        order[3].1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delayed_type_is_required() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (_conn, channel) = open(&server).await;
    assert_amqp_error(
        declare_delayed(
            &channel,
            &unique_name("no-type"),
            false,
            FieldTable::default(),
        )
        .await,
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn held_messages_fire_after_a_restart() {
    let dir = temp_data_dir("delayed-restart");
    let server = TestServer::start_in(&dir).await;
    if !server.is_warren() {
        return;
    }
    let exchange = unique_name("delayed-durable");
    let queue = unique_name("delayed-durable-q");
    {
        let (_conn, channel) = open_confirm(&server).await;
        declare_delayed(&channel, &exchange, true, direct())
            .await
            .expect("declare");
        within(
            "queue.declare",
            channel.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare");
        bind_queue(&channel, &queue, &exchange, "k").await;
        publish_with(
            &channel,
            &exchange,
            "k",
            b"after the restart",
            delayed(1500).with_delivery_mode(2),
        )
        .await;
        assert_eq!(message_count(&channel, &queue).await, 0, "delivered early");
    }
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    let mut consumer = consume_with(
        &channel,
        &queue,
        "after",
        BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    )
    .await;
    let delivery = within("the held message", consumer.next())
        .await
        .expect("stream open")
        .expect("delivery");
    assert_eq!(body(&delivery), "after the restart");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
