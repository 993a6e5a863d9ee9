//! Extensions on durable queues survive a restart: TTLs keep counting while the broker
//! is down, dead-lettered persistent messages stay, priority order holds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use integration_tests::{TestServer, temp_data_dir, unique_name};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare_durable(channel: &Channel, name: &str, args: FieldTable) {
    within(
        "queue.declare",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        ),
    )
    .await
    .expect("declare a durable queue");
}

fn dead_letter_to(dlq: &str, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = table(extra);
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(dlq));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_keeps_counting_while_the_broker_is_down() {
    let dir = temp_data_dir("ttl-restart");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("ttl-restart");
    let dlq = unique_name("ttl-restart-dlq");
    let published = {
        let (_conn, channel) = open_confirm(&server).await;
        declare_durable(&channel, &dlq, FieldTable::default()).await;
        declare_durable(
            &channel,
            &queue,
            dead_letter_to(&dlq, &[("x-message-ttl", int(800))]),
        )
        .await;
        publish_with(&channel, "", &queue, b"short-lived", persistent()).await;
        publish_with(
            &channel,
            "",
            &queue,
            b"own-expiration",
            persistent().with_expiration("600".into()),
        )
        .await;
        wait_for_count(&channel, &queue, 2).await;
        Instant::now()
    };
    server.stop().await;
    // Let both TTLs run out while nothing runs: time passing, not a state awaited.
    let down_until = published + Duration::from_millis(1000);
    tokio::time::sleep(down_until.saturating_duration_since(Instant::now())).await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    // Had the clocks restarted, the messages would still be ready now.
    assert_eq!(message_count(&channel, &queue).await, 0);
    wait_for_count(&channel, &dlq, 2).await;
    let dead = get(&channel, &dlq).await.expect("dead-lettered");
    let deaths = x_death(&dead.delivery.properties);
    assert_eq!(field_text(&deaths[0], "reason").as_deref(), Some("expired"));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_lettered_messages_and_priority_order_survive_a_restart() {
    let dir = temp_data_dir("ext-restart");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("reject-restart");
    let dlq = unique_name("reject-restart-dlq");
    let prio = unique_name("prio-restart");
    {
        let (_conn, channel) = open_confirm(&server).await;
        declare_durable(&channel, &dlq, FieldTable::default()).await;
        declare_durable(&channel, &queue, dead_letter_to(&dlq, &[])).await;
        declare_durable(
            &channel,
            &prio,
            table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
        )
        .await;
        publish_with(&channel, "", &queue, b"rejected", persistent()).await;
        let message = wait_for_get(&channel, &queue).await;
        reject(&message, false).await;
        wait_for_count(&channel, &dlq, 1).await;
        for (body, priority) in [("low", 1), ("high", 5), ("mid", 3), ("none", 0)] {
            publish_with(
                &channel,
                "",
                &prio,
                body.as_bytes(),
                persistent().with_priority(priority),
            )
            .await;
        }
        wait_for_count(&channel, &prio, 4).await;
    }
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    let dead = get(&channel, &dlq).await.expect("the dead letter survived");
    assert_eq!(dead.delivery.data, b"rejected");
    let deaths = x_death(&dead.delivery.properties);
    assert_eq!(
        field_text(&deaths[0], "reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(
        field_text(&deaths[0], "queue").as_deref(),
        Some(queue.as_str())
    );
    let order: Vec<String> = drain_bodies(&channel, &prio).await;
    assert_eq!(order, ["high", "mid", "low", "none"]);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_queue_keeps_its_delivery_counts_across_a_restart() {
    let dir = temp_data_dir("qq-restart");
    let server = TestServer::start_in(&dir).await;
    if !server.is_warren() {
        return;
    }
    let queue = unique_name("qq-restart");
    {
        let (_conn, channel) = open_confirm(&server).await;
        declare_durable(&channel, &queue, table(&[("x-queue-type", text("quorum"))])).await;
        publish_with(&channel, "", &queue, b"returned twice", persistent()).await;
        for _ in 0..2 {
            let message = wait_for_get(&channel, &queue).await;
            reject(&message, true).await;
        }
        wait_for_count(&channel, &queue, 1).await;
    }
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    let message = wait_for_get(&channel, &queue).await;
    assert!(message.delivery.redelivered);
    assert_eq!(
        header(&message.delivery.properties, "x-delivery-count"),
        Some(&AMQPValue::LongLongInt(2))
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rejects a `basic.get` message, requeueing it or not.
async fn reject(message: &BasicGetMessage, requeue: bool) {
    within(
        "basic.reject",
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue }),
    )
    .await
    .expect("reject");
}
