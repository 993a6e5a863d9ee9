//! Partitioned queues and consumer groups (issue 13, docs/partitions-design.md): the
//! declare and consume arguments and their errors, redeclaration, the partition hash
//! (murmur3 x86_32, seed 104729, computed here independently), keyless round robin,
//! per-key order, sticky balanced assignment with standbys, drains, fail-over of a
//! closed or vanished member, one group per queue, manual `x-partition` consumers,
//! `basic.get` from unowned partitions only, passive counts, durability, purge and
//! delete. Runs against Warren only: RabbitMQ has no partitioned queues.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use integration_tests::{TestServer, temp_data_dir, unique_name, wait_for};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use tokio::sync::mpsc;

/// The seed of the partition hash (RabbitMQ's .NET and Go stream clients').
const SEED: u32 = 104_729;

/// murmur3 x86_32, written from the reference algorithm, so the broker's hash is
/// checked against an independent implementation rather than against itself.
fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes(block.try_into().expect("a 4-byte block"));
        h ^= mix(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .enumerate()
            .fold(0u32, |k, (i, &b)| k | u32::from(b) << (8 * i));
        h ^= mix(k);
    }
    h ^= u32::try_from(data.len()).expect("a short key");
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The partition a producer computes for `key` on a queue of `n` partitions.
fn partition_of(key: &str, n: u16) -> u16 {
    u16::try_from(murmur3_x86_32(key.as_bytes(), SEED) % u32::from(n)).expect("below n")
}

/// The first key `prefix0`, `prefix1`, … that hashes to partition `p` of `n`.
fn key_for(prefix: &str, p: u16, n: u16) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|key| partition_of(key, n) == p)
        .expect("some key hashes to every partition")
}

/// The `x-partition` header of a delivery or get-ok: present, and a long (`l`).
fn partition(properties: &BasicProperties) -> u16 {
    match header(properties, "x-partition") {
        Some(AMQPValue::LongLongInt(p)) => u16::try_from(*p).expect("a partition index"),
        other => panic!("x-partition should be a long, got {other:?}"),
    }
}

/// Asserts that `result` failed with 406 PRECONDITION_FAILED and `text` (as Warren and
/// RabbitMQ send it, after `PRECONDITION_FAILED - `).
#[track_caller]
fn assert_precondition<T: std::fmt::Debug>(result: lapin::Result<T>, text: &str) {
    assert_amqp_error(result, 406, &format!("PRECONDITION_FAILED - {text}"));
}

/// Arguments, the argument refused, and the reason given.
type Refusal<'a> = (Vec<(&'a str, AMQPValue)>, &'a str, &'a str);

/// `invalid arg '{key}' for queue '{queue}' in vhost '/': {reason}`.
fn invalid(key: &str, queue: &str, reason: &str) -> String {
    format!("invalid arg '{key}' for queue '{queue}' in vhost '/': {reason}")
}

fn partitions_arg(n: i32) -> (&'static str, AMQPValue) {
    ("x-partitions", int(n))
}

/// Declares a non-durable queue of `n` partitions with `extra` arguments.
async fn declare_partitioned(channel: &Channel, queue: &str, n: i32, extra: &[(&str, AMQPValue)]) {
    let mut args = vec![partitions_arg(n)];
    args.extend(extra.iter().cloned());
    declare_queue_with(channel, queue, table(&args))
        .await
        .expect("declare a partitioned queue");
}

/// A fanout exchange bound to `queue`: a publish keeps its routing key, which the queue
/// hashes, without a binding per key.
async fn fanout_to(channel: &Channel, queue: &str) -> String {
    let exchange = unique_name("pfan");
    declare_exchange_with(
        channel,
        &exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    bind_queue(channel, queue, &exchange, "").await;
    exchange
}

/// Declares `queue` with `args` on a fresh channel of `conn` and returns the refusal.
async fn declare_refused(
    conn: &Connection,
    queue: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<lapin::Queue> {
    let channel = channel(conn).await;
    declare_queue_with(&channel, queue, table(args)).await
}

/// Consumes `queue` with `args` on a fresh channel of `conn`.
async fn consume_on_new_channel(
    conn: &Connection,
    queue: &str,
    args: &[(&str, AMQPValue)],
) -> lapin::Result<Consumer> {
    let channel = channel(conn).await;
    within(
        "basic.consume",
        channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(args),
        ),
    )
    .await
}

/// A group member on its own connection, with a per-consumer prefetch.
struct Member {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl Member {
    async fn join(
        server: &TestServer,
        queue: &str,
        prefetch_count: u16,
        args: &[(&str, AMQPValue)],
    ) -> Member {
        let (conn, channel) = open(server).await;
        prefetch(&channel, prefetch_count).await;
        let consumer = consume_with(
            &channel,
            queue,
            "",
            BasicConsumeOptions::default(),
            table(args),
        )
        .await;
        Member {
            conn,
            channel,
            consumer,
        }
    }

    async fn next(&mut self) -> Delivery {
        next_delivery(&mut self.consumer).await
    }

    async fn cancel(&self) {
        within(
            "basic.cancel",
            self.channel
                .basic_cancel(self.consumer.tag(), BasicCancelOptions::default()),
        )
        .await
        .expect("basic.cancel");
    }
}

async fn ack(delivery: &Delivery) {
    within("basic.ack", delivery.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

async fn wait_for_counts(channel: &Channel, queue: &str, expected: (u32, u32)) {
    let ok = wait_for(BOUND, || async { counts(channel, queue).await == expected }).await;
    assert!(
        ok,
        "{queue}: (messages, consumers) is {:?}, expected {expected:?}",
        counts(channel, queue).await
    );
}

/// What a collector saw: (member, body, partition, redelivered).
type Seen = (usize, String, u16, bool);

/// Acks and reports every delivery of each member, until dropped.
struct Collector {
    rx: mpsc::UnboundedReceiver<Seen>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Collector {
    fn start(consumers: Vec<Consumer>) -> Collector {
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = consumers
            .into_iter()
            .enumerate()
            .map(|(member, mut consumer)| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(Ok(delivery)) = consumer.next().await {
                        let seen = (
                            member,
                            body(&delivery),
                            partition(&delivery.properties),
                            delivery.redelivered,
                        );
                        if delivery.ack(BasicAckOptions::default()).await.is_err()
                            || tx.send(seen).is_err()
                        {
                            break;
                        }
                    }
                })
            })
            .collect();
        Collector { rx, tasks }
    }

    /// The next `n` deliveries, all within [`BOUND`].
    async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut seen = Vec::with_capacity(n);
        within("every delivery", async {
            while seen.len() < n {
                seen.push(self.rx.recv().await.expect("a collector task"));
            }
        })
        .await;
        seen
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[test]
fn the_test_hash_matches_the_published_vectors() {
    // The Go and .NET stream clients' table, and the raw hashes the design lists.
    assert_eq!(murmur3_x86_32(b"hello1", SEED), 0x10f9_983a);
    assert_eq!(murmur3_x86_32(b"hello2", SEED), 0xc071_bd04);
    assert_eq!(murmur3_x86_32(b"hello10", SEED), 0x9f77_94ad);
    assert_eq!(murmur3_x86_32(b"", SEED), 0xc675_7d56);
    let table: Vec<u16> = (1..=10)
        .map(|i| partition_of(&format!("hello{i}"), 3))
        .collect();
    assert_eq!(table, [1, 0, 1, 2, 0, 2, 0, 1, 0, 2]);
    assert_eq!(partition_of("hello88", 3), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn x_partitions_errors_have_rabbitmq_texts() {
    let server = TestServer::start().await;
    let conn = within("connect", server.connect()).await;
    let q = unique_name("pq");
    let key = "x-partitions";
    for (value, reason) in [
        (text("4"), "\"expected integer, got longstr\""),
        (int(0), "{value_zero,0}"),
        (int(-1), "{value_negative,-1}"),
        (int(5000), "{max_value_exceeded,5000}"),
        (AMQPValue::Boolean(true), "\"expected integer, got bool\""),
    ] {
        let refused = declare_refused(&conn, &q, &[(key, value)]).await;
        assert_precondition(refused, &invalid(key, &q, reason));
    }
    let refused = declare_refused(
        &conn,
        &q,
        &[
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            partitions_arg(4),
        ],
    )
    .await;
    assert_precondition(
        refused,
        &invalid(
            key,
            &q,
            "\"x-single-active-consumer cannot be combined with x-partitions\"",
        ),
    );
    // The limits themselves are accepted, and any integer type.
    let channel = channel(&conn).await;
    for (name, value) in [
        ("one", int(1)),
        ("most", int(4096)),
        ("short", AMQPValue::ShortUInt(8)),
        ("long", AMQPValue::LongLongInt(8)),
    ] {
        let name = unique_name(name);
        declare_queue_with(&channel, &name, table(&[(key, value)]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_key_and_per_partition_argument_errors() {
    let server = TestServer::start().await;
    let conn = within("connect", server.connect()).await;
    let q = unique_name("pq");
    let (header, property, per) = (
        "x-partition-hash-header",
        "x-partition-hash-property",
        "x-consumers-per-partition",
    );
    let cases: Vec<Refusal> = vec![
        (
            vec![partitions_arg(4), (header, AMQPValue::LongLongInt(1))],
            header,
            "{unacceptable_type,long}",
        ),
        (
            vec![partitions_arg(4), (header, int(1))],
            header,
            "{unacceptable_type,signedint}",
        ),
        (
            vec![(header, text("customer"))],
            header,
            "\"requires a partitioned queue\"",
        ),
        (
            vec![
                partitions_arg(4),
                (header, text("customer")),
                (property, text("message_id")),
            ],
            header,
            "\"x-partition-hash-header and x-partition-hash-property are mutually exclusive\"",
        ),
        (
            vec![partitions_arg(4), (property, text("foo"))],
            property,
            "\"unsupported property 'foo'\"",
        ),
        (
            vec![partitions_arg(4), (property, AMQPValue::Boolean(true))],
            property,
            "{unacceptable_type,bool}",
        ),
        (
            vec![(property, text("message_id"))],
            property,
            "\"requires a partitioned queue\"",
        ),
        (
            vec![partitions_arg(4), (per, int(0))],
            per,
            "{value_zero,0}",
        ),
        (
            vec![partitions_arg(4), (per, int(1025))],
            per,
            "{max_value_exceeded,1025}",
        ),
        (
            vec![partitions_arg(4), (per, text("2"))],
            per,
            "\"expected integer, got longstr\"",
        ),
        (vec![(per, int(2))], per, "\"requires a partitioned queue\""),
    ];
    for (args, key, reason) in cases {
        let refused = declare_refused(&conn, &q, &args).await;
        assert_precondition(refused, &invalid(key, &q, reason));
    }
    // Each accepted alone.
    let channel = channel(&conn).await;
    for extra in [
        (header, text("customer")),
        (property, text("correlation_id")),
        (per, int(2)),
    ] {
        let name = unique_name("pq-ok");
        declare_partitioned(&channel, &name, 4, &[extra]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_argument_errors_have_rabbitmq_texts() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    let (group, member, session, notify, part) = (
        "x-consumer-group",
        "x-group-member",
        "x-group-session-timeout",
        "x-group-notify",
        "x-partition",
    );
    let long_name = "g".repeat(256);
    let cases: Vec<Refusal> = vec![
        (
            vec![(group, int(1))],
            group,
            "{unacceptable_type,signedint}",
        ),
        (vec![(group, text(""))], group, "\"empty group name\""),
        (
            vec![(group, text(&long_name))],
            group,
            "\"group name is longer than 255 bytes\"",
        ),
        (vec![(member, text(""))], member, "\"empty member id\""),
        (
            vec![(member, text("m")), (part, int(1))],
            member,
            "\"x-group-member and x-partition are mutually exclusive\"",
        ),
        (
            vec![(session, int(1000))],
            session,
            "\"requires x-group-member\"",
        ),
        (
            vec![(member, text("m")), (session, int(3_600_001))],
            session,
            "{max_value_exceeded,3600001}",
        ),
        (
            vec![(member, text("m")), (session, int(-1))],
            session,
            "{value_negative,-1}",
        ),
        (
            vec![(notify, int(1))],
            notify,
            "{unacceptable_type,signedint}",
        ),
        (
            vec![(part, int(4))],
            part,
            "\"partition 4 is out of range 0-3\"",
        ),
        (
            vec![(part, AMQPValue::FieldArray(vec![int(0), int(-1)].into()))],
            part,
            "\"partition -1 is out of range 0-3\"",
        ),
        (
            vec![(part, AMQPValue::FieldArray(Vec::new().into()))],
            part,
            "\"empty partition list\"",
        ),
        (
            vec![(part, text("1"))],
            part,
            "\"expected integer, got longstr\"",
        ),
        (
            vec![(group, text("g")), (part, int(1))],
            part,
            "\"x-partition and x-consumer-group are mutually exclusive\"",
        ),
        // RabbitMQ's own arguments are checked first.
        (
            vec![(group, text("")), ("x-priority", text("high"))],
            "x-priority",
            "\"expected integer, got longstr\"",
        ),
    ];
    for (args, key, reason) in cases {
        let refused = consume_on_new_channel(&conn, &q, &args).await;
        assert_precondition(refused, &invalid(key, &q, reason));
    }
    // None of the refused consumers was left behind.
    assert_eq!(counts(&channel, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_queue_refuses_the_group_consume_arguments() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let q = unique_name("plain");
    declare_queue(&channel, &q).await;
    for (key, value) in [
        ("x-consumer-group", text("g")),
        ("x-group-member", text("m")),
        ("x-group-notify", AMQPValue::Boolean(false)),
        ("x-partition", int(0)),
    ] {
        let refused = consume_on_new_channel(&conn, &q, &[(key, value)]).await;
        assert_precondition(refused, &invalid(key, &q, "\"queue is not partitioned\""));
    }
    // A value that is wrong whatever the queue is reported as such.
    let refused = consume_on_new_channel(&conn, &q, &[("x-consumer-group", text(""))]).await;
    assert_precondition(
        refused,
        &invalid("x-consumer-group", &q, "\"empty group name\""),
    );
    // A plain consume still works.
    let _consumer = consume_on_new_channel(&conn, &q, &[])
        .await
        .expect("a plain consumer");
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclaring_keeps_the_partition_count() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    // Without the argument, as an application unaware of partitions declares it.
    declare_queue_with(&channel, &q, FieldTable::default())
        .await
        .expect("redeclare without x-partitions");
    // The same count, in another integer type.
    declare_queue_with(
        &channel,
        &q,
        table(&[("x-partitions", AMQPValue::ShortShortUInt(4))]),
    )
    .await
    .expect("redeclare with the same count");
    let refused = declare_refused(&conn, &q, &[partitions_arg(8)]).await;
    assert_precondition(
        refused,
        &format!(
            "inequivalent arg 'x-partitions' for queue '{q}' in vhost '/': received '8' but current is '4'"
        ),
    );
    let plain = unique_name("plain");
    declare_queue(&channel, &plain).await;
    let refused = declare_refused(&conn, &plain, &[partitions_arg(4)]).await;
    assert_precondition(
        refused,
        &format!(
            "inequivalent arg 'x-partitions' for queue '{plain}' in vhost '/': received the \
             value '4' of type 'signedint' but current is none"
        ),
    );
    // Still four partitions: x-partition 3 is in range, 4 is not.
    let refused = consume_on_new_channel(&conn, &q, &[("x-partition", int(4))]).await;
    assert_precondition(
        refused,
        &invalid("x-partition", &q, "\"partition 4 is out of range 0-3\""),
    );
    consume_on_new_channel(&conn, &q, &[("x-partition", int(3))])
        .await
        .expect("partition 3 exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_publishes_land_in_the_murmur3_partition() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 3, &[]).await;
    let exchange = unique_name("pdirect");
    declare_exchange_with(
        &channel,
        &exchange,
        ExchangeKind::Direct,
        FieldTable::default(),
    )
    .await;
    let keys: Vec<String> = (1..=10).map(|i| format!("hello{i}")).collect();
    for key in &keys {
        bind_queue(&channel, &q, &exchange, key).await;
    }
    for key in &keys {
        publish(&channel, &exchange, key, key.as_bytes()).await;
    }
    wait_for_count(&channel, &q, 10).await;
    // No consumer owns a partition: basic.get takes from all of them.
    let mut got = BTreeMap::new();
    while let Some(message) = get(&channel, &q).await {
        got.insert(
            body(&message.delivery),
            partition(&message.delivery.properties),
        );
    }
    let expected: BTreeMap<String, u16> = keys
        .iter()
        .zip([1, 0, 1, 2, 0, 2, 0, 1, 0, 2])
        .map(|(key, p)| (key.clone(), p))
        .collect();
    assert_eq!(got, expected);
    for (key, p) in &got {
        assert_eq!(partition_of(key, 3), *p, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_header_chooses_the_partition() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(
        &channel,
        &q,
        5,
        &[("x-partition-hash-header", text("customer"))],
    )
    .await;
    let exchange = fanout_to(&channel, &q).await;
    let customers: Vec<String> = (0..20).map(|i| format!("customer-{i}")).collect();
    for customer in &customers {
        let props = BasicProperties::default().with_headers(table(&[("customer", text(customer))]));
        // The routing key is the same for all: only the header decides.
        publish_with(&channel, &exchange, "same-key", customer.as_bytes(), props).await;
    }
    // An integer header hashes as its decimal text.
    let props = BasicProperties::default().with_headers(table(&[("customer", int(12345))]));
    publish_with(&channel, &exchange, "same-key", b"12345", props).await;
    wait_for_count(&channel, &q, 21).await;
    while let Some(message) = get(&channel, &q).await {
        let key = body(&message.delivery);
        assert_eq!(
            partition(&message.delivery.properties),
            partition_of(&key, 5),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_publishes_go_round_robin() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    // Through the default exchange the routing key is the queue's name: no key.
    for i in 0..8 {
        publish(&channel, "", &q, format!("default-{i}").as_bytes()).await;
    }
    // An empty routing key is no key either.
    let exchange = fanout_to(&channel, &q).await;
    for i in 0..4 {
        publish(&channel, &exchange, "", format!("empty-{i}").as_bytes()).await;
    }
    wait_for_count(&channel, &q, 12).await;
    let mut per_partition: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    while let Some(message) = get(&channel, &q).await {
        per_partition
            .entry(partition(&message.delivery.properties))
            .or_default()
            .push(body(&message.delivery));
    }
    let sizes: Vec<usize> = per_partition.values().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 3, 3], "{per_partition:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_keeps_its_order_at_one_member() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    let exchange = fanout_to(&channel, &q).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::join(&server, &q, 5, &[("x-consumer-group", text("workers"))]).await);
    }
    wait_for_counts(&channel, &q, (0, 3)).await;
    let (conns, consumers): (Vec<_>, Vec<_>) = members
        .into_iter()
        .map(|m| ((m.conn, m.channel), m.consumer))
        .unzip();
    let mut collector = Collector::start(consumers);
    const KEYS: usize = 8;
    const SEQ: usize = 20;
    for seq in 0..SEQ {
        for k in 0..KEYS {
            let key = format!("customer-{k}");
            publish(&channel, &exchange, &key, format!("{key}:{seq}").as_bytes()).await;
        }
    }
    let seen = collector.take(KEYS * SEQ).await;
    let mut per_key: BTreeMap<String, Vec<(usize, usize, u16)>> = BTreeMap::new();
    let mut per_member: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    for (member, body, p, redelivered) in seen {
        assert!(!redelivered, "{body} redelivered without a failure");
        let (key, seq) = body.split_once(':').expect("key:seq");
        per_key.entry(key.to_owned()).or_default().push((
            member,
            seq.parse().expect("a number"),
            p,
        ));
        per_member.entry(member).or_default().insert(p);
    }
    for (key, deliveries) in &per_key {
        let seqs: Vec<usize> = deliveries.iter().map(|d| d.1).collect();
        assert_eq!(seqs, (0..SEQ).collect::<Vec<_>>(), "{key} out of order");
        let holders: BTreeSet<usize> = deliveries.iter().map(|d| d.0).collect();
        assert_eq!(holders.len(), 1, "{key} went to members {holders:?}");
        assert!(
            deliveries.iter().all(|d| d.2 == partition_of(key, 4)),
            "{key} left its partition"
        );
    }
    // The members' partitions are disjoint.
    let all: Vec<u16> = per_member.values().flatten().copied().collect();
    let distinct: BTreeSet<u16> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "{per_member:?}");
    drop(conns);
}

#[tokio::test(flavor = "multi_thread")]
async fn four_members_on_eight_partitions_own_two_each() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 8, &[]).await;
    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(Member::join(&server, &q, 10, &[]).await);
    }
    wait_for_counts(&channel, &q, (0, 4)).await;
    let (conns, consumers): (Vec<_>, Vec<_>) = members
        .into_iter()
        .map(|m| ((m.conn, m.channel), m.consumer))
        .unzip();
    let mut collector = Collector::start(consumers);
    // Keyless: two messages to every partition.
    for i in 0..16 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    let seen = collector.take(16).await;
    let mut owned: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
    for (member, _, p, _) in &seen {
        owned.entry(*member).or_default().insert(*p);
    }
    assert_eq!(owned.len(), 4, "every member got work: {owned:?}");
    for (member, parts) in &owned {
        assert_eq!(parts.len(), 2, "member {member} owns {parts:?}");
    }
    let union: BTreeSet<u16> = owned.values().flatten().copied().collect();
    assert_eq!(union, (0..8).collect::<BTreeSet<u16>>());
    drop(conns);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_when_an_active_member_cancels() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 2, &[]).await;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        let (conn, ch) = open(&server).await;
        let consumer = consume_with(&ch, &q, "", no_ack, FieldTable::default()).await;
        members.push((conn, ch, consumer));
    }
    wait_for_counts(&channel, &q, (0, 3)).await;
    for i in 0..6 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    // The first two joined own one partition each; the third is a standby.
    let mut firsts = Vec::new();
    for (_, _, consumer) in members.iter_mut().take(2) {
        let mut parts = BTreeSet::new();
        for _ in 0..3 {
            parts.insert(partition(&next_delivery(consumer).await.properties));
        }
        assert_eq!(parts.len(), 1, "one partition per active member");
        firsts.push(*parts.first().expect("a partition"));
    }
    assert_ne!(firsts[0], firsts[1]);
    assert_no_delivery(&mut members[2].2).await;

    // The first member cancels: its partition goes to the standby.
    let (_, first_channel, first_consumer) = &members[0];
    within(
        "basic.cancel",
        first_channel.basic_cancel(first_consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    wait_for_counts(&channel, &q, (0, 2)).await;
    for i in 6..10 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    for _ in 0..2 {
        let delivery = next_delivery(&mut members[2].2).await;
        assert_eq!(partition(&delivery.properties), firsts[0]);
    }
    for _ in 0..2 {
        let delivery = next_delivery(&mut members[1].2).await;
        assert_eq!(partition(&delivery.properties), firsts[1]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_partition_drains_before_its_new_owner_gets_it() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 2, &[]).await;
    let exchange = fanout_to(&channel, &q).await;
    let keys = [key_for("k", 0, 2), key_for("k", 1, 2)];
    let mut a = Member::join(&server, &q, 20, &[]).await;
    for seq in 0..3 {
        for (p, key) in keys.iter().enumerate() {
            publish(&channel, &exchange, key, format!("{p}:{seq}").as_bytes()).await;
        }
    }
    // A owns both partitions and holds three unacked of each.
    let mut held: BTreeMap<u16, Vec<Delivery>> = BTreeMap::new();
    for _ in 0..6 {
        let delivery = a.next().await;
        held.entry(partition(&delivery.properties))
            .or_default()
            .push(delivery);
    }
    assert_eq!(held.values().map(Vec::len).collect::<Vec<_>>(), [3, 3]);

    let mut b = Member::join(&server, &q, 20, &[]).await;
    wait_for_counts(&channel, &q, (0, 2)).await;
    for seq in 3..6 {
        for (p, key) in keys.iter().enumerate() {
            publish(&channel, &exchange, key, format!("{p}:{seq}").as_bytes()).await;
        }
    }
    // A keeps one partition and goes on getting it; the other moves to B.
    let mut kept = BTreeSet::new();
    for _ in 0..3 {
        let delivery = a.next().await;
        kept.insert(partition(&delivery.properties));
        ack(&delivery).await;
    }
    assert_eq!(
        kept.len(),
        1,
        "A gets one partition after B joined: {kept:?}"
    );
    let kept = *kept.first().expect("a partition");
    let moved = 1 - kept;
    assert_no_delivery(&mut a.consumer).await;
    // Nothing of the moved partition reaches B while A holds some of it unacked.
    assert_no_delivery(&mut b.consumer).await;
    let moved_held = held
        .remove(&moved)
        .expect("deliveries of the moved partition");
    for delivery in &moved_held[..2] {
        ack(delivery).await;
    }
    assert_no_delivery(&mut b.consumer).await;
    ack(&moved_held[2]).await;
    for seq in 3..6 {
        let delivery = b.next().await;
        assert_eq!(body(&delivery), format!("{moved}:{seq}"));
        assert_eq!(partition(&delivery.properties), moved);
        assert!(!delivery.redelivered, "never delivered before");
    }
    assert_no_delivery(&mut b.consumer).await;
}

/// Two members own a partition each and hold three unacked; the first one's connection
/// goes (closed, or its socket dropped); the survivor gets its three, redelivered and
/// in their original order.
async fn survivor_takes_over_unacked(abrupt: bool) {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 2, &[]).await;
    let exchange = fanout_to(&channel, &q).await;
    let keys = [key_for("k", 0, 2), key_for("k", 1, 2)];
    let proxy = KillableProxy::start(server.addr()).await;
    let (a_conn, a_channel) = {
        let conn = connect_uri(&proxy.uri())
            .await
            .expect("connect through the proxy");
        let ch = common::channel(&conn).await;
        (conn, ch)
    };
    prefetch(&a_channel, 10).await;
    let mut a = consume_with(
        &a_channel,
        &q,
        "a",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    let mut b = Member::join(&server, &q, 10, &[]).await;
    wait_for_counts(&channel, &q, (0, 2)).await;
    for seq in 0..3 {
        for (p, key) in keys.iter().enumerate() {
            publish(&channel, &exchange, key, format!("{p}:{seq}").as_bytes()).await;
        }
    }
    let mut a_bodies = Vec::new();
    let mut a_part = BTreeSet::new();
    for _ in 0..3 {
        let delivery = next_delivery(&mut a).await;
        a_part.insert(partition(&delivery.properties));
        a_bodies.push(body(&delivery));
    }
    for _ in 0..3 {
        let delivery = b.next().await;
        assert!(!a_part.contains(&partition(&delivery.properties)));
    }
    assert_eq!(a_part.len(), 1, "A owns one partition");
    let a_part = *a_part.first().expect("a partition");
    if abrupt {
        proxy.kill().await;
    } else {
        within("connection.close", a_conn.close(200, "bye".into()))
            .await
            .expect("close A");
        proxy.kill().await;
    }
    wait_for_counts(&channel, &q, (0, 1)).await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        let delivery = b.next().await;
        assert!(
            delivery.redelivered,
            "{} was delivered to A",
            body(&delivery)
        );
        assert_eq!(partition(&delivery.properties), a_part);
        taken.push(body(&delivery));
    }
    assert_eq!(taken, a_bodies, "A's unacked come back in their order");
    assert_eq!(
        a_bodies,
        (0..3)
            .map(|seq| format!("{a_part}:{seq}"))
            .collect::<Vec<_>>()
    );
    assert_no_delivery(&mut b.consumer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_member_hands_its_unacked_to_the_survivor() {
    survivor_takes_over_unacked(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_member_hands_its_unacked_to_the_survivor() {
    survivor_takes_over_unacked(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_queue_serves_one_group() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    let first = Member::join(&server, &q, 1, &[("x-consumer-group", text("g1"))]).await;
    let refused = consume_on_new_channel(&conn, &q, &[("x-consumer-group", text("g2"))]).await;
    assert_precondition(
        refused,
        &format!(
            "queue '{q}' in vhost '/' is consumed by group 'g1': a partitioned queue serves \
             one consumer group; give group 'g2' its own partitioned queue bound to the same \
             exchange, or use a stream"
        ),
    );
    // A consumer naming no group, or the same one, joins it.
    let unnamed = Member::join(&server, &q, 1, &[]).await;
    let same = Member::join(&server, &q, 1, &[("x-consumer-group", text("g1"))]).await;
    wait_for_counts(&channel, &q, (0, 3)).await;
    // The name holds while any member is left.
    first.cancel().await;
    same.cancel().await;
    let refused = consume_on_new_channel(&conn, &q, &[("x-consumer-group", text("g2"))]).await;
    assert_precondition(
        refused,
        &format!(
            "queue '{q}' in vhost '/' is consumed by group 'g1': a partitioned queue serves \
             one consumer group; give group 'g2' its own partitioned queue bound to the same \
             exchange, or use a stream"
        ),
    );
    unnamed.cancel().await;
    wait_for_counts(&channel, &q, (0, 0)).await;
    let _second = consume_on_new_channel(&conn, &q, &[("x-consumer-group", text("g2"))])
        .await
        .expect("another group once the first has no member");
    wait_for_counts(&channel, &q, (0, 1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_consumers_read_given_partitions_outside_the_group() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    let manual_list = AMQPValue::FieldArray(vec![int(3), int(1)].into());
    let manual = Member::join(&server, &q, 20, &[("x-partition", manual_list)]).await;
    let single = Member::join(
        &server,
        &q,
        20,
        &[("x-partition", AMQPValue::LongLongInt(2))],
    )
    .await;
    let member = Member::join(&server, &q, 20, &[]).await;
    wait_for_counts(&channel, &q, (0, 3)).await;
    let mut collector = Collector::start(vec![manual.consumer, single.consumer, member.consumer]);
    for i in 0..12 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    let seen = collector.take(12).await;
    let mut got: BTreeMap<usize, BTreeMap<u16, usize>> = BTreeMap::new();
    for (who, _, p, _) in seen {
        *got.entry(who).or_default().entry(p).or_default() += 1;
    }
    let expected: BTreeMap<usize, BTreeMap<u16, usize>> = [
        (0, [(1, 3), (3, 3)].into_iter().collect()),
        (1, [(2, 3)].into_iter().collect()),
        (2, [(0, 3)].into_iter().collect()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected, "consumer → partition → deliveries");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_get_takes_only_from_partitions_no_consumer_owns() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 2, &[]).await;
    let mut owner = Member::join(&server, &q, 1, &[("x-partition", int(0))]).await;
    // Round robin: partitions 0, 1, 0, 1.
    for i in 0..4 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    let first = owner.next().await;
    assert_eq!(partition(&first.properties), 0);
    wait_for_count(&channel, &q, 3).await;
    for expected in ["m1", "m3"] {
        let message = get(&channel, &q).await.expect("a message of partition 1");
        assert_eq!(body(&message.delivery), expected);
        assert_eq!(partition(&message.delivery.properties), 1);
    }
    // Partition 0 still holds m2, but its owner's it: get-empty.
    assert!(get(&channel, &q).await.is_none(), "partition 0 is owned");
    assert_eq!(message_count(&channel, &q).await, 1);
    // Once its owner cancels (with its delivery acked), get reaches partition 0.
    ack(&first).await;
    let m2 = owner.next().await;
    ack(&m2).await;
    assert_eq!(body(&m2), "m2");
    owner.cancel().await;
    publish(&channel, "", &q, b"m4").await;
    let message = wait_for_get(&channel, &q).await;
    assert_eq!(body(&message.delivery), "m4");
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declare_counts_messages_and_consumers() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    for i in 0..8 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    wait_for_counts(&channel, &q, (8, 0)).await;
    // A manual consumer of partition 3 and two group members sharing 0-2, each taking
    // one message (prefetch 1).
    let mut manual = Member::join(&server, &q, 1, &[("x-partition", int(3))]).await;
    let mut a = Member::join(&server, &q, 1, &[]).await;
    let mut b = Member::join(&server, &q, 1, &[]).await;
    for m in [&mut manual, &mut a, &mut b] {
        let _ = m.next().await;
    }
    wait_for_counts(&channel, &q, (5, 3)).await;
    b.cancel().await;
    // B's message stays unacked at B until its channel closes.
    wait_for_counts(&channel, &q, (5, 2)).await;
    within("channel.close", b.channel.close(200, "bye".into()))
        .await
        .expect("close B's channel");
    // Its message is back in its partition, which A now owns; A still holds its own
    // unacked message at prefetch 1, so the message stays ready.
    wait_for_counts(&channel, &q, (6, 2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_partitioned_queue_keeps_messages_and_partitions_across_a_restart() {
    let dir = temp_data_dir("partitions");
    let server = TestServer::start_in(&dir).await;
    let q = unique_name("pq-durable");
    let keys: Vec<String> = (0..8).map(|k| format!("key-{k}")).collect();
    {
        let (_conn, channel) = open_confirm(&server).await;
        within(
            "durable queue.declare",
            channel.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                table(&[partitions_arg(4)]),
            ),
        )
        .await
        .expect("declare");
        let exchange = fanout_to(&channel, &q).await;
        for seq in 0..4 {
            for key in &keys {
                let confirm = publish_confirmed(
                    &channel,
                    &exchange,
                    key,
                    lapin::options::BasicPublishOptions::default(),
                    format!("{key}:{seq}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
                assert!(confirm.is_ack(), "confirmed");
            }
        }
        server.stop().await;
    }
    let server = TestServer::start_in(&dir).await;
    let (conn, channel) = open(&server).await;
    assert_eq!(counts(&channel, &q).await, (32, 0));
    // The count came back with the definition.
    let other = common::channel(&conn).await;
    let refused = within(
        "durable queue.declare",
        other.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            table(&[partitions_arg(8)]),
        ),
    )
    .await;
    assert_precondition(
        refused,
        &format!(
            "inequivalent arg 'x-partitions' for queue '{q}' in vhost '/': received '8' but current is '4'"
        ),
    );
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(message) = get(&channel, &q).await {
        let text = body(&message.delivery);
        let (key, seq) = text.split_once(':').expect("key:seq");
        assert_eq!(
            partition(&message.delivery.properties),
            partition_of(key, 4),
            "{text} is back in its partition"
        );
        per_key
            .entry(key.to_owned())
            .or_default()
            .push(seq.to_owned());
    }
    assert_eq!(per_key.len(), keys.len());
    for (key, seqs) in &per_key {
        assert_eq!(seqs, &["0", "1", "2", "3"], "{key} in order");
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_and_delete_cover_every_partition() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 4, &[]).await;
    for i in 0..8 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    wait_for_count(&channel, &q, 8).await;
    let purged = within(
        "queue.purge",
        channel.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("queue.purge");
    assert_eq!(purged, 8);
    assert_eq!(message_count(&channel, &q).await, 0);
    assert!(get(&channel, &q).await.is_none());
    for i in 0..6 {
        publish(&channel, "", &q, format!("n{i}").as_bytes()).await;
    }
    wait_for_count(&channel, &q, 6).await;
    let mut member = Member::join(&server, &q, 1, &[]).await;
    let _held = member.next().await;
    let deleted = within(
        "queue.delete",
        channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    assert_eq!(deleted, 5, "ready messages, not the unacked one");
    let conn = within("connect", server.connect()).await;
    assert!(!queue_exists(&conn, &q).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_higher_priority_member_takes_every_partition() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let q = unique_name("pq");
    declare_partitioned(&channel, &q, 2, &[]).await;
    let mut low = Member::join(&server, &q, 10, &[]).await;
    let mut high = Member::join(&server, &q, 10, &[("x-priority", int(5))]).await;
    wait_for_counts(&channel, &q, (0, 2)).await;
    for i in 0..4 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut parts = BTreeSet::new();
    for _ in 0..4 {
        let delivery = high.next().await;
        parts.insert(partition(&delivery.properties));
        ack(&delivery).await;
    }
    assert_eq!(parts, [0, 1].into_iter().collect());
    assert_no_delivery(&mut low.consumer).await;
    high.cancel().await;
    for i in 4..6 {
        publish(&channel, "", &q, format!("m{i}").as_bytes()).await;
    }
    for _ in 0..2 {
        let _ = low.next().await;
    }
}

/// `examples-python/partitioned_workers.py` against this broker (it takes `AMQP_URL`):
/// three worker processes, one SIGKILLed midway, every message received in per-key
/// order, by its own check.
#[tokio::test(flavor = "multi_thread")]
async fn the_partitioned_workers_example_keeps_order_through_a_kill() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    // The script bounds each of its waits at 30 s; this bounds the whole run.
    let (status, output) = integration_tests::python::run_example(
        "partitioned_workers.py",
        server.uri(),
        Duration::from_secs(90),
    )
    .await
    .expect("run partitioned_workers.py");
    let summary = output
        .lines()
        .rfind(|line| line.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line; it printed:\n{output}"));
    assert!(
        status.success()
            && summary.starts_with(
                "summary: 200 messages for 10 keys on 8 partitions, 3 workers (worker 1 \
                 killed midway), all received, per-key order kept, "
            ),
        "{status}: {summary}"
    );
    for w in 0..3 {
        let line = format!("worker {w} got customer-");
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(" from partition ")),
            "worker {w} printed no delivery"
        );
    }
}
