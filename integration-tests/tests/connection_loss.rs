//! When a channel or connection goes — closed cleanly, dropped, or killed mid-delivery —
//! its unacked messages go back to their queues in their original order, flagged
//! redelivered, and its exclusive and auto-delete resources are cleaned up.

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic};
use common::*;
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

fn expected(items: &[(&str, bool)]) -> Vec<(String, bool)> {
    items.iter().map(|(b, r)| (b.to_string(), *r)).collect()
}

async fn consume_n(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    n: usize,
) -> (Consumer, Vec<u64>) {
    within(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let mut consumer = within(
        "basic.consume",
        channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let mut tags = Vec::new();
    for i in 0..n {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i:03}"));
        tags.push(d.delivery_tag);
    }
    (consumer, tags)
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_channel_requeues_its_unacked_messages_in_order() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("ch-close");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 5).await;
    let worker = common::channel(&conn).await;
    let (mut consumer, tags) = consume_n(&worker, &queue, 3, 3).await;
    // Ack the middle one; m000 and m002 stay unacked, and the freed slot brings m003.
    within(
        "ack",
        worker.basic_ack(tags[1], lapin::options::BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    assert_eq!(body(&next_delivery(&mut consumer).await), "m003");
    within("close", worker.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&observer, &queue, 4).await;
    assert_eq!(
        drain(&observer, &queue).await,
        expected(&[
            ("m000", true),
            ("m002", true),
            ("m003", true),
            ("m004", false)
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_connection_requeues_unacked_messages_of_all_its_channels() {
    let server = TestServer::start().await;
    let (_observer_conn, observer) = open(&server).await;
    let (q1, q2) = (unique_name("conn-close-1"), unique_name("conn-close-2"));
    for q in [&q1, &q2] {
        declare_queue(&observer, q).await;
        fill_queue(&observer, q, 3).await;
    }
    let worker_conn = within("connect", server.connect()).await;
    let (a, b) = (
        common::channel(&worker_conn).await,
        common::channel(&worker_conn).await,
    );
    let _c1 = consume_n(&a, &q1, 10, 3).await;
    let _c2 = consume_n(&b, &q2, 2, 2).await;
    within("close", worker_conn.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&observer, &q1, 3).await;
    wait_for_count(&observer, &q2, 3).await;
    assert_eq!(
        drain(&observer, &q1).await,
        expected(&[("m000", true), ("m001", true), ("m002", true)])
    );
    assert_eq!(
        drain(&observer, &q2).await,
        expected(&[("m000", true), ("m001", true), ("m002", false)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_client_socket_requeues_messages_mid_delivery() {
    let server = TestServer::start().await;
    let (_observer_conn, observer) = open(&server).await;
    let queue = unique_name("killed");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 10).await;

    let proxy = KillableProxy::start(server.addr()).await;
    let victim = within(
        "connect through the proxy",
        Connection::connect(&proxy.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect through the proxy");
    let channel = common::channel(&victim).await;
    // Prefetch 4: four deliveries in flight when the socket dies.
    let (_consumer, _tags) = consume_n(&channel, &queue, 4, 4).await;
    proxy.kill().await;

    wait_for_count(&observer, &queue, 10).await;
    let mut want: Vec<(String, bool)> = (0..4).map(|i| (format!("m{i:03}"), true)).collect();
    want.extend((4..10).map(|i| (format!("m{i:03}"), false)));
    assert_eq!(drain(&observer, &queue).await, want);
    drop(victim);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_raw_socket_requeues_its_deliveries() {
    let server = TestServer::start().await;
    let (_observer_conn, observer) = open(&server).await;
    let queue = unique_name("rst");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 3).await;

    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.as_str().into(),
            consumer_tag: "raw".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    // consume-ok, then three deliveries (method, header, body each).
    let mut delivered = 0;
    while delivered < 3 {
        if let AMQPFrame::Body(_, _) = raw.frame().await {
            delivered += 1;
        }
    }
    // An abortive close: RST instead of FIN, nothing more said.
    #[allow(deprecated)]
    raw.stream
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("linger 0");
    drop(raw);

    wait_for_count(&observer, &queue, 3).await;
    assert_eq!(
        drain(&observer, &queue).await,
        expected(&[("m000", true), ("m001", true), ("m002", true)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_loses_its_exclusive_and_auto_delete_queues() {
    let server = TestServer::start().await;
    let (observer, observer_ch) = open(&server).await;
    let proxy = KillableProxy::start(server.addr()).await;
    let victim = within(
        "connect through the proxy",
        Connection::connect(&proxy.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect through the proxy");
    let channel = common::channel(&victim).await;
    let exclusive = unique_name("excl");
    within(
        "declare",
        channel.queue_declare(
            exclusive.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare exclusive");
    let auto = unique_name("auto");
    within(
        "declare",
        observer_ch.queue_declare(
            auto.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare auto-delete");
    let _consumer = within(
        "consume",
        channel.basic_consume(
            auto.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    assert!(queue_exists(&observer, &exclusive).await);
    assert!(queue_exists(&observer, &auto).await);
    proxy.kill().await;
    let gone = wait_for(BOUND, || async {
        !queue_exists(&observer, &exclusive).await && !queue_exists(&observer, &auto).await
    })
    .await;
    assert!(
        gone,
        "exclusive or auto-delete queue survived a killed connection"
    );
    drop(victim);
}

#[tokio::test(flavor = "multi_thread")]
async fn requeue_on_close_keeps_order_across_several_channels() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("interleaved");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 6).await;
    // Two channels take alternate messages with basic.get, then both close: the
    // queue is back to its original order.
    let (a, b) = (common::channel(&conn).await, common::channel(&conn).await);
    for i in 0..6 {
        let channel = if i % 2 == 0 { &a } else { &b };
        let got = get(channel, &queue).await.expect("message");
        assert_eq!(body(&got.delivery), format!("m{i:03}"));
    }
    within("close b", b.close(200, "OK".into()))
        .await
        .expect("close");
    within("close a", a.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&observer, &queue, 6).await;
    let want: Vec<(String, bool)> = (0..6).map(|i| (format!("m{i:03}"), true)).collect();
    assert_eq!(drain(&observer, &queue).await, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn requeued_messages_go_to_another_waiting_consumer() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("handover");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 2).await;
    let first = common::channel(&conn).await;
    let (_c1, _) = consume_n(&first, &queue, 10, 2).await;
    let second = common::channel(&conn).await;
    let mut c2 = within(
        "consume",
        second.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    assert_no_delivery(&mut c2).await;
    within("close", first.close(200, "OK".into()))
        .await
        .expect("close");
    for i in 0..2 {
        let d = next_delivery(&mut c2).await;
        assert_eq!((body(&d), d.redelivered), (format!("m{i:03}"), true));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_shutdown_closes_clients_with_320_connection_forced() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        // Stopping is only possible for the in-process broker. (Observed on RabbitMQ 3.10
        // with a throwaway node: this close, then the socket closed without waiting.)
        return;
    }
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    let stopping = tokio::spawn(server.stop());
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            0,
            0
        )
    );
    within("broker stop", stopping).await.expect("stop task");
}
