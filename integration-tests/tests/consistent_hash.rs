//! The consistent-hash exchange (`x-consistent-hash`, RabbitMQ's plugin): each message
//! goes to exactly one bound queue, chosen by hashing its routing key (or a header),
//! with shares weighted by the binding keys. Runs against Warren only: the plugin is not
//! enabled on the comparison RabbitMQ.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_hash_exchange(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions::default(),
            args,
        ),
    )
    .await
}

async fn bind_weighted(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    weight: &str,
) -> lapin::Result<()> {
    within(
        "queue.bind",
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            weight.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_message_goes_to_one_queue_in_proportion_to_the_weights() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("hash");
    declare_hash_exchange(&channel, &exchange, FieldTable::default())
        .await
        .expect("declare");
    let light = unique_name("light");
    let heavy = unique_name("heavy");
    declare_queue(&channel, &light).await;
    declare_queue(&channel, &heavy).await;
    bind_weighted(&channel, &light, &exchange, "1")
        .await
        .expect("bind");
    bind_weighted(&channel, &heavy, &exchange, "3")
        .await
        .expect("bind");
    const N: u32 = 2000;
    for i in 0..N {
        publish(&channel, &exchange, &format!("key-{i}"), b"x").await;
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    let (a, b) = loop {
        let a = message_count(&channel, &light).await;
        let b = message_count(&channel, &heavy).await;
        if a + b == N || tokio::time::Instant::now() >= deadline {
            break (a, b);
        }
    };
    assert_eq!(a + b, N, "every message goes to exactly one queue");
    let heavy_share = f64::from(b) / f64::from(N);
    assert!(
        (0.6..0.9).contains(&heavy_share),
        "weight 3 of 4 got {heavy_share:.2} of the messages"
    );
    // The same key always lands in the same queue.
    let before = message_count(&channel, &heavy).await;
    for _ in 0..10 {
        publish(&channel, &exchange, "probe", b"same").await;
    }
    wait_for_count_sum(&channel, &light, &heavy, N + 10).await;
    let after = message_count(&channel, &heavy).await;
    assert!(after == before || after == before + 10, "one key was split");
}

async fn wait_for_count_sum(channel: &Channel, a: &str, b: &str, total: u32) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let sum = message_count(channel, a).await + message_count(channel, b).await;
        if sum == total {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counted {sum}, not {total}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_header_picks_the_queue() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("hash-header");
    declare_hash_exchange(&channel, &exchange, table(&[("hash-header", text("user"))]))
        .await
        .expect("declare");
    let queues = [
        unique_name("hh-a"),
        unique_name("hh-b"),
        unique_name("hh-c"),
    ];
    for queue in &queues {
        declare_queue(&channel, queue).await;
        bind_weighted(&channel, queue, &exchange, "1")
            .await
            .expect("bind");
    }
    // Different routing keys, one header value: one queue gets them all.
    for i in 0..30 {
        publish_with(
            &channel,
            &exchange,
            &format!("rk-{i}"),
            b"x",
            BasicProperties::default().with_headers(table(&[("user", text("alice"))])),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let mut counts = Vec::new();
        for queue in &queues {
            counts.push(message_count(&channel, queue).await);
        }
        if counts.iter().sum::<u32>() == 30 {
            assert!(
                counts.contains(&30),
                "one header value was split: {counts:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "counts {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_and_arguments_are_validated() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (conn, channel) = open(&server).await;
    let exchange = unique_name("hash-bad");
    declare_hash_exchange(&channel, &exchange, FieldTable::default())
        .await
        .expect("declare");
    let queue = unique_name("hash-bad-q");
    declare_queue(&channel, &queue).await;
    assert_amqp_error(
        bind_weighted(&channel, &queue, &exchange, "abc").await,
        406,
        "PRECONDITION_FAILED - The binding key must be an integer: <<\"abc\">>",
    );
    let channel = common::channel(&conn).await;
    assert_amqp_error(
        bind_weighted(&channel, &queue, &exchange, "0").await,
        406,
        "PRECONDITION_FAILED - The binding key must be greater than 0",
    );
    let channel = common::channel(&conn).await;
    let both = table(&[
        ("hash-header", text("h")),
        ("hash-property", text("message_id")),
    ]);
    assert_amqp_error(
        declare_hash_exchange(&channel, &unique_name("hash-both"), both).await,
        406,
        "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive",
    );
}
