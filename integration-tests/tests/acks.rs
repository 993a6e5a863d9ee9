//! Acknowledgements: ack, nack and reject, with `multiple` and `requeue`; requeued
//! messages go back to their original place flagged redelivered; unknown delivery tags
//! are 406 PRECONDITION_FAILED.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;

async fn ack(channel: &Channel, tag: u64, multiple: bool) {
    within(
        "basic.ack",
        channel.basic_ack(tag, BasicAckOptions { multiple }),
    )
    .await
    .expect("basic.ack");
}

async fn nack(channel: &Channel, tag: u64, multiple: bool, requeue: bool) {
    within(
        "basic.nack",
        channel.basic_nack(tag, BasicNackOptions { multiple, requeue }),
    )
    .await
    .expect("basic.nack");
}

async fn reject(channel: &Channel, tag: u64, requeue: bool) {
    within(
        "basic.reject",
        channel.basic_reject(tag, BasicRejectOptions { requeue }),
    )
    .await
    .expect("basic.reject");
}

/// Gets `count` messages with manual ack; returns their delivery tags.
async fn get_n(channel: &Channel, queue: &str, count: usize) -> Vec<u64> {
    let mut tags = Vec::new();
    for _ in 0..count {
        tags.push(
            get(channel, queue)
                .await
                .expect("a message")
                .delivery
                .delivery_tag,
        );
    }
    tags
}

/// A synchronous round trip on `channel`: it fails with the channel's close if the
/// broker closed the channel because of what was sent before.
async fn round_trip(channel: &Channel) -> lapin::Result<()> {
    within("basic.qos", channel.basic_qos(0, Default::default())).await
}

/// Sends an ack, nack or reject and reports the channel close it causes, if any. A
/// consumer started first on a scratch queue hears the close reason whenever it comes;
/// a method sent after the settlement could find the channel already closed by a fast
/// broker, and lapin then reports only a bare channel-state error.
async fn settle_then_round_trip(
    channel: &Channel,
    settle: impl std::future::Future<Output = lapin::Result<()>>,
) -> lapin::Result<()> {
    let scratch = within(
        "queue.declare",
        channel.queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let mut watcher = within(
        "basic.consume",
        channel.basic_consume(
            scratch.name().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    within("settle", settle).await?;
    match within(
        "the channel close",
        futures_lite::StreamExt::next(&mut watcher),
    )
    .await
    {
        Some(Err(error)) => Err(error),
        other => panic!("expected the channel to close, got {other:?}"),
    }
}

fn ack_frame(
    channel: &Channel,
    tag: u64,
    multiple: bool,
) -> impl std::future::Future<Output = lapin::Result<()>> + '_ {
    channel.basic_ack(tag, BasicAckOptions { multiple })
}

fn nack_frame(
    channel: &Channel,
    tag: u64,
    multiple: bool,
    requeue: bool,
) -> impl std::future::Future<Output = lapin::Result<()>> + '_ {
    channel.basic_nack(tag, BasicNackOptions { multiple, requeue })
}

fn reject_frame(
    channel: &Channel,
    tag: u64,
    requeue: bool,
) -> impl std::future::Future<Output = lapin::Result<()>> + '_ {
    channel.basic_reject(tag, BasicRejectOptions { requeue })
}

fn expected(items: &[(&str, bool)]) -> Vec<(String, bool)> {
    items.iter().map(|(b, r)| (b.to_string(), *r)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_single_and_multiple() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("acks");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 6).await;
    let worker = common::channel(&conn).await;
    let tags = get_n(&worker, &queue, 6).await;
    assert_eq!(tags, vec![1, 2, 3, 4, 5, 6]);
    ack(&worker, 2, false).await; // m001
    ack(&worker, 4, true).await; // m000, m002, m003
    round_trip(&worker).await.expect("valid acks");
    // Closing the channel returns only the two never acked, in order.
    within("close", worker.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&channel, &queue, 2).await;
    assert_eq!(
        drain(&channel, &queue).await,
        expected(&[("m004", true), ("m005", true)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_multiple_with_tag_zero_acks_everything() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("ack-all");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 3).await;
    let worker = common::channel(&conn).await;
    get_n(&worker, &queue, 3).await;
    ack(&worker, 0, true).await;
    round_trip(&worker).await.expect("ack 0 multiple is valid");
    within("close", worker.close(200, "OK".into()))
        .await
        .expect("close");
    assert_eq!(message_count(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_multiple_with_requeue_restores_order_and_flags_redelivered() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("nack");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 5).await;
    let worker = common::channel(&conn).await;
    get_n(&worker, &queue, 3).await;
    nack(&worker, 3, true, true).await;
    round_trip(&worker).await.expect("valid nack");
    assert_eq!(
        drain(&channel, &queue).await,
        expected(&[
            ("m000", true),
            ("m001", true),
            ("m002", true),
            ("m003", false),
            ("m004", false)
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_and_reject_without_requeue_drop_the_message() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("drop");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 4).await;
    let worker = common::channel(&conn).await;
    get_n(&worker, &queue, 3).await;
    reject(&worker, 1, false).await;
    nack(&worker, 3, true, false).await; // m001 and m002
    round_trip(&worker).await.expect("valid");
    within("close", worker.close(200, "OK".into()))
        .await
        .expect("close");
    assert_eq!(drain(&channel, &queue).await, expected(&[("m003", false)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn requeued_messages_return_to_their_original_position() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("position");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 5).await;
    let worker = common::channel(&conn).await;
    let tags = get_n(&worker, &queue, 3).await; // m000, m001, m002
    // Requeue them out of order: m001, then m000, then m002.
    reject(&worker, tags[1], true).await;
    round_trip(&worker).await.expect("valid");
    reject(&worker, tags[0], true).await;
    nack(&worker, tags[2], false, true).await;
    round_trip(&worker).await.expect("valid");
    assert_eq!(
        drain(&channel, &queue).await,
        expected(&[
            ("m000", true),
            ("m001", true),
            ("m002", true),
            ("m003", false),
            ("m004", false)
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_with_requeue_redelivers_to_a_consumer() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("redeliver");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 1).await;
    let mut consumer = within(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let first = next_delivery(&mut consumer).await;
    assert!(!first.redelivered);
    reject(&channel, first.delivery_tag, true).await;
    let again = next_delivery(&mut consumer).await;
    assert_eq!(body(&again), "m000");
    assert!(again.redelivered);
    assert_ne!(again.delivery_tag, first.delivery_tag, "a new delivery tag");
    ack(&channel, again.delivery_tag, false).await;
    round_trip(&channel).await.expect("valid");
}

fn unknown_tag(tag: u64) -> String {
    format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
}

#[tokio::test(flavor = "multi_thread")]
async fn acking_an_unknown_delivery_tag_is_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    assert_amqp_error(
        settle_then_round_trip(&channel, ack_frame(&channel, 42, false)).await,
        406,
        &unknown_tag(42),
    );
    // The connection survives a channel error.
    let other = common::channel(&conn).await;
    round_trip(&other).await.expect("other channels work");
}

#[tokio::test(flavor = "multi_thread")]
async fn acking_twice_is_406() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("twice");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 1).await;
    get_n(&channel, &queue, 1).await;
    ack(&channel, 1, false).await;
    assert_amqp_error(
        settle_then_round_trip(&channel, ack_frame(&channel, 1, false)).await,
        406,
        &unknown_tag(1),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_and_reject_of_unknown_tags_are_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    assert_amqp_error(
        settle_then_round_trip(&channel, nack_frame(&channel, 7, false, true)).await,
        406,
        &unknown_tag(7),
    );
    let channel = common::channel(&conn).await;
    assert_amqp_error(
        settle_then_round_trip(&channel, reject_frame(&channel, 9, true)).await,
        406,
        &unknown_tag(9),
    );
    let channel = common::channel(&conn).await;
    // multiple=true with a tag beyond any delivery is unknown too.
    assert_amqp_error(
        settle_then_round_trip(&channel, ack_frame(&channel, 5, true)).await,
        406,
        &unknown_tag(5),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acking_on_another_channel_or_a_no_ack_delivery_is_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("wrong-channel");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 2).await;
    get_n(&channel, &queue, 1).await;
    let other = common::channel(&conn).await;
    assert_amqp_error(
        settle_then_round_trip(&other, ack_frame(&other, 1, false)).await,
        406,
        &unknown_tag(1),
    );
    // A delivery made with no-ack is already settled.
    let third = common::channel(&conn).await;
    let got = within(
        "basic.get",
        third.basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        ),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_amqp_error(
        settle_then_round_trip(&third, ack_frame(&third, got.delivery.delivery_tag, false)).await,
        406,
        &unknown_tag(got.delivery.delivery_tag),
    );
    // The first channel's unacked message is still its own.
    ack(&channel, 1, false).await;
    round_trip(&channel).await.expect("valid ack");
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_messages_of_a_channel_closed_by_an_error_are_requeued() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("error-requeue");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 3).await;
    let worker = common::channel(&conn).await;
    get_n(&worker, &queue, 2).await;
    assert_amqp_error(
        settle_then_round_trip(&worker, ack_frame(&worker, 99, false)).await,
        406,
        &unknown_tag(99),
    );
    wait_for_count(&channel, &queue, 3).await;
    assert_eq!(
        drain(&channel, &queue).await,
        expected(&[("m000", true), ("m001", true), ("m002", false)])
    );
}
