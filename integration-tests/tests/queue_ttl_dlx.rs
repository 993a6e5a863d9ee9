//! Message TTL (per queue with `x-message-ttl`, per message with `expiration`), queue
//! expiry (`x-expires`), length limits (`x-max-length`, `x-max-length-bytes`, `x-overflow`)
//! and dead-lettering (`x-dead-letter-exchange`, `x-dead-letter-routing-key`): when a
//! message is dead-lettered, the `x-death` and `x-first-death-*` headers it then carries,
//! and the cycles RabbitMQ drops.
//!
//! Written against RabbitMQ 3.10. RabbitMQ 3.13 also adds `x-last-death-*` headers, which
//! these tests neither expect nor forbid.

mod common;

use std::time::Duration;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};

/// Declares `name` with `args`, panicking on refusal.
async fn declare(channel: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    declare_queue_with(channel, name, table(args))
        .await
        .unwrap_or_else(|err| panic!("declare {name} with {args:?}: {err:?}"));
}

/// A queue `source` with `args` that dead-letters through the default exchange into a
/// fresh plain queue, whose name is returned second.
async fn with_dead_letter_queue(
    channel: &Channel,
    prefix: &str,
    args: &[(&str, AMQPValue)],
) -> (String, String) {
    let source = unique_name(prefix);
    let dlq = unique_name(&format!("{prefix}-dlq"));
    declare_queue(channel, &dlq).await;
    let mut all = vec![
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&dlq)),
    ];
    all.extend(args.iter().cloned());
    declare(channel, &source, &all).await;
    (source, dlq)
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

async fn reject(channel: &Channel, tag: u64, requeue: bool) {
    within(
        "basic.reject",
        channel.basic_reject(tag, BasicRejectOptions { requeue }),
    )
    .await
    .expect("basic.reject");
}

/// An integer field of an `x-death` entry (`count` is a signed 64-bit `l`).
fn field_long(entry: &FieldTable, key: &str) -> i64 {
    match entry.inner().get(key) {
        Some(AMQPValue::LongLongInt(value)) => *value,
        other => panic!("x-death field {key} is not a long: {other:?}"),
    }
}

/// The `routing-keys` array of an `x-death` entry.
fn routing_keys(entry: &FieldTable) -> Vec<String> {
    match entry.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys
            .as_slice()
            .iter()
            .map(|key| match key {
                AMQPValue::LongString(key) => String::from_utf8_lossy(key.as_bytes()).into(),
                other => panic!("a routing key that is not a long string: {other:?}"),
            })
            .collect(),
        other => panic!("routing-keys is not an array: {other:?}"),
    }
}

/// Checks one `x-death` entry's reason, queue, exchange, routing keys and count, and
/// that `time` is a timestamp (seconds) close to now.
#[track_caller]
fn assert_death(
    entry: &FieldTable,
    reason: &str,
    queue: &str,
    exchange: &str,
    keys: &[&str],
    count: i64,
) {
    assert_eq!(
        field_text(entry, "reason").as_deref(),
        Some(reason),
        "{entry:?}"
    );
    assert_eq!(
        field_text(entry, "queue").as_deref(),
        Some(queue),
        "{entry:?}"
    );
    assert_eq!(
        field_text(entry, "exchange").as_deref(),
        Some(exchange),
        "{entry:?}"
    );
    assert_eq!(routing_keys(entry), keys, "{entry:?}");
    assert_eq!(field_long(entry, "count"), count, "{entry:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    match entry.inner().get("time") {
        Some(AMQPValue::Timestamp(time)) => assert!(
            time.abs_diff(now) < 60,
            "x-death time {time} is not close to now ({now})"
        ),
        other => panic!("x-death time is not a timestamp: {other:?}"),
    }
}

#[track_caller]
fn assert_first_death(properties: &BasicProperties, reason: &str, queue: &str, exchange: &str) {
    assert_eq!(
        (
            header_text(properties, "x-first-death-reason").as_deref(),
            header_text(properties, "x-first-death-queue").as_deref(),
            header_text(properties, "x-first-death-exchange").as_deref(),
        ),
        (Some(reason), Some(queue), Some(exchange)),
    );
}

/// Asserts that `queue`'s ready count stays at `count` for [`QUIET`], polling often
/// enough to see a message that comes back only for a moment.
async fn assert_count_stays(channel: &Channel, queue: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(message_count(channel, queue).await, count, "queue {queue}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Message TTL.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn queue_ttl_expires_messages_without_consumers() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("ttl");
    declare(&channel, &queue, &[("x-message-ttl", int(100))]).await;
    // Confirmed publishes are enqueued; expiry then empties the queue with nobody reading.
    for i in 0..3 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    wait_for_count(&channel, &queue, 0).await;
    assert!(get(&channel, &queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_ttl_messages_are_delivered_before_they_expire() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("ttl-alive");
    declare(&channel, &queue, &[("x-message-ttl", int(5_000))]).await;
    publish(&channel, "", &queue, b"fresh").await;
    let got = get(&channel, &queue).await.expect("an unexpired message");
    assert_eq!(got.delivery.data, b"fresh");
    // A queue TTL does not show as a per-message expiration.
    assert_eq!(got.delivery.properties.expiration(), &None);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_message_expiration_expires_the_message_at_the_head() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("expiration");
    declare_queue(&channel, &queue).await;
    publish_with(&channel, "", &queue, b"short", expiring("50")).await;
    wait_for_count(&channel, &queue, 0).await;

    // An unexpired message keeps its expiration property when delivered.
    publish_with(&channel, "", &queue, b"long", expiring("60000")).await;
    let got = get(&channel, &queue).await.expect("the message");
    assert_eq!(
        got.delivery
            .properties
            .expiration()
            .as_ref()
            .map(|e| e.as_str()),
        Some("60000")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_message_expiration_behind_a_longer_lived_message_is_dropped_when_it_reaches_the_head()
{
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("expiration-behind");
    declare_queue(&channel, &queue).await;
    publish_with(&channel, "", &queue, b"long", expiring("60000")).await;
    publish_with(&channel, "", &queue, b"short", expiring("20")).await;
    publish(&channel, "", &queue, b"forever").await;
    // RabbitMQ expires per-message TTLs only at the queue's head: the expired message
    // behind "long" is still counted (classic queues; documented behaviour).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(message_count(&channel, &queue).await, 3);
    // Once "long" is taken, the expired message is at the head and is never delivered.
    let got = get(&channel, &queue).await.expect("long");
    assert_eq!(got.delivery.data, b"long");
    let got = get(&channel, &queue).await.expect("forever");
    assert_eq!(got.delivery.data, b"forever");
    assert!(get(&channel, &queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lower_of_queue_ttl_and_message_expiration_applies() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let long_queue_ttl = unique_name("ttl-long");
    declare(&channel, &long_queue_ttl, &[("x-message-ttl", int(60_000))]).await;
    publish_with(&channel, "", &long_queue_ttl, b"short", expiring("30")).await;
    let short_queue_ttl = unique_name("ttl-short");
    declare(&channel, &short_queue_ttl, &[("x-message-ttl", int(30))]).await;
    publish_with(&channel, "", &short_queue_ttl, b"long", expiring("60000")).await;
    wait_for_count(&channel, &long_queue_ttl, 0).await;
    wait_for_count(&channel, &short_queue_ttl, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_zero_reaches_a_waiting_consumer() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let queue = unique_name("ttl-zero");
    declare(&channel, &queue, &[("x-message-ttl", int(0))]).await;
    let consumer_channel = common::channel(&conn).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &queue,
        "waiting",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&channel, "", &queue, b"now or never").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(body(&delivery), "now or never");

    // expiration "0" on a queue without TTL behaves the same.
    let plain = unique_name("expiration-zero");
    declare_queue(&channel, &plain).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &plain,
        "waiting-too",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish_with(&channel, "", &plain, b"zero", expiring("0")).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(body(&delivery), "zero");
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_zero_without_a_consumer_expires_at_once() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) =
        with_dead_letter_queue(&channel, "ttl-zero", &[("x-message-ttl", int(0))]).await;
    publish(&channel, "", &queue, b"nobody home").await;
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(dead.delivery.data, b"nobody home");
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "expired",
        &queue,
        "",
        &[&queue],
        1,
    );
    assert_eq!(message_count(&channel, &queue).await, 0);

    // A consumer without credit is not waiting: the message expires all the same.
    let (conn2, consumer_channel) = open(&server).await;
    prefetch(&consumer_channel, 1).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &queue,
        "busy",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&channel, "", &queue, b"first").await;
    let first = next_delivery(&mut consumer).await;
    assert_eq!(body(&first), "first");
    publish(&channel, "", &queue, b"second").await;
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(dead.delivery.data, b"second");
    drop(conn2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requeued_message_keeps_its_expiry() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) =
        with_dead_letter_queue(&channel, "ttl-requeue", &[("x-message-ttl", int(150))]).await;
    publish(&channel, "", &queue, b"held").await;
    let held = get(&channel, &queue).await.expect("the message");
    // Let the TTL run out while the message is unacked, then requeue it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reject(&channel, held.delivery.delivery_tag, true).await;
    // Its TTL counts from when it was first enqueued: it is not ready again.
    assert!(
        get(&channel, &queue).await.is_none(),
        "requeueing restarted the TTL"
    );
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(dead.delivery.data, b"held");
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "expired",
        &queue,
        "",
        &[&queue],
        1,
    );
    assert!(get(&channel, &queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_expiration_closes_the_channel() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let queue = unique_name("bad-expiration");
    for (expiration, detail) in [
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 5", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", "{leftover_string,\".5\"}"),
    ] {
        let channel = common::channel(&conn).await;
        declare_queue(&channel, &queue).await;
        let result = publish_confirmed_or_closed(
            &channel,
            "",
            &queue,
            BasicPublishOptions::default(),
            b"x",
            expiring(expiration),
        )
        .await;
        assert_amqp_error(
            result,
            406,
            &format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {detail}"),
        );
    }
    // A leading '+' is an integer to RabbitMQ.
    let channel = common::channel(&conn).await;
    let result = publish_confirmed_or_closed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"x",
        expiring("+60000"),
    )
    .await;
    assert!(matches!(result, Ok(Confirmation::Ack(None))), "{result:?}");
    assert_eq!(message_count(&channel, &queue).await, 1);
}

// ---------------------------------------------------------------------------------------
// Queue expiry.
// ---------------------------------------------------------------------------------------

/// Waits until `queue` is gone, checking no more often than every `interval`: a passive
/// declare counts as use and restarts an `x-expires` timer.
async fn wait_until_gone(conn: &Connection, queue: &str, interval: Duration) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        tokio::time::sleep(interval).await;
        if !queue_exists(conn, queue).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} still exists after {BOUND:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unused_queue_expires() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("expires");
    declare(&channel, &queue, &[("x-expires", int(100))]).await;
    publish(&channel, "", &queue, b"lost with the queue").await;
    wait_until_gone(&conn, &queue, Duration::from_millis(250)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_with_a_consumer_does_not_expire_until_the_consumer_goes() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("expires-consumed");
    // Long enough that a loaded machine does not expire it between declare and consume.
    declare(&channel, &queue, &[("x-expires", int(500))]).await;
    let consumer_channel = common::channel(&conn).await;
    let _consumer = consume_with(
        &consumer_channel,
        &queue,
        "keeper",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    // Nothing to wait on: the queue must outlive twice its expiry while consumed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(queue_exists(&conn, &queue).await, "expired while consumed");
    within(
        "basic.cancel",
        consumer_channel.basic_cancel("keeper".into(), Default::default()),
    )
    .await
    .expect("cancel");
    // Looked at less often than its expiry: a passive declare is a use.
    wait_until_gone(&conn, &queue, Duration::from_millis(750)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn use_restarts_the_expiry_timer_but_publishing_does_not() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let args = [("x-expires", int(300))];
    let [redeclared, passive, got, published] = [
        "expires-redeclared",
        "expires-passive",
        "expires-get",
        "expires-published",
    ]
    .map(unique_name);
    for queue in [&redeclared, &passive, &got, &published] {
        declare(&channel, queue, &args).await;
    }
    // Used every 100 ms for 600 ms, twice the expiry.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        declare(&channel, &redeclared, &args).await;
        message_count(&channel, &passive).await;
        get(&channel, &got).await;
        publish(&channel, "", &published, b"not a use").await;
    }
    for queue in [&redeclared, &passive, &got] {
        assert!(
            queue_exists(&conn, queue).await,
            "{queue} expired while in use"
        );
    }
    wait_until_gone(&conn, &published, Duration::from_millis(400)).await;
    wait_until_gone(&conn, &redeclared, Duration::from_millis(400)).await;
}

// ---------------------------------------------------------------------------------------
// Dead-lettering.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_message_is_dead_lettered_with_x_death() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let source_exchange = unique_name("src-x");
    let dlx = unique_name("dlx");
    let key = unique_name("key");
    declare_exchange_with(&channel, &source_exchange, ExchangeKind::Direct, table(&[])).await;
    declare_exchange_with(&channel, &dlx, ExchangeKind::Direct, table(&[])).await;
    let queue = unique_name("expiring");
    let dlq = unique_name("expired");
    declare(
        &channel,
        &queue,
        &[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", text(&dlx)),
        ],
    )
    .await;
    declare_queue(&channel, &dlq).await;
    bind_queue(&channel, &queue, &source_exchange, &key).await;
    // Without a dead-letter routing key, the message keeps its routing key.
    bind_queue(&channel, &dlq, &dlx, &key).await;
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("id-1".into())
        .with_headers(table(&[("app", text("kept"))]));
    publish_with(&channel, &source_exchange, &key, b"too late", properties).await;

    let dead = wait_for_get(&channel, &dlq).await;
    let delivery = &dead.delivery;
    assert_eq!(delivery.data, b"too late");
    assert_eq!(delivery.exchange.as_str(), dlx);
    assert_eq!(delivery.routing_key.as_str(), key);
    let props = &delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|v| v.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        props.message_id().as_ref().map(|v| v.as_str()),
        Some("id-1")
    );
    assert_eq!(header_text(props, "app").as_deref(), Some("kept"));
    let deaths = x_death(props);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    assert_death(&deaths[0], "expired", &queue, &source_exchange, &[&key], 1);
    assert!(!deaths[0].contains_key("original-expiration"), "{deaths:?}");
    assert_first_death(props, "expired", &queue, &source_exchange);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_message_loses_its_expiration_to_original_expiration() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(&channel, "per-message", &[]).await;
    publish_with(&channel, "", &queue, b"brief", expiring("40")).await;
    let dead = wait_for_get(&channel, &dlq).await;
    let props = &dead.delivery.properties;
    assert_eq!(
        props.expiration(),
        &None,
        "expiration must not follow the message"
    );
    let deaths = x_death(props);
    assert_death(&deaths[0], "expired", &queue, "", &[&queue], 1);
    assert_eq!(
        field_text(&deaths[0], "original-expiration").as_deref(),
        Some("40")
    );

    // Rejected rather than expired: the expiration is moved all the same.
    publish_with(&channel, "", &queue, b"rejected", expiring("60000")).await;
    let got = get(&channel, &queue).await.expect("the message");
    reject(&channel, got.delivery.delivery_tag, false).await;
    let dead = wait_for_get(&channel, &dlq).await;
    let props = &dead.delivery.properties;
    assert_eq!(props.expiration(), &None);
    let deaths = x_death(props);
    assert_death(&deaths[0], "rejected", &queue, "", &[&queue], 1);
    assert_eq!(
        field_text(&deaths[0], "original-expiration").as_deref(),
        Some("60000")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_and_nack_without_requeue_dead_letter() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(&channel, "rejecting", &[]).await;
    fill_queue(&channel, &queue, 4).await;
    // reject requeue=false: dead-lettered.
    let first = get(&channel, &queue).await.expect("m000");
    reject(&channel, first.delivery.delivery_tag, false).await;
    // reject requeue=true: back in the queue, not dead-lettered.
    let second = get(&channel, &queue).await.expect("m001");
    reject(&channel, second.delivery.delivery_tag, true).await;
    // nack multiple requeue=false over the next three: all dead-lettered.
    let mut last = 0;
    for _ in 0..3 {
        last = get(&channel, &queue)
            .await
            .expect("a message")
            .delivery
            .delivery_tag;
    }
    within(
        "basic.nack",
        channel.basic_nack(
            last,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .expect("basic.nack");
    wait_for_count(&channel, &dlq, 4).await;
    assert_eq!(message_count(&channel, &queue).await, 0);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let dead = get(&channel, &dlq).await.expect("a dead letter");
        let deaths = x_death(&dead.delivery.properties);
        assert_eq!(deaths.len(), 1);
        assert_death(&deaths[0], "rejected", &queue, "", &[&queue], 1);
        assert_first_death(&dead.delivery.properties, "rejected", &queue, "");
        // A dead-lettered message starts afresh: not flagged redelivered.
        assert!(!dead.delivery.redelivered);
        bodies.push(body(&dead.delivery));
    }
    bodies.sort();
    assert_eq!(bodies, ["m000", "m001", "m002", "m003"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_routing_key_replaces_the_routing_key() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let dlx = unique_name("dlx");
    declare_exchange_with(&channel, &dlx, ExchangeKind::Direct, table(&[])).await;
    let queue = unique_name("rk-source");
    let by_original = unique_name("by-original-key");
    let by_override = unique_name("by-override-key");
    declare(
        &channel,
        &queue,
        &[
            ("x-dead-letter-exchange", text(&dlx)),
            ("x-dead-letter-routing-key", text("override")),
        ],
    )
    .await;
    declare_queue(&channel, &by_original).await;
    declare_queue(&channel, &by_override).await;
    bind_queue(&channel, &by_original, &dlx, &queue).await;
    bind_queue(&channel, &by_override, &dlx, "override").await;
    publish(&channel, "", &queue, b"redirected").await;
    let got = get(&channel, &queue).await.expect("the message");
    reject(&channel, got.delivery.delivery_tag, false).await;
    let dead = wait_for_get(&channel, &by_override).await;
    assert_eq!(dead.delivery.routing_key.as_str(), "override");
    assert_eq!(dead.delivery.exchange.as_str(), dlx);
    // x-death records the routing keys the message had, not the override.
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "rejected",
        &queue,
        "",
        &[&queue],
        1,
    );
    assert_eq!(message_count(&channel, &by_original).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn x_death_routing_keys_include_cc_keys() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(&channel, "cc-source", &[]).await;
    let cc = unique_name("cc-nowhere");
    let headers = table(&[("CC", AMQPValue::FieldArray(vec![text(&cc)].into()))]);
    publish_with(
        &channel,
        "",
        &queue,
        b"copied",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    let got = get(&channel, &queue).await.expect("the message");
    reject(&channel, got.delivery.delivery_tag, false).await;
    let dead = wait_for_get(&channel, &dlq).await;
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "rejected",
        &queue,
        "",
        &[&queue, &cc],
        1,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn x_death_keeps_one_entry_per_queue_and_reason_most_recent_first() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // first (TTL) --expired--> second --rejected--> third.
    let first = unique_name("death-first");
    let second = unique_name("death-second");
    let third = unique_name("death-third");
    declare_queue(&channel, &third).await;
    declare(
        &channel,
        &second,
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&third)),
        ],
    )
    .await;
    declare(
        &channel,
        &first,
        &[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&second)),
        ],
    )
    .await;
    publish(&channel, "", &first, b"travelling").await;
    let got = wait_for_get(&channel, &second).await;
    reject(&channel, got.delivery.delivery_tag, false).await;
    let dead = wait_for_get(&channel, &third).await;
    let props = &dead.delivery.properties;
    let deaths = x_death(props);
    assert_eq!(deaths.len(), 2, "{deaths:?}");
    // The second hop was published by dead-lettering: to the default exchange, with
    // the first queue's dead-letter routing key.
    assert_death(&deaths[0], "rejected", &second, "", &[&second], 1);
    assert_death(&deaths[1], "expired", &first, "", &[&first], 1);
    assert_first_death(props, "expired", &first, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_cycle_is_allowed_and_counts_up() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // A queue dead-lettering into itself.
    let queue = unique_name("self-loop");
    declare(
        &channel,
        &queue,
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&queue)),
        ],
    )
    .await;
    publish(&channel, "", &queue, b"boomerang").await;
    for round in 1..=3 {
        let got = wait_for_get(&channel, &queue).await;
        assert_eq!(got.delivery.data, b"boomerang");
        let deaths = x_death(&got.delivery.properties);
        if round == 1 {
            assert!(deaths.is_empty(), "{deaths:?}");
        } else {
            assert_eq!(deaths.len(), 1, "{deaths:?}");
            assert_death(&deaths[0], "rejected", &queue, "", &[&queue], round - 1);
            assert_first_death(&got.delivery.properties, "rejected", &queue, "");
        }
        reject(&channel, got.delivery.delivery_tag, false).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_cycle_without_rejection_is_dropped() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // A queue with a TTL dead-lettering into itself: the message expires once, and is
    // then dropped instead of going round for ever.
    let queue = unique_name("expiry-loop");
    declare(
        &channel,
        &queue,
        &[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&queue)),
        ],
    )
    .await;
    publish(&channel, "", &queue, b"once round").await;
    wait_for_count(&channel, &queue, 0).await;
    assert_count_stays(&channel, &queue, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_through_two_queues_with_a_rejection_is_allowed() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // work --rejected--> retry (TTL) --expired--> work: a retry loop.
    let work = unique_name("work");
    let retry = unique_name("retry");
    declare(
        &channel,
        &work,
        &[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&retry)),
        ],
    )
    .await;
    declare(
        &channel,
        &retry,
        &[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&work)),
        ],
    )
    .await;
    publish(&channel, "", &work, b"try again").await;
    let got = wait_for_get(&channel, &work).await;
    reject(&channel, got.delivery.delivery_tag, false).await;
    for round in 1..=2 {
        let got = wait_for_get(&channel, &work).await;
        let deaths = x_death(&got.delivery.properties);
        assert_eq!(deaths.len(), 2, "{deaths:?}");
        assert_death(&deaths[0], "expired", &retry, "", &[&retry], round);
        assert_death(&deaths[1], "rejected", &work, "", &[&work], round);
        assert_first_death(&got.delivery.properties, "rejected", &work, "");
        reject(&channel, got.delivery.delivery_tag, false).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_lettering_to_a_missing_exchange_drops_the_message() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("dlx-missing");
    declare(
        &channel,
        &queue,
        &[(
            "x-dead-letter-exchange",
            text(&unique_name("no-such-exchange")),
        )],
    )
    .await;
    publish(&channel, "", &queue, b"into the void").await;
    let got = get(&channel, &queue).await.expect("the message");
    reject(&channel, got.delivery.delivery_tag, false).await;
    // Nothing comes back and the channel stays open.
    assert!(get(&channel, &queue).await.is_none());
    publish(&channel, "", &queue, b"still working").await;
    assert_eq!(message_count(&channel, &queue).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_rejecting_dead_letters_too() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(&channel, "consumer-reject", &[]).await;
    let consumer_channel = common::channel(&conn).await;
    let mut consumer = consume_with(
        &consumer_channel,
        &queue,
        "rejector",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&channel, "", &queue, b"no thanks").await;
    let delivery = next_delivery(&mut consumer).await;
    within(
        "basic.nack",
        delivery.acker.nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        }),
    )
    .await
    .expect("nack");
    let dead = wait_for_get(&channel, &dlq).await;
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "rejected",
        &queue,
        "",
        &[&queue],
        1,
    );
    // And acking dead-letters nothing.
    publish(&channel, "", &queue, b"yes please").await;
    let delivery = next_delivery(&mut consumer).await;
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&channel, &dlq).await, 0);
}

// ---------------------------------------------------------------------------------------
// Length limits.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn max_length_drops_the_oldest() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("max-length");
    declare(&channel, &queue, &[("x-max-length", int(2))]).await;
    for i in 0..5 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    assert_eq!(message_count(&channel, &queue).await, 2);
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_counts_ready_messages_only() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("max-length-unacked");
    declare(&channel, &queue, &[("x-max-length", int(1))]).await;
    publish(&channel, "", &queue, b"taken").await;
    let taken = get(&channel, &queue).await.expect("taken");
    publish(&channel, "", &queue, b"ready").await;
    assert_eq!(message_count(&channel, &queue).await, 1);
    // Requeueing the unacked one brings the queue over its limit: the head goes.
    reject(&channel, taken.delivery.delivery_tag, true).await;
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["ready"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_drop_head_dead_letters_with_reason_maxlen() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) =
        with_dead_letter_queue(&channel, "maxlen", &[("x-max-length", int(1))]).await;
    for i in 0..3 {
        publish(&channel, "", &queue, format!("m{i}").as_bytes()).await;
    }
    wait_for_count(&channel, &dlq, 2).await;
    for expected in ["m0", "m1"] {
        let dead = get(&channel, &dlq).await.expect("a dead letter");
        assert_eq!(body(&dead.delivery), expected);
        assert_death(
            &x_death(&dead.delivery.properties)[0],
            "maxlen",
            &queue,
            "",
            &[&queue],
            1,
        );
        assert_first_death(&dead.delivery.properties, "maxlen", &queue, "");
    }
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["m2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_zero_keeps_nothing() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) =
        with_dead_letter_queue(&channel, "maxlen-zero", &[("x-max-length", int(0))]).await;
    publish(&channel, "", &queue, b"nowhere to go").await;
    let dead = wait_for_get(&channel, &dlq).await;
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "maxlen",
        &queue,
        "",
        &[&queue],
        1,
    );
    assert_eq!(message_count(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_publish_nacks_the_publish_and_keeps_the_queue() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(
        &channel,
        "reject-publish",
        &[
            ("x-max-length", int(2)),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    let mut confirms = Vec::new();
    for i in 0..4 {
        let body = format!("m{i}");
        confirms.push(
            publish_confirmed(
                &channel,
                "",
                &queue,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await,
        );
    }
    assert_eq!(
        confirms,
        [
            Confirmation::Ack(None),
            Confirmation::Ack(None),
            Confirmation::Nack(None),
            Confirmation::Nack(None)
        ]
    );
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["m0", "m1"]);
    // reject-publish does not dead-letter what it refuses.
    assert_eq!(message_count(&channel, &dlq).await, 0);
    // With room again, publishes are accepted.
    let confirm = publish_confirmed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"m4",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(confirm, Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_publish_without_confirms_drops_silently() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("reject-publish-silent");
    declare(
        &channel,
        &queue,
        &[
            ("x-max-length", int(1)),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    publish(&channel, "", &queue, b"kept").await;
    publish(&channel, "", &queue, b"refused").await;
    wait_for_count(&channel, &queue, 1).await;
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_publish_dlx_nacks_and_dead_letters_the_refused_message() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let (queue, dlq) = with_dead_letter_queue(
        &channel,
        "reject-publish-dlx",
        &[
            ("x-max-length", int(1)),
            ("x-overflow", text("reject-publish-dlx")),
        ],
    )
    .await;
    let first = publish_confirmed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"kept",
        BasicProperties::default(),
    )
    .await;
    let second = publish_confirmed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"refused",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        (first, second),
        (Confirmation::Ack(None), Confirmation::Nack(None))
    );
    let dead = wait_for_get(&channel, &dlq).await;
    assert_eq!(dead.delivery.data, b"refused");
    assert_death(
        &x_death(&dead.delivery.properties)[0],
        "maxlen",
        &queue,
        "",
        &[&queue],
        1,
    );
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_bytes_counts_body_bytes() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("max-bytes");
    declare(&channel, &queue, &[("x-max-length-bytes", int(10))]).await;
    // Headers and properties do not count: only the bodies' 4 + 4 bytes.
    let props =
        BasicProperties::default().with_headers(table(&[("padding", text(&"p".repeat(100)))]));
    publish_with(&channel, "", &queue, b"aaaa", props.clone()).await;
    publish_with(&channel, "", &queue, b"bbbb", props).await;
    assert_eq!(message_count(&channel, &queue).await, 2);
    // 12 bytes is over: the oldest goes.
    publish(&channel, "", &queue, b"cccc").await;
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["bbbb", "cccc"]);

    // A body larger than the limit on its own leaves the queue empty.
    publish(&channel, "", &queue, b"much too large").await;
    assert_eq!(message_count(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_bytes_with_reject_publish_nacks() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("max-bytes-reject");
    declare(
        &channel,
        &queue,
        &[
            ("x-max-length-bytes", int(10)),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    let mut confirms = Vec::new();
    for body in ["aaaa", "bbbb", "cccc"] {
        confirms.push(
            publish_confirmed(
                &channel,
                "",
                &queue,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await,
        );
    }
    assert_eq!(
        confirms,
        [
            Confirmation::Ack(None),
            Confirmation::Ack(None),
            Confirmation::Nack(None)
        ]
    );
    let bodies: Vec<String> = drain_bodies(&channel, &queue).await;
    assert_eq!(bodies, ["aaaa", "bbbb"]);
}
