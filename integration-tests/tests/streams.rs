//! Streams (`x-queue-type: stream`) as 0-9-1 clients see them, with RabbitMQ's rules:
//! durable only, consumers need a per-consumer prefetch and start where
//! `x-stream-offset` says, every delivery carries its offset, settling is credit, and
//! `basic.get`, `queue.purge` and `no_ack` are refused. Written against RabbitMQ's
//! behaviour (docs/streams-rabbitmq-facts.md); run with `WARREN_TEST_EXTERNAL_URI` to check
//! them against a RabbitMQ.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = table(extra);
    args.insert("x-queue-type".into(), text("stream"));
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn declare_stream(channel: &Channel, name: &str) {
    within(
        "queue.declare",
        channel.queue_declare(name.into(), durable(), stream_args(&[])),
    )
    .await
    .expect("declare a stream");
}

/// A consumer of `stream` with prefetch `prefetch`, starting at `offset` (the default,
/// `next`, when `None`).
async fn consume(
    channel: &Channel,
    stream: &str,
    prefetch: u16,
    offset: Option<AMQPValue>,
) -> lapin::Result<Consumer> {
    within(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let mut args = FieldTable::default();
    if let Some(offset) = offset {
        args.insert("x-stream-offset".into(), offset);
    }
    within(
        "basic.consume",
        channel.basic_consume(
            stream.into(),
            unique_name("c").as_str().into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
}

fn offset_of(delivery: &lapin::message::Delivery) -> i64 {
    match header(&delivery.properties, "x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset is {other:?}"),
    }
}

/// Publishes `n` messages `m0`, `m1` … with confirms.
async fn publish_n(channel: &Channel, stream: &str, from: usize, n: usize) {
    for i in from..from + n {
        publish(channel, "", stream, format!("m{i}").as_bytes()).await;
    }
}

/// The next `n` deliveries, acked: (offset, body).
async fn take(consumer: &mut Consumer, n: usize) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let delivery = next_delivery(consumer).await;
        assert!(!delivery.redelivered, "a stream never redelivers");
        got.push((offset_of(&delivery), body(&delivery)));
        within("basic.ack", delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    got
}

fn expected(from: usize, to: usize) -> Vec<(i64, String)> {
    (from..to).map(|i| (i as i64, format!("m{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_durable_and_neither_exclusive_nor_auto_delete() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let cases = [
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            "auto-delete",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            "exclusive-owner",
        ),
        (QueueDeclareOptions::default(), "non-durable"),
    ];
    for (options, property) in cases {
        let channel = common::channel(&conn).await;
        let name = unique_name("s-props");
        assert_amqp_error(
            within(
                "queue.declare",
                channel.queue_declare(name.as_str().into(), options, stream_args(&[])),
            )
            .await,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid property '{property}' for queue '{name}' in vhost '/'"
            ),
        );
    }
    let channel = common::channel(&conn).await;
    let name = unique_name("s-args");
    assert_amqp_error(
        within(
            "queue.declare",
            channel.queue_declare(
                name.as_str().into(),
                durable(),
                stream_args(&[("x-max-length", AMQPValue::LongInt(5))]),
            ),
        )
        .await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{name}' in vhost '/' of queue type rabbit_stream_queue"
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_start_where_x_stream_offset_says() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-offsets");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 10).await;

    let first = common::channel(&conn).await;
    let mut c = consume(&first, &name, 100, Some(text("first")))
        .await
        .expect("first");
    assert_eq!(take(&mut c, 10).await, expected(0, 10));

    let from = common::channel(&conn).await;
    let mut c = consume(&from, &name, 100, Some(AMQPValue::LongLongInt(6)))
        .await
        .expect("6");
    assert_eq!(take(&mut c, 4).await, expected(6, 10));

    let next = common::channel(&conn).await;
    let mut n = consume(&next, &name, 100, None).await.expect("next");
    assert_no_delivery(&mut n).await;
    publish_n(&channel, &name, 10, 2).await;
    assert_eq!(take(&mut n, 2).await, expected(10, 12));
    // Those already attached see the new messages too.
    assert_eq!(take(&mut c, 2).await, expected(10, 12));

    // Long ago: everything; far ahead: only what comes.
    let old = common::channel(&conn).await;
    let mut c = consume(&old, &name, 100, Some(AMQPValue::Timestamp(1_000_000)))
        .await
        .expect("ts");
    assert_eq!(take(&mut c, 12).await, expected(0, 12));
    let below = common::channel(&conn).await;
    let mut c = consume(&below, &name, 100, Some(AMQPValue::LongLongInt(-5)))
        .await
        .expect("neg");
    assert_eq!(take(&mut c, 1).await, expected(0, 1));

    let last = common::channel(&conn).await;
    let mut c = consume(&last, &name, 100, Some(text("last")))
        .await
        .expect("last");
    let got = take(&mut c, 1).await;
    assert!(got[0].0 <= 11, "last starts within what exists: {got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_nacks_and_rejects_are_all_credit_and_nothing_comes_back() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-credit");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 6).await;
    let reader = common::channel(&conn).await;
    let mut c = consume(&reader, &name, 2, Some(text("first")))
        .await
        .expect("consume");
    let d0 = next_delivery(&mut c).await;
    let d1 = next_delivery(&mut c).await;
    assert_eq!((offset_of(&d0), offset_of(&d1)), (0, 1));
    assert_no_delivery(&mut c).await;
    within(
        "nack",
        d0.acker.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        }),
    )
    .await
    .expect("nack");
    let d2 = next_delivery(&mut c).await;
    assert_eq!(offset_of(&d2), 2, "a nack with requeue brings nothing back");
    within(
        "reject",
        d1.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let d3 = next_delivery(&mut c).await;
    assert_eq!(offset_of(&d3), 3);
    assert_no_delivery(&mut c).await;
    within("ack", d2.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    assert_eq!(offset_of(&next_delivery(&mut c).await), 4);
    // The channel stays open through all of it.
    assert!(reader.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_purge_no_ack_and_a_missing_prefetch_are_refused() {
    let server = TestServer::start().await;
    let (_, channel) = open(&server).await;
    let name = unique_name("s-refused");
    declare_stream(&channel, &name).await;
    let stream = format!("queue '{name}' in vhost '/'");

    let (conn, channel) = open(&server).await;
    let _ = within(
        "basic.qos",
        channel.basic_qos(0, BasicQosOptions::default()),
    )
    .await;
    assert_amqp_error(
        within(
            "basic.consume",
            channel.basic_consume(
                name.as_str().into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        406,
        &format!("PRECONDITION_FAILED - consumer prefetch count is not set for stream {stream}"),
    );
    drop(conn);

    let (_conn, channel) = open(&server).await;
    within(
        "basic.qos",
        channel.basic_qos(10, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    assert_amqp_error(
        within(
            "basic.consume",
            channel.basic_consume(
                name.as_str().into(),
                "c".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await,
        540,
        &format!("NOT_IMPLEMENTED - automatic acknowledgement not supported by stream {stream}"),
    );

    let (_conn, channel) = open(&server).await;
    assert_amqp_error(
        within(
            "basic.get",
            channel.basic_get(
                name.as_str().into(),
                lapin::options::BasicGetOptions::default(),
            ),
        )
        .await,
        540,
        &format!("NOT_IMPLEMENTED - basic.get not supported by stream queues {stream}"),
    );

    let (_conn, channel) = open(&server).await;
    assert_amqp_error(
        within(
            "queue.purge",
            channel.queue_purge(
                name.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            ),
        )
        .await,
        540,
        &format!("NOT_IMPLEMENTED - queue.purge not supported by stream queues {stream}"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_keeps_every_confirmed_message_across_a_restart() {
    let dir = integration_tests::temp_data_dir("streams-restart");
    let name = unique_name("s-restart");
    {
        let server = TestServer::start_in(&dir).await;
        let (_conn, channel) = open_confirm(&server).await;
        declare_stream(&channel, &name).await;
        publish_n(&channel, &name, 0, 50).await;
        assert_eq!(message_count(&channel, &name).await, 50);
        server.stop().await;
    }
    let server = TestServer::start_in(&dir).await;
    let (conn, channel) = open_confirm(&server).await;
    assert_eq!(message_count(&channel, &name).await, 50);
    publish_n(&channel, &name, 50, 5).await;
    let reader = common::channel(&conn).await;
    let mut c = consume(&reader, &name, 20, Some(text("first")))
        .await
        .expect("consume");
    assert_eq!(take(&mut c, 55).await, expected(0, 55));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer of `stream` with tag `tag`, prefetch `prefetch` and `args`.
async fn consume_with(
    channel: &Channel,
    stream: &str,
    prefetch: u16,
    tag: &str,
    args: FieldTable,
) -> lapin::Result<Consumer> {
    within(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    within(
        "basic.consume",
        channel.basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
}

fn tracked(offset: &str) -> FieldTable {
    table(&[
        (
            "x-stream-automatic-offset-tracking",
            AMQPValue::Boolean(true),
        ),
        ("x-stream-offset", text(offset)),
    ])
}

/// Reads offsets 0–4 with prefetch 5 and acks 0–2 only, leaving 3 and 4 unacked;
/// returns the channel and consumer, which stay open until dropped.
async fn read_five_ack_three(
    conn: &lapin::Connection,
    stream: &str,
    tag: &str,
) -> (Channel, Consumer) {
    let channel = common::channel(conn).await;
    let mut c = consume_with(&channel, stream, 5, tag, tracked("first"))
        .await
        .expect("consume");
    let mut deliveries = Vec::new();
    for _ in 0..5 {
        deliveries.push(next_delivery(&mut c).await);
    }
    let offsets: Vec<i64> = deliveries.iter().map(offset_of).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    for d in &deliveries[..3] {
        within("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    (channel, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tracked_consumer_resumes_at_its_lowest_unacked_delivery() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-track");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 10).await;
    let tag = unique_name("tracker");
    let (conn, _) = open(&server).await;
    let _reading = read_five_ack_three(&conn, &name, &tag).await;
    // A second live consumer under the same tag would break the first one's offset.
    let other = common::channel(&conn).await;
    assert_amqp_error(
        consume_with(&other, &name, 5, &tag, tracked("first")).await,
        406,
        &format!(
            "PRECONDITION_FAILED - consumer tag '{tag}' already tracks its offsets in stream queue '{name}' in vhost '/'"
        ),
    );
    within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");

    // `next` is what it asks for, but its committed offset wins: 3, unacked before.
    let (conn, _) = open(&server).await;
    let channel = common::channel(&conn).await;
    let mut c = consume_with(&channel, &name, 5, &tag, tracked("next"))
        .await
        .expect("resume");
    assert_eq!(take(&mut c, 7).await, expected(3, 10));
}

#[tokio::test(flavor = "multi_thread")]
async fn tracking_needs_a_consumer_tag() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("s-track-tag");
    declare_stream(&channel, &name).await;
    assert_amqp_error(
        consume_with(&channel, &name, 5, "", tracked("first")).await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-stream-automatic-offset-tracking' for queue '{name}' in vhost '/': \"requires a consumer tag\""
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_after_a_cancel_still_move_a_tracked_offset() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-track-cancel");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 10).await;
    let tag = unique_name("tracker");
    let (conn, _) = open(&server).await;
    let reading = common::channel(&conn).await;
    let mut c = consume_with(&reading, &name, 5, &tag, tracked("first"))
        .await
        .expect("consume");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_delivery(&mut c).await);
    }
    // Cancelled with five unacked, then acked: the acks still count.
    within(
        "basic.cancel",
        reading.basic_cancel(tag.as_str().into(), Default::default()),
    )
    .await
    .expect("cancel");
    for d in &held {
        within("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    let (conn, _) = open(&server).await;
    let channel = common::channel(&conn).await;
    let mut c = consume_with(&channel, &name, 5, &tag, tracked("first"))
        .await
        .expect("resume");
    assert_eq!(take(&mut c, 5).await, expected(5, 10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tracked_offset_survives_a_kill_of_the_broker() {
    let dir = integration_tests::temp_data_dir("streams-track-kill");
    let name = unique_name("s-track-kill");
    let tag = unique_name("tracker");
    let broker = integration_tests::WarrenProcess::start(&dir).await;
    let conn = connect_uri(&broker.uri()).await.expect("connect");
    let channel = common::channel(&conn).await;
    within("confirm", channel.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 10).await;
    let _reading = read_five_ack_three(&conn, &name, &tag).await;
    broker.kill();

    let broker = integration_tests::WarrenProcess::start(&dir).await;
    let conn = connect_uri(&broker.uri()).await.expect("connect");
    let channel = common::channel(&conn).await;
    let mut c = consume_with(&channel, &name, 10, &tag, tracked("next"))
        .await
        .expect("resume");
    // Never past an unacked delivery; at most what was unacked or not yet synced again.
    let first = next_delivery(&mut c).await;
    let from = offset_of(&first);
    assert!((0..=3).contains(&from), "resumed at {from}");
    within("ack", first.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let rest = take(&mut c, (9 - from) as usize).await;
    assert_eq!(rest, expected(from as usize + 1, 10));
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_deliver_exactly_what_was_asked_for() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-filter");
    declare_stream(&channel, &name).await;
    let values = [
        Some("red"),
        Some("blue"),
        None,
        Some("red"),
        Some("green"),
        None,
    ];
    for (i, value) in values.iter().enumerate() {
        let mut properties = lapin::BasicProperties::default();
        if let Some(value) = value {
            properties = properties.with_headers(table(&[("x-stream-filter-value", text(value))]));
        }
        publish_with(&channel, "", &name, format!("m{i}").as_bytes(), properties).await;
    }
    let cases: [(AMQPValue, bool, &[i64]); 4] = [
        (text("red"), false, &[0, 3]),
        (text("red"), true, &[0, 2, 3, 5]),
        (
            AMQPValue::FieldArray(vec![text("red"), text("blue")].into()),
            false,
            &[0, 1, 3],
        ),
        (
            AMQPValue::FieldArray(Vec::new().into()),
            false,
            &[0, 1, 2, 3, 4, 5],
        ),
    ];
    for (filter, unfiltered, want) in cases {
        let ch = common::channel(&conn).await;
        let args = table(&[
            ("x-stream-offset", text("first")),
            ("x-stream-filter", filter.clone()),
            ("x-stream-match-unfiltered", AMQPValue::Boolean(unfiltered)),
        ]);
        let mut c = consume_with(&ch, &name, 10, &unique_name("f"), args)
            .await
            .expect("consume");
        let got: Vec<i64> = take(&mut c, want.len())
            .await
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(got, want, "filter {filter:?}, unfiltered {unfiltered}");
        assert_no_delivery(&mut c).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_super_stream_as_rabbitmqs_tools_declare_it_routes_by_partition_key() {
    let dir = integration_tests::temp_data_dir("streams-super");
    let name = unique_name("invoices");
    {
        let server = TestServer::start_in(&dir).await;
        let (_conn, channel) = open_confirm(&server).await;
        within(
            "exchange.declare",
            channel.exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                table(&[("x-super-stream", AMQPValue::Boolean(true))]),
            ),
        )
        .await
        .expect("the super stream's exchange");
        for p in 0..3 {
            let partition = format!("{name}-{p}");
            within(
                "queue.declare",
                channel.queue_declare(
                    partition.as_str().into(),
                    durable(),
                    stream_args(&[("x-queue-leader-locator", text("balanced"))]),
                ),
            )
            .await
            .expect("a partition stream");
            within(
                "queue.bind",
                channel.queue_bind(
                    partition.as_str().into(),
                    name.as_str().into(),
                    p.to_string().as_str().into(),
                    Default::default(),
                    table(&[("x-stream-partition-order", AMQPValue::LongLongInt(p))]),
                ),
            )
            .await
            .expect("bind");
        }
        for (i, key) in ["0", "2", "2", "1", "0"].iter().enumerate() {
            publish(&channel, &name, key, format!("m{i}").as_bytes()).await;
        }
        server.stop().await;
    }
    let server = TestServer::start_in(&dir).await;
    let (conn, channel) = open_confirm(&server).await;
    publish(&channel, &name, "1", b"m5").await;
    for (p, want) in [
        (0, vec!["m0", "m4"]),
        (1, vec!["m3", "m5"]),
        (2, vec!["m1", "m2"]),
    ] {
        let ch = common::channel(&conn).await;
        let partition = format!("{name}-{p}");
        let mut c = consume(&ch, &partition, 10, Some(text("first")))
            .await
            .expect("consume");
        let got: Vec<String> = take(&mut c, want.len())
            .await
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_the_oldest_segments_past_max_length_bytes() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-retention");
    within(
        "queue.declare",
        channel.queue_declare(
            name.as_str().into(),
            durable(),
            stream_args(&[
                ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
                ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(4096)),
            ]),
        ),
    )
    .await
    .expect("declare");
    let body = vec![b'x'; 1000];
    for _ in 0..100 {
        publish(&channel, "", &name, &body).await;
    }
    let count = message_count(&channel, &name).await;
    assert!(
        (10..=30).contains(&count),
        "about 20 KB of 1 KB messages kept, within a segment: {count}"
    );
    let reader = common::channel(&conn).await;
    let mut c = consume(&reader, &name, 100, Some(text("first")))
        .await
        .expect("consume");
    let first = next_delivery(&mut c).await;
    assert_eq!(offset_of(&first), 100 - i64::from(count));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_stream_ignores_if_empty_and_counts_nothing() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let name = unique_name("s-delete");
    declare_stream(&channel, &name).await;
    publish_n(&channel, &name, 0, 3).await;
    let deleted = within(
        "queue.delete",
        channel.queue_delete(
            name.as_str().into(),
            lapin::options::QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("a stream is deleted whatever if_empty says");
    assert_eq!(deleted, 0);
}

/// `examples-python/stream_replay.py` (pika) against this broker: a replay from the
/// first offset, an exact filter and a tracked reader that resumes where it stopped
/// acking, by its own checks.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_replay_example_runs_with_pika() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let (status, output) = integration_tests::python::run_example(
        "stream_replay.py",
        server.uri(),
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("run stream_replay.py");
    let summary = output
        .lines()
        .rfind(|line| line.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line; it printed:\n{output}"));
    assert!(
        status.success()
            && summary == "summary: audit 100/100, eu-only 34, billing resumed at 20, ok",
        "{status}: {summary}"
    );
}
