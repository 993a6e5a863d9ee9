//! Durability: definitions and persistent messages survive a clean restart and a
//! `kill -9`; a torn or scribbled log tail is cut off at start-up; fully acked segments
//! are deleted; a data directory is never shared or mistaken.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use integration_tests::{TestServer, WarrenProcess, temp_data_dir, unique_name, wait_for};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare_durable(channel: &Channel, queue: &str) {
    within(
        "durable queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare a durable queue");
}

/// Publishes with confirms on, waiting for each confirm; panics on a nack.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = within("basic.publish", async {
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await
    })
    .await
    .expect("publish");
    assert!(
        matches!(confirm, Confirmation::Ack(_)),
        "confirmed: {confirm:?}"
    );
}

fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for queue_dir in std::fs::read_dir(data_dir.join("queues"))
        .expect("queues dir")
        .flatten()
    {
        for file in std::fs::read_dir(queue_dir.path())
            .expect("queue dir")
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "seg") {
                files.push(file.path());
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_and_persistent_messages_survive_a_clean_restart() {
    let dir = temp_data_dir("restart");
    let server = TestServer::start_in(&dir).await;
    let durable_q = unique_name("durable");
    let transient_q = unique_name("transient");
    let exchange = unique_name("durable-ex");
    {
        let (conn, channel) = open_confirm(&server).await;
        declare_durable(&channel, &durable_q).await;
        declare_queue(&channel, &transient_q).await;
        within(
            "exchange.declare",
            channel.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare a durable exchange");
        within(
            "queue.bind",
            channel.queue_bind(
                durable_q.as_str().into(),
                exchange.as_str().into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bind");
        for body in ["p0", "p1", "p2", "p3"] {
            let props = persistent().with_headers({
                let mut h = FieldTable::default();
                h.insert(
                    "x-tag".into(),
                    lapin::types::AMQPValue::LongString(body.into()),
                );
                h
            });
            publish_confirmed(&channel, &exchange, "k", body.as_bytes(), props).await;
        }
        publish_confirmed(&channel, "", &durable_q, b"t0", BasicProperties::default()).await;
        publish_confirmed(&channel, "", &transient_q, b"x", persistent()).await;
        // p0 is acked, p1 delivered and left unacked: after the restart p0 is gone and p1
        // comes back flagged redelivered.
        let worker = common::channel(&conn).await;
        let first = get(&worker, &durable_q).await.expect("p0");
        within("ack", first.delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack p0");
        let _unacked = get(&worker, &durable_q).await.expect("p1");
        server.stop().await;
    }
    let server = TestServer::start_in(&dir).await;
    let (conn, channel) = open(&server).await;
    assert!(
        !queue_exists(&conn, &transient_q).await,
        "non-durable queues do not survive"
    );
    let got = drain(&channel, &durable_q).await;
    assert_eq!(
        got,
        vec![
            ("p1".to_owned(), true),
            ("p2".to_owned(), false),
            ("p3".to_owned(), false),
        ],
        "persistent messages come back in order, transient ones and acked ones do not"
    );
    // Properties and headers survive, and the durable binding still routes.
    publish_with(&channel, &exchange, "k", b"after", persistent()).await;
    wait_for_count(&channel, &durable_q, 1).await;
    let after = get(&channel, &durable_q)
        .await
        .expect("routed after restart");
    assert_eq!(after.delivery.data, b"after");
    assert_eq!(after.delivery.properties.delivery_mode(), &Some(2));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_to_exchange_bindings_survive_a_restart() {
    let dir = temp_data_dir("e2e");
    let server = TestServer::start_in(&dir).await;
    let front = unique_name("front");
    let back = unique_name("back");
    let queue = unique_name("e2e-durable");
    let (_conn, channel) = open(&server).await;
    for name in [&front, &back] {
        within(
            "exchange.declare",
            channel.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare a durable exchange");
    }
    declare_durable(&channel, &queue).await;
    within(
        "queue.bind",
        channel.queue_bind(
            queue.as_str().into(),
            back.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    within(
        "exchange.bind",
        channel.exchange_bind(
            back.as_str().into(),
            front.as_str().into(),
            "".into(),
            lapin::options::ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    publish(&channel, &front, "", b"through").await;
    wait_for_count(&channel, &queue, 1).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_and_properties_survive_a_restart() {
    let dir = temp_data_dir("props");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("props");
    let (_conn, channel) = open_confirm(&server).await;
    declare_durable(&channel, &queue).await;
    let mut headers = FieldTable::default();
    headers.insert("x-n".into(), lapin::types::AMQPValue::LongLongInt(42));
    let props = persistent()
        .with_headers(headers.clone())
        .with_content_type("text/plain".into())
        .with_correlation_id("c-1".into())
        .with_priority(3);
    publish_confirmed(&channel, "", &queue, b"body", props).await;
    server.stop().await;
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    let got = get(&channel, &queue).await.expect("the message");
    let p = &got.delivery.properties;
    assert_eq!(p.headers(), &Some(headers));
    assert_eq!(p.content_type(), &Some("text/plain".into()));
    assert_eq!(p.correlation_id(), &Some("c-1".into()));
    assert_eq!(p.priority(), &Some(3));
    assert_eq!(got.delivery.routing_key.as_str(), queue);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Producers publish persistent messages with confirms while the broker is killed with
/// SIGKILL, several times; every confirmed message must be there afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn confirmed_messages_survive_kill_9() {
    let dir = temp_data_dir("crash");
    let queue = "crash-queue";
    let confirmed: Arc<Mutex<HashSet<String>>> = Arc::default();
    for round in 0..3 {
        let broker = WarrenProcess::start(&dir).await;
        let uri = broker.uri();
        let mut producers = Vec::new();
        for producer in 0..3 {
            let uri = uri.clone();
            let confirmed = confirmed.clone();
            producers.push(tokio::spawn(async move {
                let Ok(conn) = common::connect_uri(&uri).await else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                if channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .is_err()
                {
                    return;
                }
                declare_durable(&channel, queue).await;
                for batch in 0.. {
                    let mut pending = Vec::new();
                    for i in 0..20 {
                        let body = format!("r{round}-p{producer}-{batch}-{i}");
                        let Ok(confirm) = channel
                            .basic_publish(
                                "".into(),
                                queue.into(),
                                BasicPublishOptions::default(),
                                body.as_bytes(),
                                persistent(),
                            )
                            .await
                        else {
                            return;
                        };
                        pending.push((body, confirm));
                    }
                    for (body, confirm) in pending {
                        match confirm.await {
                            Ok(Confirmation::Ack(_)) => {
                                confirmed.lock().expect("lock").insert(body);
                            }
                            _ => return,
                        }
                    }
                }
            }));
        }
        // Let the producers get going, then pull the plug mid-stream.
        let before = confirmed.lock().expect("lock").len();
        let started = wait_for(Duration::from_secs(10), || {
            let confirmed = confirmed.clone();
            async move { confirmed.lock().expect("lock").len() >= before + 200 }
        })
        .await;
        assert!(started, "round {round}: producers got no confirms");
        broker.kill();
        for producer in producers {
            let _ = tokio::time::timeout(Duration::from_secs(10), producer).await;
        }
    }
    let broker = WarrenProcess::start(&dir).await;
    let conn = common::connect_uri(&broker.uri())
        .await
        .expect("connect after the crashes");
    let channel = common::channel(&conn).await;
    let mut found = HashSet::new();
    while let Some(message) = get(&channel, queue).await {
        found.insert(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    let confirmed = confirmed.lock().expect("lock").clone();
    let lost: Vec<&String> = confirmed.difference(&found).collect();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed messages were lost, e.g. {:?}",
        lost.len(),
        confirmed.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    drop(conn);
    broker.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes that fail (here: a file-size limit, as a full disk would make them fail) give
/// the publisher a clear error or a nack, never a confirm for what was not written, and
/// leave a store that starts and holds every confirmed message.
#[tokio::test(flavor = "multi_thread")]
async fn failing_writes_are_never_confirmed_and_corrupt_nothing() {
    let dir = temp_data_dir("efbig");
    let queue = "efbig-queue";
    let broker = WarrenProcess::start_limited(&dir, Some(1024)).await;
    let conn = common::connect_uri(&broker.uri()).await.expect("connect");
    let channel = common::channel(&conn).await;
    within(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    declare_durable(&channel, queue).await;
    let body = vec![b'x'; 1024];
    let mut confirmed = Vec::new();
    let mut refused = None;
    // 1 KiB messages into a log whose files may not grow past 1 MiB: the writes fail
    // well before 4,000 messages.
    for i in 0..4000u32 {
        let mut payload = i.to_be_bytes().to_vec();
        payload.extend_from_slice(&body);
        let result = within("publish", async {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    persistent(),
                )
                .await?
                .await
        })
        .await;
        match result {
            Ok(Confirmation::Ack(_)) => confirmed.push(i),
            other => {
                refused = Some(format!("{other:?}"));
                break;
            }
        }
    }
    let refused = refused.expect("a write failed and the publisher heard of it");
    assert!(
        refused.contains("506") || refused.contains("RESOURCE_ERROR") || refused.contains("Nack"),
        "a clear error: {refused}"
    );
    assert!(
        !confirmed.is_empty(),
        "messages were confirmed before the limit"
    );
    drop(conn);
    broker.kill();

    let broker = WarrenProcess::start(&dir).await;
    let conn = common::connect_uri(&broker.uri())
        .await
        .expect("connect after the failure");
    let channel = common::channel(&conn).await;
    let mut found = HashSet::new();
    while let Some(message) = get(&channel, queue).await {
        let id = message
            .delivery
            .data
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        found.insert(id.expect("a 4-byte id"));
    }
    let lost: Vec<u32> = confirmed
        .iter()
        .copied()
        .filter(|i| !found.contains(i))
        .collect();
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    drop(conn);
    broker.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_and_scribbled_log_tail_is_cut_off_at_start() {
    let dir = temp_data_dir("torn");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("torn");
    let (_conn, channel) = open_confirm(&server).await;
    declare_durable(&channel, &queue).await;
    for i in 0..10 {
        publish_confirmed(
            &channel,
            "",
            &queue,
            format!("m{i}").as_bytes(),
            persistent(),
        )
        .await;
    }
    server.stop().await;
    let segment = segment_files(&dir).pop().expect("a segment file");
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    // Cut the last record in half and scribble over what is left of it.
    let cut = bytes.len() - 20;
    bytes.truncate(cut);
    for b in bytes.iter_mut().rev().take(10) {
        *b = 0xAB;
    }
    std::fs::write(&segment, &bytes).expect("damage the segment");
    let server = TestServer::start_in(&dir).await;
    let (_conn, channel) = open(&server).await;
    let got: Vec<String> = drain_bodies(&channel, &queue).await;
    let expected: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    assert_eq!(
        got, expected,
        "the valid prefix survives, the damaged record is dropped"
    );
    // The broker keeps working on the repaired log.
    publish(&channel, "", &queue, b"again").await;
    wait_for_count(&channel, &queue, 1).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_are_deleted_once_their_messages_are_acked() {
    let dir = temp_data_dir("segments");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("segments");
    let (_conn, channel) = open(&server).await;
    declare_durable(&channel, &queue).await;
    let body = vec![7u8; 64 * 1024];
    for _ in 0..400 {
        publish_with(&channel, "", &queue, &body, persistent()).await;
    }
    wait_for_count(&channel, &queue, 400).await;
    let before = segment_files(&dir).len();
    assert!(
        before >= 3,
        "25 MiB spans several 8 MiB segments, found {before}"
    );
    while let Some(message) = get(&channel, &queue).await {
        within(
            "ack",
            message.delivery.acker.ack(BasicAckOptions::default()),
        )
        .await
        .expect("ack");
    }
    let data_dir = dir.clone();
    let shrunk = wait_for(Duration::from_secs(5), || {
        let data_dir = data_dir.clone();
        async move { segment_files(&data_dir).len() <= 1 }
    })
    .await;
    assert!(
        shrunk,
        "acked segments are deleted: {:?}",
        segment_files(&dir)
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_is_never_shared_or_mistaken() {
    let dir = temp_data_dir("locked");
    let server = TestServer::start_in(&dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = warren::Config {
        data_dir: dir.clone(),
        ..warren::Config::default()
    };
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        warren::server::run(listener, Arc::new(config), std::future::pending()),
    )
    .await
    .expect("refused at once");
    let error = second.expect_err("a second broker on the same directory");
    assert!(error.to_string().contains("another Warren"), "{error}");
    server.stop().await;

    let foreign = temp_data_dir("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), b"not ours").expect("write");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = warren::Config {
        data_dir: foreign.clone(),
        ..warren::Config::default()
    };
    let error = warren::server::run(listener, Arc::new(config), std::future::pending())
        .await
        .expect_err("a directory that is not Warren's");
    assert!(
        error.to_string().contains("not a Warren data directory"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&foreign);
}
