//! Consumers: round-robin among competing consumers, prefetch per consumer and per
//! channel, no-ack, exclusive consumers, consumer tags, cancel (both ways), basic.get,
//! basic.recover.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use futures_lite::StreamExt;
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    BasicRecoverOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

async fn consume(
    channel: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Consumer {
    within(
        "basic.consume",
        channel.basic_consume(queue.into(), tag.into(), options, FieldTable::default()),
    )
    .await
    .expect("basic.consume")
}

async fn qos(channel: &Channel, prefetch: u16, global: bool) {
    within(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions { global }),
    )
    .await
    .expect("basic.qos");
}

async fn ack(channel: &Channel, tag: u64, multiple: bool) {
    within(
        "basic.ack",
        channel.basic_ack(tag, BasicAckOptions { multiple }),
    )
    .await
    .expect("basic.ack");
}

#[tokio::test(flavor = "multi_thread")]
async fn competing_consumers_get_messages_round_robin() {
    let server = TestServer::start().await;
    let (conn, publisher) = open_confirm(&server).await;
    let queue = unique_name("rr");
    declare_queue(&publisher, &queue).await;
    let (ch_a, ch_b) = (channel(&conn).await, channel(&conn).await);
    let mut a = consume(
        &ch_a,
        &queue,
        "a",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let mut b = consume(
        &ch_b,
        &queue,
        "b",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    for i in 0..10 {
        publish(&publisher, "", &queue, format!("m{i}").as_bytes()).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        got_a.push(body(&next_delivery(&mut a).await));
        got_b.push(body(&next_delivery(&mut b).await));
    }
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;
    // Fair share, strictly alternating.
    let evens: Vec<String> = (0..10).step_by(2).map(|i| format!("m{i}")).collect();
    let odds: Vec<String> = (1..10).step_by(2).map(|i| format!("m{i}")).collect();
    assert!(
        (got_a == evens && got_b == odds) || (got_a == odds && got_b == evens),
        "not round-robin: a={got_a:?} b={got_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_bounds_unacked_deliveries_per_consumer() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("prefetch");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 10).await;
    qos(&channel, 3, false).await;
    let mut consumer = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    let mut tags = Vec::new();
    for i in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i:03}"));
        tags.push(d.delivery_tag);
    }
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&channel, &queue).await, 7);
    // One ack frees one slot.
    ack(&channel, tags[0], false).await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(body(&d), "m003");
    assert_no_delivery(&mut consumer).await;
    // A multiple ack frees all three.
    ack(&channel, d.delivery_tag, true).await;
    for i in 4..7 {
        assert_eq!(
            body(&next_delivery(&mut consumer).await),
            format!("m{i:03}")
        );
    }
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&channel, &queue).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn competing_consumers_with_prefetch_share_by_capacity() {
    let server = TestServer::start().await;
    let (conn, publisher) = open_confirm(&server).await;
    let queue = unique_name("shared");
    declare_queue(&publisher, &queue).await;
    // Two consumers with prefetch 2: a busy one that never acks, and one that acks
    // everything. Neither ever holds more than 2 unacked messages; the busy one gets
    // exactly its 2 and the rest goes to the other.
    let busy_ch = channel(&conn).await;
    qos(&busy_ch, 2, false).await;
    let mut busy = consume(&busy_ch, &queue, "busy", BasicConsumeOptions::default()).await;
    let worker_ch = channel(&conn).await;
    qos(&worker_ch, 2, false).await;
    let mut worker = consume(&worker_ch, &queue, "worker", BasicConsumeOptions::default()).await;

    for i in 0..20 {
        publish(&publisher, "", &queue, format!("m{i}").as_bytes()).await;
    }
    let in_flight = Arc::new(Mutex::new((0usize, 0usize))); // (now, max)
    let mut worker_got = 0;
    let mut busy_got = Vec::new();
    busy_got.push(next_delivery(&mut busy).await);
    busy_got.push(next_delivery(&mut busy).await);
    while worker_got < 18 {
        let d = next_delivery(&mut worker).await;
        {
            let mut f = in_flight.lock().expect("lock");
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        worker_got += 1;
        // Ack every other delivery, in pairs, so the worker does sit at its limit.
        if worker_got % 2 == 0 {
            ack(&worker_ch, d.delivery_tag, true).await;
            in_flight.lock().expect("lock").0 = 0;
        }
    }
    assert_no_delivery(&mut busy).await;
    assert_no_delivery(&mut worker).await;
    assert_eq!(busy_got.len(), 2);
    assert!(
        in_flight.lock().expect("lock").1 <= 2,
        "worker held more than prefetch"
    );
    assert_eq!(message_count(&publisher, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_qos_limits_the_whole_channel() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let (q1, q2) = (unique_name("g1"), unique_name("g2"));
    for q in [&q1, &q2] {
        declare_queue(&channel, q).await;
        fill_queue(&channel, q, 5).await;
    }
    let consumer_ch = common::channel(&conn).await;
    qos(&consumer_ch, 3, true).await;
    let c1 = consume(&consumer_ch, &q1, "c1", BasicConsumeOptions::default()).await;
    let c2 = consume(&consumer_ch, &q2, "c2", BasicConsumeOptions::default()).await;
    // Both consumers feed one stream of deliveries for the channel.
    let mut merged = c1.or(c2);
    let mut tags = Vec::new();
    for _ in 0..3 {
        let d = within("delivery", merged.next())
            .await
            .expect("stream")
            .expect("delivery");
        tags.push(d.delivery_tag);
    }
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, merged.next()).await {
        panic!("4th delivery despite a channel prefetch of 3: {extra:?}");
    }
    assert_eq!(
        message_count(&channel, &q1).await + message_count(&channel, &q2).await,
        7
    );
    ack(&consumer_ch, tags[1], false).await;
    within("delivery", merged.next())
        .await
        .expect("stream")
        .expect("one more after an ack");
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, merged.next()).await {
        panic!("delivery beyond the channel prefetch: {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_consumer_and_global_prefetch_combine() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let (q1, q2, q3) = (unique_name("c1"), unique_name("c2"), unique_name("c3"));
    for q in [&q1, &q2, &q3] {
        declare_queue(&channel, q).await;
        fill_queue(&channel, q, 4).await;
    }
    let consumer_ch = common::channel(&conn).await;
    // Each consumer may hold 1, the channel 2 in all (set in the order RabbitMQ's
    // documentation shows).
    qos(&consumer_ch, 1, false).await;
    qos(&consumer_ch, 2, true).await;
    let mut consumers = Vec::new();
    for q in [&q1, &q2, &q3] {
        consumers.push(consume(&consumer_ch, q, "", BasicConsumeOptions::default()).await);
    }
    let total = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, mut consumer) in consumers.into_iter().enumerate() {
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_)) = consumer.next().await {
                total.lock().expect("lock").push(i);
            }
        }));
    }
    assert!(
        wait_for(BOUND, || async { total.lock().expect("lock").len() >= 2 }).await,
        "no deliveries"
    );
    tokio::time::sleep(QUIET).await;
    let got = total.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "channel limit 2: {got:?}");
    assert_ne!(got[0], got[1], "consumer limit 1: {got:?}");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_ack_consumers_remove_messages_on_delivery() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("noack");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 3).await;
    let consumer_ch = common::channel(&conn).await;
    // Prefetch does not apply to no-ack consumers.
    qos(&consumer_ch, 1, false).await;
    let mut consumer = consume(
        &consumer_ch,
        &queue,
        "",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    for i in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i:03}"));
        assert!(!d.redelivered);
    }
    within("close", consumer_ch.close(200, "OK".into()))
        .await
        .expect("close");
    // Nothing comes back: they were settled on delivery.
    assert_eq!(message_count(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_consumer_excludes_others() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("excl-consumer");
    declare_queue(&channel, &queue).await;
    let _first = consume(
        &channel,
        &queue,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let other = common::channel(&conn).await;
    let result = within(
        "basic.consume",
        other.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        &format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_consume_on_a_queue_with_consumers_is_refused() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("busy");
    declare_queue(&channel, &queue).await;
    let _first = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    let other = common::channel(&conn).await;
    let result = within(
        "basic.consume",
        other.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        &format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_generates_consumer_tags() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("tags");
    declare_queue(&channel, &queue).await;
    let a = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    let b = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    let c = consume(&channel, &queue, "chosen", BasicConsumeOptions::default()).await;
    assert!(a.tag().as_str().starts_with("amq.ctag-"), "{}", a.tag());
    // RabbitMQ: "amq.ctag-" and 22 characters of URL-safe base64.
    assert_eq!(
        a.tag().as_str().len(),
        "amq.ctag-".len() + 22,
        "{}",
        a.tag()
    );
    assert_ne!(a.tag(), b.tag());
    assert_eq!(c.tag().as_str(), "chosen");
}

#[tokio::test(flavor = "multi_thread")]
async fn reusing_a_consumer_tag_on_a_channel_is_a_connection_error() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("dup-tag");
    declare_queue(&channel, &queue).await;
    let _first = consume(&channel, &queue, "same", BasicConsumeOptions::default()).await;
    let result = within(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "same".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 'same'",
    );
    assert!(
        wait_for(BOUND, || async { !conn.status().connected() }).await,
        "530 closes the connection"
    );
    // The same tag on another channel is fine.
    let (conn, _) = open(&server).await;
    let (c1, c2) = (common::channel(&conn).await, common::channel(&conn).await);
    let _a = consume(&c1, &queue, "same", BasicConsumeOptions::default()).await;
    let _b = consume(&c2, &queue, "same", BasicConsumeOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consuming_from_a_missing_queue_is_404() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("missing");
    let result = within(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{queue}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_deliveries() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("cancel");
    declare_queue(&channel, &queue).await;
    let consumer_ch = common::channel(&conn).await;
    let mut consumer = consume(&consumer_ch, &queue, "", BasicConsumeOptions::default()).await;
    publish(&channel, "", &queue, b"before").await;
    let d = next_delivery(&mut consumer).await;
    within(
        "basic.cancel",
        consumer_ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let end = within("stream end", consumer.next()).await;
    assert!(end.is_none(), "stream ends after cancel: {end:?}");
    // New messages stay in the queue; the unacked one is still ackable.
    publish(&channel, "", &queue, b"after").await;
    wait_for_count(&channel, &queue, 1).await;
    ack(&consumer_ch, d.delivery_tag, false).await;
    // Cancelling an unknown tag is not an error.
    within(
        "basic.cancel",
        consumer_ch.basic_cancel("no-such-tag".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel of an unknown tag");
    within("qos", consumer_ch.basic_qos(0, Default::default()))
        .await
        .expect("the channel is still open");
    assert_eq!(message_count(&channel, &queue).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_queue_cancels_its_consumers() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("doomed");
    declare_queue(&channel, &queue).await;
    let consumer_ch = common::channel(&conn).await;
    let mut consumer = consume(&consumer_ch, &queue, "", BasicConsumeOptions::default()).await;
    let mut second = consume(&consumer_ch, &queue, "", BasicConsumeOptions::default()).await;
    within(
        "queue.delete",
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    // The broker sends basic.cancel for each: both streams end.
    assert!(within("cancel", consumer.next()).await.is_none());
    assert!(within("cancel", second.next()).await.is_none());
    // The channel stays open.
    within("qos", consumer_ch.basic_qos(0, Default::default()))
        .await
        .expect("the channel is still open");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_get_returns_messages_with_the_remaining_count() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("get");
    declare_queue(&channel, &queue).await;
    assert!(
        get(&channel, &queue).await.is_none(),
        "get-empty on an empty queue"
    );
    fill_queue(&channel, &queue, 3).await;
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let message = get(&channel, &queue).await.expect("get-ok");
        assert_eq!(message.message_count, remaining);
        assert_eq!(body(&message.delivery), format!("m{i:03}"));
        assert!(!message.delivery.redelivered);
        assert_eq!(message.delivery.delivery_tag, i as u64 + 1);
        assert_eq!(message.delivery.routing_key.as_str(), queue);
        assert_eq!(message.delivery.exchange.as_str(), "");
    }
    assert!(get(&channel, &queue).await.is_none());
    ack(&channel, 3, true).await;
    let missing = unique_name("missing");
    let result = within(
        "basic.get",
        channel.basic_get(missing.as_str().into(), BasicGetOptions::default()),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_recover_redelivers_unacked_messages() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("recover");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 3).await;
    let mut consumer = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    for i in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!((body(&d), d.redelivered), (format!("m{i:03}"), false));
    }
    within(
        "basic.recover",
        channel.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("recover");
    let mut again = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        again.push((body(&d), d.redelivered));
        ack(&channel, d.delivery_tag, false).await;
    }
    assert_eq!(
        again,
        vec![
            ("m000".to_string(), true),
            ("m001".to_string(), true),
            ("m002".to_string(), true)
        ]
    );
    assert_no_delivery(&mut consumer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_recover_without_requeue() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("recover-noq");
    declare_queue(&channel, &queue).await;
    fill_queue(&channel, &queue, 2).await;
    let mut consumer = consume(&channel, &queue, "", BasicConsumeOptions::default()).await;
    for _ in 0..2 {
        next_delivery(&mut consumer).await;
    }
    let result = within(
        "basic.recover",
        channel.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    assert_amqp_error(result, 540, "NOT_IMPLEMENTED - requeue=false");
}
