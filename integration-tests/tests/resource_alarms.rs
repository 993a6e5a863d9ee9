//! Resource alarms: past `--memory-limit` (bytes of messages held in memory) or below
//! `--disk-free-limit`, a connection that publishes is blocked (`connection.blocked`)
//! and read no further until the alarm clears; consumers keep draining meanwhile.
//!
//! RabbitMQ's limits are set in its configuration, so these run against Warren only.

mod common;

use std::time::Duration;

use common::*;
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread")]
async fn publishers_are_blocked_past_the_memory_limit_until_consumers_drain() {
    let server = TestServer::start_with(|c| {
        c.memory_limit = 64 * 1024;
        c.disk_free_limit = 0;
    })
    .await;
    if !server.is_warren() {
        return;
    }
    let (publisher_conn, publisher) = open(&server).await;
    let queue = unique_name("memory-alarm");
    declare_queue(&publisher, &queue).await;
    let body = vec![b'x'; 1024];
    for _ in 0..100 {
        publish(&publisher, "", &queue, &body).await;
    }
    // Once the monitor sees the backlog, the next publish blocks the connection.
    let blocked = wait_for(BOUND, || {
        let (publisher, queue, body) = (&publisher, &queue, &body);
        let status = publisher_conn.status().clone();
        async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                publisher.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    body,
                    lapin::BasicProperties::default(),
                ),
            )
            .await;
            status.blocked()
        }
    })
    .await;
    assert!(blocked, "the publisher was not blocked");

    // Another connection consumes the backlog; the alarm clears and the publisher is
    // unblocked.
    let (_consumer_conn, consumer_channel) = open(&server).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &queue,
        "drain",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while publisher_conn.status().blocked() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher stayed blocked after the queue drained"
        );
        let next = tokio::time::timeout(
            Duration::from_millis(20),
            futures_lite::StreamExt::next(&mut consumer),
        )
        .await;
        if let Ok(Some(Ok(delivery))) = next {
            within("ack", delivery.acker.ack(BasicAckOptions::default()))
                .await
                .expect("ack");
        }
    }
    publish(&publisher, "", &queue, b"after").await;
    loop {
        let delivery = next_delivery(&mut consumer).await;
        within("ack", delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        if body_of(&delivery) == "after" {
            break;
        }
    }
}

fn body_of(delivery: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_disk_limit_publishers_block_and_consumers_still_receive() {
    let server = TestServer::start_with(|c| {
        c.memory_limit = 0;
        c.disk_free_limit = u64::MAX;
    })
    .await;
    if !server.is_warren() {
        return;
    }
    let (_consumer_conn, consumer_channel) = open(&server).await;
    let queue = unique_name("disk-alarm");
    declare_queue(&consumer_channel, &queue).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &queue,
        "reader",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    let (publisher_conn, publisher) = open(&server).await;
    publish(&publisher, "", &queue, b"last one in").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(body_of(&delivery), "last one in");
    let status = publisher_conn.status().clone();
    assert!(
        wait_for(BOUND, || {
            let status = status.clone();
            async move { status.blocked() }
        })
        .await,
        "the publisher was not blocked"
    );
    // Declaring and consuming are not publishing: a fresh connection still works.
    let (_other, other) = open(&server).await;
    declare_queue(&other, &unique_name("still-works")).await;
}
