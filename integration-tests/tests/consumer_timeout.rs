//! The consumer acknowledgement timeout: a delivery left unacknowledged longer than the
//! broker's `consumer_timeout` (or the consumer's `x-consumer-timeout`) closes its
//! channel with RabbitMQ's error, and the message goes back to the queue.
//!
//! RabbitMQ's own timeout is 30 minutes and set in its configuration, so these run
//! against Warren only.

mod common;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

fn timed_out(channel: &lapin::Channel, timeout_ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value \
         used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide \
         to learn more",
        channel.id()
    )
}

/// Awaits the broker's close of the consumer's channel, as the consumer hears it.
async fn expect_closed(consumer: &mut lapin::Consumer, text: &str) {
    match within("the channel close", consumer.next()).await {
        Some(Err(error)) => assert_eq!(amqp_error(&error), Some((406, text.to_owned()))),
        other => panic!("expected the channel to close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_delivery_closes_its_channel_after_the_broker_timeout() {
    let server = TestServer::start_with(|c| c.consumer_timeout = 300).await;
    if !server.is_warren() {
        return;
    }
    let (conn, channel) = open(&server).await;
    let queue = unique_name("ack-timeout");
    declare_queue(&channel, &queue).await;
    publish(&channel, "", &queue, b"slow").await;
    let worker = common::channel(&conn).await;
    let mut consumer = consume_with(
        &worker,
        &queue,
        "slow-worker",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(body(&delivery), "slow");
    expect_closed(&mut consumer, &timed_out(&worker, 300)).await;
    // The message is back, flagged redelivered.
    wait_for_count(&channel, &queue, 1).await;
    let again = get(&channel, &queue).await.expect("requeued");
    assert!(again.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_argument_sets_its_own_timeout() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (conn, channel) = open(&server).await;
    let queue = unique_name("ack-timeout-arg");
    declare_queue(&channel, &queue).await;
    publish(&channel, "", &queue, b"m").await;
    let worker = common::channel(&conn).await;
    let mut consumer = consume_with(
        &worker,
        &queue,
        "quick",
        BasicConsumeOptions::default(),
        table(&[("x-consumer-timeout", int(200))]),
    )
    .await;
    next_delivery(&mut consumer).await;
    expect_closed(&mut consumer, &timed_out(&worker, 200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_acknowledged_in_time_keep_the_channel_open() {
    let server = TestServer::start_with(|c| c.consumer_timeout = 300).await;
    if !server.is_warren() {
        return;
    }
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("ack-in-time");
    declare_queue(&channel, &queue).await;
    let mut consumer = consume_with(
        &channel,
        &queue,
        "prompt",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&channel, "", &queue, b"first").await;
    let first = next_delivery(&mut consumer).await;
    within("ack", first.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    // Time passes well beyond the timeout with nothing outstanding.
    tokio::time::sleep(Duration::from_millis(700)).await;
    publish(&channel, "", &queue, b"second").await;
    let second = next_delivery(&mut consumer).await;
    assert_eq!(body(&second), "second");
}
