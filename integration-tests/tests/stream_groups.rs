//! Partitioned streams (`x-partitions` on `x-queue-type: stream`) and the consumer
//! groups that read them: every group sees every message, each partition is read by
//! one member of a group at a time, and a group resumes at its own committed offsets
//! after its members leave, after a restart and after `kill -9`. Warren's own feature
//! (RabbitMQ keeps super-stream groups for its binary protocol), written to the
//! partitioned queues' rules (tests/partitions.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use futures_lite::StreamExt;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};

const PARTITIONS: i32 = 4;
/// Distinct keys the messages are spread over.
const KEYS: usize = 12;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares a stream of [`PARTITIONS`] partitions, hashed on header `key`.
async fn declare_partitioned_stream(channel: &Channel, name: &str) {
    let args = table(&[
        ("x-queue-type", text("stream")),
        ("x-partitions", int(PARTITIONS)),
        ("x-partition-hash-header", text("key")),
    ]);
    within(
        "queue.declare",
        channel.queue_declare(name.into(), durable(), args),
    )
    .await
    .expect("declare a partitioned stream");
}

/// Publishes messages `from..to` (body `m<i>`, header `key` = `k<i % KEYS>`), each
/// confirmed.
async fn publish_keyed(channel: &Channel, stream: &str, from: usize, to: usize) {
    for i in from..to {
        let mut headers = FieldTable::default();
        headers.insert("key".into(), text(&format!("k{}", i % KEYS)));
        let properties = BasicProperties::default().with_headers(headers);
        publish_with(channel, "", stream, format!("m{i}").as_bytes(), properties).await;
    }
}

/// A member of `group` (the default group when `None`) with prefetch `prefetch`.
async fn member(
    conn: &lapin::Connection,
    stream: &str,
    group: Option<&str>,
    prefetch: u16,
    offset: &str,
) -> (Channel, Consumer) {
    let channel = common::channel(conn).await;
    common::prefetch(&channel, prefetch).await;
    let mut args = table(&[("x-stream-offset", text(offset))]);
    if let Some(group) = group {
        args.insert("x-consumer-group".into(), text(group));
    }
    let consumer = consume_with(
        &channel,
        stream,
        &unique_name("member"),
        BasicConsumeOptions::default(),
        args,
    )
    .await;
    (channel, consumer)
}

/// A delivery as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    partition: i64,
    offset: i64,
    body: String,
}

fn seen(delivery: &lapin::message::Delivery) -> Seen {
    let number = |name: &str| match header(&delivery.properties, name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("{name} is {other:?}"),
    };
    Seen {
        partition: number("x-partition"),
        offset: number("x-stream-offset"),
        body: body(delivery),
    }
}

/// The key of message `m<i>`.
fn key_of(body: &str) -> usize {
    body[1..].parse::<usize>().expect("a numbered body") % KEYS
}

/// Takes deliveries from `consumers` in turn, acking each, until `n` arrived in all.
async fn take_acked(consumers: &mut [&mut Consumer], n: usize) -> Vec<Vec<Seen>> {
    let mut got = vec![Vec::new(); consumers.len()];
    let mut total = 0;
    within("the deliveries", async {
        while total < n {
            for (i, consumer) in consumers.iter_mut().enumerate() {
                let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(std::time::Duration::from_millis(20), (**consumer).next())
                        .await
                else {
                    continue;
                };
                got[i].push(seen(&delivery));
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                total += 1;
            }
        }
    })
    .await;
    got
}

/// Every message `from..to` exactly once, each key's in order, each partition at one
/// member only.
fn assert_exactly_once(got: &[Vec<Seen>], from: usize, to: usize) {
    let mut bodies: Vec<String> = got.iter().flatten().map(|s| s.body.clone()).collect();
    bodies.sort_by_key(|b| b[1..].parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (from..to).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want, "each message once");
    let mut readers: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
    for (member, deliveries) in got.iter().enumerate() {
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        for s in deliveries {
            readers.entry(s.partition).or_default().insert(member);
            let n: usize = s.body[1..].parse().expect("numbered");
            if let Some(before) = last.insert(key_of(&s.body), n) {
                assert!(
                    before < n,
                    "key {} out of order at member {member}",
                    key_of(&s.body)
                );
            }
        }
    }
    for (partition, members) in readers {
        assert_eq!(
            members.len(),
            1,
            "partition {partition} read by {members:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_group_sees_every_message_and_a_partition_is_read_by_one_member() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("sg-two");
    declare_partitioned_stream(&channel, &name).await;
    publish_keyed(&channel, &name, 0, 120).await;

    let (_a1c, mut a1) = member(&conn, &name, Some("a"), 50, "first").await;
    let (_a2c, mut a2) = member(&conn, &name, Some("a"), 50, "first").await;
    let (_b1c, mut b1) = member(&conn, &name, Some("b"), 50, "first").await;
    let group_a = take_acked(&mut [&mut a1, &mut a2], 120).await;
    let group_b = take_acked(&mut [&mut b1], 120).await;
    assert_exactly_once(&group_a, 0, 120);
    assert_exactly_once(&group_b, 0, 120);
    // Both members of a group got partitions: the group shares the stream out.
    assert!(
        group_a.iter().all(|d| !d.is_empty()),
        "a member got nothing"
    );
    // A message's partition and offset are the same for every group.
    let mut a: Vec<Seen> = group_a.into_iter().flatten().collect();
    let mut b: Vec<Seen> = group_b.into_iter().flatten().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // Offsets count within a partition, from 0.
    for p in 0..i64::from(PARTITIONS) {
        let offsets: Vec<i64> = a
            .iter()
            .filter(|s| s.partition == p)
            .map(|s| s.offset)
            .collect();
        let want: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, want, "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_partition_waits_for_the_old_members_acks_so_nothing_is_read_twice() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("sg-move");
    declare_partitioned_stream(&channel, &name).await;
    publish_keyed(&channel, &name, 0, 80).await;

    // The first member takes every partition and holds all 80 unacked, so that
    // every partition that moves has deliveries to wait for.
    let (_first_channel, mut first) = member(&conn, &name, Some("g"), 80, "first").await;
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(next_delivery(&mut first).await);
    }
    // A second member joins: half the partitions move to it, but they must drain first.
    let (_second_channel, mut second) = member(&conn, &name, Some("g"), 40, "first").await;
    let mut got = [held.iter().map(seen).collect::<Vec<_>>(), Vec::new()];
    for delivery in held {
        within("ack", delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    publish_keyed(&channel, &name, 80, 120).await;
    let rest = take_acked(&mut [&mut first, &mut second], 40).await;
    for (all, more) in got.iter_mut().zip(rest) {
        all.extend(more);
    }
    // Without the drain, the second member would start at the first one's committed
    // offset and read its unacked deliveries again.
    let bodies: Vec<&str> = got.iter().flatten().map(|s| s.body.as_str()).collect();
    let distinct: BTreeSet<&str> = bodies.iter().copied().collect();
    assert_eq!(bodies.len(), distinct.len(), "a message was read twice");
    assert_eq!(distinct.len(), 120);
    assert!(!got[1].is_empty(), "the second member took no partition");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_resumes_at_its_committed_offsets_after_its_members_leave() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("sg-resume");
    declare_partitioned_stream(&channel, &name).await;
    publish_keyed(&channel, &name, 0, 60).await;
    {
        let (reader_channel, mut reader) = member(&conn, &name, None, 100, "first").await;
        let got = take_acked(&mut [&mut reader], 60).await;
        assert_exactly_once(&got, 0, 60);
        within("close", reader_channel.close(200, "bye".into()))
            .await
            .expect("close");
    }
    publish_keyed(&channel, &name, 60, 90).await;
    // The default group comes back with `first` asked: its committed offsets win.
    let (_c, mut reader) = member(&conn, &name, None, 100, "first").await;
    let got = take_acked(&mut [&mut reader], 30).await;
    assert_exactly_once(&got, 60, 90);
    // A new group starts where it asks.
    let (_n, mut fresh) = member(&conn, &name, Some("new"), 100, "first").await;
    let got = take_acked(&mut [&mut fresh], 90).await;
    assert_exactly_once(&got, 0, 90);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_resumes_after_a_kill_of_the_broker_with_nothing_skipped() {
    let dir = integration_tests::temp_data_dir("stream-groups-kill");
    let name = unique_name("sg-kill");
    let broker = integration_tests::WarrenProcess::start(&dir).await;
    let conn = connect_uri(&broker.uri()).await.expect("connect");
    let channel = common::channel(&conn).await;
    within("confirm", channel.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_partitioned_stream(&channel, &name).await;
    publish_keyed(&channel, &name, 0, 100).await;
    let prefetch = 10;
    let (_c, mut reader) = member(&conn, &name, Some("g"), prefetch, "first").await;
    let before = take_acked(&mut [&mut reader], 50).await;
    // Held unacked at the kill.
    for _ in 0..prefetch {
        next_delivery(&mut reader).await;
    }
    // The acks asked for a group commit of the offsets as the broker took them; a
    // persistent publish confirmed after that is served by the same round or a later
    // one, so the kill finds the offsets synced however loaded the machine is.
    let barrier = unique_name("sg-kill-barrier");
    within(
        "queue.declare",
        channel.queue_declare(
            barrier.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[]),
        ),
    )
    .await
    .expect("declare the barrier queue");
    common::publish_with(
        &channel,
        "",
        &barrier,
        b"after the acks",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    broker.kill();

    let broker = integration_tests::WarrenProcess::start(&dir).await;
    let conn = connect_uri(&broker.uri()).await.expect("connect");
    let (_c, mut reader) = member(&conn, &name, Some("g"), prefetch, "next").await;
    let acked: BTreeSet<String> = before.into_iter().flatten().map(|s| s.body).collect();
    let mut again = BTreeSet::new();
    let mut seen_bodies = acked.clone();
    while seen_bodies.len() < 100 {
        let delivery = next_delivery(&mut reader).await;
        let s = seen(&delivery);
        if acked.contains(&s.body) {
            again.insert(s.body.clone());
        }
        seen_bodies.insert(s.body);
        within("ack", delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    // Every message came (none skipped); acked ones come again only where their acks
    // were not yet synced at the kill, at most a prefetch's worth per partition.
    assert!(
        again.len() <= usize::from(prefetch) * PARTITIONS as usize,
        "{} acked messages read again",
        again.len()
    );
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn given_partitions_are_read_outside_any_group() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("sg-manual");
    declare_partitioned_stream(&channel, &name).await;
    publish_keyed(&channel, &name, 0, 40).await;
    let reader_channel = common::channel(&conn).await;
    common::prefetch(&reader_channel, 100).await;
    let args = table(&[
        ("x-stream-offset", text("first")),
        (
            "x-partition",
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), AMQPValue::LongInt(3)].into()),
        ),
    ]);
    let mut manual = consume_with(
        &reader_channel,
        &name,
        "manual",
        BasicConsumeOptions::default(),
        args,
    )
    .await;
    // A group member reads everything, untouched by the manual reader.
    let (_g, mut grouped) = member(&conn, &name, Some("g"), 100, "first").await;
    let all = take_acked(&mut [&mut grouped], 40).await;
    assert_exactly_once(&all, 0, 40);
    let in_1_and_3 = all[0]
        .iter()
        .filter(|s| s.partition == 1 || s.partition == 3)
        .count();
    let got = take_acked(&mut [&mut manual], in_1_and_3).await;
    assert!(got[0].iter().all(|s| s.partition == 1 || s.partition == 3));
    assert_no_delivery(&mut manual).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_arguments_are_refused_where_they_do_not_apply() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let plain = unique_name("sg-plain");
    within(
        "queue.declare",
        channel.queue_declare(
            plain.as_str().into(),
            durable(),
            table(&[("x-queue-type", text("stream"))]),
        ),
    )
    .await
    .expect("declare");
    let consumer_channel = common::channel(&conn).await;
    common::prefetch(&consumer_channel, 10).await;
    assert_amqp_error(
        within(
            "basic.consume",
            consumer_channel.basic_consume(
                plain.as_str().into(),
                "c".into(),
                BasicConsumeOptions::default(),
                table(&[("x-consumer-group", text("g"))]),
            ),
        )
        .await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-consumer-group' for queue '{plain}' in vhost '/': \"queue is not partitioned\""
        ),
    );
    // One owner per partition and group: more is a partitioned queue's setting.
    let channel = common::channel(&conn).await;
    let other = unique_name("sg-k");
    assert_amqp_error(
        within(
            "queue.declare",
            channel.queue_declare(
                other.as_str().into(),
                durable(),
                table(&[
                    ("x-queue-type", text("stream")),
                    ("x-partitions", int(2)),
                    ("x-consumers-per-partition", int(2)),
                ]),
            ),
        )
        .await,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-consumers-per-partition' for queue '{other}' in vhost '/' of queue type rabbit_stream_queue"
        ),
    );
    // A partitioned stream's count is fixed, as a partitioned queue's.
    let channel = common::channel(&conn).await;
    let fixed = unique_name("sg-fixed");
    declare_partitioned_stream(&channel, &fixed).await;
    let redeclared = within(
        "queue.declare",
        channel.queue_declare(
            fixed.as_str().into(),
            durable(),
            table(&[
                ("x-queue-type", text("stream")),
                ("x-partitions", int(PARTITIONS + 1)),
                ("x-partition-hash-header", text("key")),
            ]),
        ),
    )
    .await;
    let (code, _) = amqp_error(&redeclared.expect_err("a different count")).expect("a close");
    assert_eq!(code, 406);
}
