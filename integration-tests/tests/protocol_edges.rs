//! Protocol edges of issue 12 (reliability): transactions that answer only once their
//! messages are durable and give held acks back when they fail, confirms that die with
//! their channel, closes that cross, `channel_max`, unbinding from exchanges that
//! auto-delete took away, and a client that writes without reading.
//!
//! Each test runs against RabbitMQ too (`WARREN_TEST_EXTERNAL_URI`), except those that
//! kill or measure the broker's process.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{
    AMQPClass, basic, channel as ch, confirm, connection, exchange as ex, queue as q, tx,
};
use common::*;
use integration_tests::{TestServer, WarrenProcess, temp_data_dir, unique_name, wait_for};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::io::AsyncWriteExt;

const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;

fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    Raw::encode(&AMQPFrame::Method(channel, class))
}

/// `basic.publish` of `body` on `channel`, persistent (delivery-mode 2) if asked: the
/// method, header and body frames.
fn publish_frames(
    channel: u16,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    persistent: bool,
) -> Vec<u8> {
    let mut bytes = method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    if persistent {
        header.extend_from_slice(&0x1000u16.to_be_bytes());
        header.push(2);
    } else {
        header.extend_from_slice(&0u16.to_be_bytes());
    }
    bytes.extend(raw_frame(FRAME_HEADER, channel, &header));
    if !body.is_empty() {
        bytes.extend(raw_frame(FRAME_BODY, channel, body));
    }
    bytes
}

fn declare(name: &str, durable: bool, passive: bool) -> AMQPClass {
    AMQPClass::Queue(q::AMQPMethod::Declare(q::Declare {
        queue: name.into(),
        passive,
        durable,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn channel_close() -> AMQPClass {
    AMQPClass::Channel(ch::AMQPMethod::Close(ch::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn channel_open() -> AMQPClass {
    AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {}))
}

fn passive_exchange(name: &str) -> AMQPClass {
    AMQPClass::Exchange(ex::AMQPMethod::Declare(ex::Declare {
        exchange: name.into(),
        kind: "direct".into(),
        passive: true,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

async fn expect_method(raw: &mut Raw, what: &str, check: impl Fn(u16, &AMQPClass) -> bool) {
    let (channel, class) = raw.method().await;
    assert!(
        check(channel, &class),
        "expected {what}, got {class:?} on channel {channel}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. tx.commit-ok only once the transaction's persistent messages are on disk.
// ---------------------------------------------------------------------------------------

/// A transaction's persistent messages survive a `kill -9` that follows `commit-ok` at
/// once, while another publisher keeps the group commit busy (so a commit-ok sent ahead
/// of the fsync finds the messages still in the log's write buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_ok_means_the_messages_are_on_disk() {
    let dir = temp_data_dir("tx-durable");
    let broker = WarrenProcess::start(&dir).await;
    let uri = broker.uri();
    let queue = unique_name("tx-durable");
    let load_queue = unique_name("tx-load");
    const N: u32 = 20;
    let conn = connect_uri(&uri).await.expect("connect");
    let channel = common::channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for name in [&queue, &load_queue] {
        within(
            "declare",
            channel.queue_declare(name.as_str().into(), durable, FieldTable::default()),
        )
        .await
        .expect("declare a durable queue");
    }
    // The load, on a connection of its own: large persistent messages as fast as the
    // broker takes them.
    let load_conn = connect_uri(&uri).await.expect("connect");
    let loader = common::channel(&load_conn).await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = tokio::spawn({
        let sent = sent.clone();
        let load_queue = load_queue.clone();
        async move {
            let body = vec![b'l'; 256 * 1024];
            loop {
                let published = loader
                    .basic_publish(
                        "".into(),
                        load_queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                if published.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let loading = wait_for(Duration::from_secs(10), || {
        let sent = sent.clone();
        async move { sent.load(std::sync::atomic::Ordering::Relaxed) >= 200 }
    })
    .await;
    assert!(loading, "the load publisher got going");
    let txc = common::channel(&conn).await;
    within("tx.select", txc.tx_select())
        .await
        .expect("tx.select");
    for i in 0..N {
        within(
            "publish",
            txc.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("t{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("publish in the transaction");
    }
    // The commit waits for an fsync behind the load's: a longer bound than BOUND.
    tokio::time::timeout(Duration::from_secs(60), txc.tx_commit())
        .await
        .expect("tx.commit within 60 s")
        .expect("tx.commit");
    broker.kill();
    load.abort();
    drop((conn, load_conn));
    let broker = WarrenProcess::start(&dir).await;
    let conn = connect_uri(&broker.uri()).await.expect("reconnect");
    let channel = common::channel(&conn).await;
    assert_eq!(
        message_count(&channel, &queue).await,
        N,
        "every message of a committed transaction survives a crash"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// 2. A transaction that fails gives its held acks back.
// ---------------------------------------------------------------------------------------

/// An ack held by a transaction that then fails (a publish to a missing exchange) is
/// dropped with the transaction: the delivery goes back to its queue, redelivered, when
/// the channel closes. RabbitMQ refuses the publish itself, with 404 naming
/// `basic.publish`.
#[tokio::test(flavor = "multi_thread")]
async fn acks_held_by_a_failed_transaction_go_back_to_the_queue() {
    let server = TestServer::start().await;
    let (conn, setup) = open_confirm(&server).await;
    let queue = unique_name("tx-acks");
    declare_queue(&setup, &queue).await;
    publish(&setup, "", &queue, b"held").await;
    let missing = unique_name("tx-missing");
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
        .await;
    expect_method(&mut raw, "tx.select-ok", |c, m| {
        c == 1 && matches!(m, AMQPClass::Tx(tx::AMQPMethod::SelectOk(_)))
    })
    .await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: queue.as_str().into(),
            no_ack: false,
        })),
    )
    .await;
    let tag = match raw.method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => ok.delivery_tag,
        other => panic!("expected basic.get-ok, got {other:?}"),
    };
    let mut bytes = method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: false,
        })),
    );
    bytes.extend(publish_frames(1, &missing, "k", b"nowhere", false));
    bytes.extend(method(
        1,
        AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
    ));
    raw.send(&bytes).await;
    let (code, text, class, method_id) = raw.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str(), class, method_id),
        (
            404,
            format!("NOT_FOUND - no exchange '{missing}' in vhost '/'").as_str(),
            60,
            40
        ),
        "RabbitMQ refuses the publish to a missing exchange"
    );
    let back = wait_for_get(&setup, &queue).await;
    assert_eq!(back.delivery.data, b"held");
    assert!(
        back.delivery.redelivered,
        "the message comes back redelivered"
    );
    let _ = conn.close(200, "OK".into()).await;
}

/// A transaction's publishes are routed when they are published, as RabbitMQ does: one
/// whose exchange is deleted before the commit still reaches the queues it was routed
/// to, and the commit succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_commits_although_an_exchange_it_published_to_went() {
    let server = TestServer::start().await;
    let (conn, setup) = open(&server).await;
    let queue = unique_name("tx-gone");
    let exchange = unique_name("tx-gone-x");
    declare_queue(&setup, &queue).await;
    declare_exchange_with(
        &setup,
        &exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    bind_queue(&setup, &queue, &exchange, "").await;
    let txc = common::channel(&conn).await;
    within("tx.select", txc.tx_select())
        .await
        .expect("tx.select");
    for (x, body) in [(exchange.as_str(), "via-x"), ("", "direct")] {
        within(
            "publish",
            txc.basic_publish(
                x.into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish in the transaction");
    }
    within(
        "exchange.delete",
        setup.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete the exchange");
    within("tx.commit", txc.tx_commit())
        .await
        .expect("the commit succeeds");
    assert_eq!(drain_bodies(&setup, &queue).await, vec!["via-x", "direct"]);
}

// ---------------------------------------------------------------------------------------
// 3. Confirms die with their channel.
// ---------------------------------------------------------------------------------------

/// Confirms still waiting for a group commit when their channel closes are not sent to
/// the channel opened next under the same number: its first confirm is for its own
/// first publish.
#[tokio::test(flavor = "multi_thread")]
async fn pending_confirms_of_a_closed_channel_never_reach_its_successor() {
    let server = TestServer::start().await;
    let queue = unique_name("confirm-reuse");
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(1, declare(&queue, true, false)).await;
    expect_method(&mut raw, "queue.declare-ok", |_, m| {
        matches!(m, AMQPClass::Queue(q::AMQPMethod::DeclareOk(_)))
    })
    .await;
    let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }));
    raw.send_method(1, select.clone()).await;
    expect_method(&mut raw, "confirm.select-ok", |_, m| {
        matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
    })
    .await;
    // Persistent messages into a durable queue: their confirms wait for an fsync.
    let body = vec![b'p'; 16 * 1024];
    let mut first = Vec::new();
    for _ in 0..1000 {
        first.extend(publish_frames(1, "", &queue, &body, true));
    }
    first.extend(method(1, channel_close()));
    raw.send(&first).await;
    // RabbitMQ takes a channel.open for the number only after its close-ok.
    loop {
        match raw.method().await {
            (1, AMQPClass::Channel(ch::AMQPMethod::CloseOk(_))) => break,
            (1, AMQPClass::Basic(basic::AMQPMethod::Ack(_))) => {}
            other => panic!("expected acks then close-ok, got {other:?}"),
        }
    }
    let mut second = method(1, channel_open());
    second.extend(method(1, select));
    second.extend(publish_frames(1, "", &queue, b"successor", false));
    raw.send(&second).await;
    let mut reopened = false;
    loop {
        match raw.method().await {
            (1, AMQPClass::Channel(ch::AMQPMethod::OpenOk(_))) => reopened = true,
            (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) if reopened => {
                assert_eq!(
                    (ack.delivery_tag, ack.multiple),
                    (1, false),
                    "the new channel's first confirm is for its one publish"
                );
                break;
            }
            (1, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
                panic!("unexpected nack {nack:?}")
            }
            (_, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                panic!("connection closed: {close:?}")
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Closes that cross.
// ---------------------------------------------------------------------------------------

/// The client closes a channel while the broker closes it for an error: the broker
/// answers the client's close with close-ok, takes the client's close-ok for its own,
/// and the connection and its other channels live on; the number can be opened again.
#[tokio::test(flavor = "multi_thread")]
async fn closes_that_cross_end_the_channel_not_the_connection() {
    let server = TestServer::start().await;
    let missing = unique_name("cross-missing");
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    let mut bytes = publish_frames(1, &missing, "k", b"x", false);
    bytes.extend(method(1, channel_close()));
    raw.send(&bytes).await;
    let (code, text, class, method_id) = raw.expect_channel_close(1).await;
    assert_eq!(
        (code, text, class, method_id),
        (
            404,
            format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
            60,
            40
        )
    );
    expect_method(&mut raw, "close-ok for the client's close", |c, m| {
        c == 1 && matches!(m, AMQPClass::Channel(ch::AMQPMethod::CloseOk(_)))
    })
    .await;
    raw.send_method(2, passive_exchange("amq.direct")).await;
    expect_method(&mut raw, "exchange.declare-ok on channel 2", |c, m| {
        c == 2 && matches!(m, AMQPClass::Exchange(ex::AMQPMethod::DeclareOk(_)))
    })
    .await;
    raw.open_channel(1).await;

    // The other crossing: content and methods the client sent before it saw the
    // broker's close are ignored; its close-ok ends the channel.
    let mut bytes = publish_frames(1, &missing, "k", b"x", false);
    bytes.extend(publish_frames(1, &missing, "k", b"y", false));
    bytes.extend(method(1, passive_exchange("amq.direct")));
    raw.send(&bytes).await;
    let (code, ..) = raw.expect_channel_close(1).await;
    assert_eq!(code, 404);
    raw.send_method(2, passive_exchange("amq.direct")).await;
    expect_method(&mut raw, "exchange.declare-ok on channel 2", |c, m| {
        c == 2 && matches!(m, AMQPClass::Exchange(ex::AMQPMethod::DeclareOk(_)))
    })
    .await;
    raw.open_channel(1).await;
    raw.send_method(1, passive_exchange("amq.direct")).await;
    expect_method(
        &mut raw,
        "exchange.declare-ok on the reopened channel",
        |c, m| c == 1 && matches!(m, AMQPClass::Exchange(ex::AMQPMethod::DeclareOk(_))),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 6. channel_max.
// ---------------------------------------------------------------------------------------

/// RabbitMQ limits how many channels are open, not their numbers: with `channel_max` 2 a
/// channel numbered above it opens, and a third channel is refused with 530 on the
/// connection.
#[tokio::test(flavor = "multi_thread")]
async fn channel_max_limits_open_channels_as_rabbitmq_does() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.addr()).await;
    raw.start().await;
    raw.start_ok().await;
    let tune = raw.tune().await;
    raw.tune_ok(2, tune.frame_max, 0).await;
    raw.open_vhost("/").await;
    raw.open_channel(5).await;
    raw.open_channel(1).await;
    raw.send_method(9, channel_open()).await;
    let (code, text, class, method_id) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method_id),
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
            0,
            0
        )
    );
}

// ---------------------------------------------------------------------------------------
// 7. A client that writes and never reads.
// ---------------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A client that pipelines requests without reading their answers cannot make the broker
/// buffer the answers without bound: the broker stops reading it, its other clients are
/// served meanwhile, and once the client reads, every answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_brokers_output() {
    let dir = temp_data_dir("no-read");
    let broker = WarrenProcess::start(&dir).await;
    let queue = format!("{}{}", unique_name("no-read"), "q".repeat(200));
    let mut raw = Raw::connect_open(broker.addr()).await;
    raw.open_channel(1).await;
    raw.send_method(1, declare(&queue, false, false)).await;
    expect_method(&mut raw, "queue.declare-ok", |_, m| {
        matches!(m, AMQPClass::Queue(q::AMQPMethod::DeclareOk(_)))
    })
    .await;
    let before = rss_kib(broker.pid());
    // ~280-byte passive declares, each answered with a ~280-byte declare-ok.
    let request = method(1, declare(&queue, false, true));
    let chunk: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 1000)
        .collect();
    let target: usize = 64 << 20;
    let mut written = 0usize;
    while written < target {
        match tokio::time::timeout(Duration::from_secs(2), raw.stream.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("write: {e}"),
            // The broker stopped reading: its buffers and ours are full.
            Err(_) => break,
        }
    }
    let grown_mib = rss_kib(broker.pid()).saturating_sub(before) / 1024;
    eprintln!(
        "wrote {} MiB; the broker grew by {grown_mib} MiB",
        written >> 20
    );
    assert!(
        written < target,
        "the broker read all {} MiB without their answers being read",
        target >> 20
    );
    assert!(
        grown_mib < 16,
        "the broker grew by {grown_mib} MiB for a client that does not read"
    );
    // Others are served meanwhile.
    let conn = within(
        "connect",
        Connection::connect(&broker.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let other = common::channel(&conn).await;
    declare_queue(&other, &unique_name("no-read-other")).await;
    let _ = conn.close(200, "OK".into()).await;
    // Once the client reads, the broker reads on: every request written is answered.
    let answer = method(
        1,
        AMQPClass::Queue(q::AMQPMethod::DeclareOk(q::DeclareOk {
            queue: queue.as_str().into(),
            message_count: 0,
            consumer_count: 0,
        })),
    );
    let expected = written / request.len() * answer.len();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    within("every answer", async {
        while received < expected {
            match tokio::io::AsyncReadExt::read(&mut raw.stream, &mut buf).await {
                Ok(0) | Err(_) => panic!("the broker closed after {received} of {expected} bytes"),
                Ok(n) => received += n,
            }
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// 5. close-ok behind a backlog.
// ---------------------------------------------------------------------------------------

/// A publisher that writes without reading (mandatory messages that nothing routes, each
/// coming back as `basic.return`) until the broker stops taking its bytes, then closes
/// the connection and reads, slowly, gets its `close-ok` behind whatever the broker
/// buffered for it, not an end of stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_publisher_that_closes_gets_close_ok() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect_open(server.addr()).await;
    raw.open_channel(1).await;
    let nowhere = unique_name("flood-nowhere");
    let mut one = method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: nowhere.as_str().into(),
            mandatory: true,
            immediate: false,
        })),
    );
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&1024u64.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    one.extend(raw_frame(FRAME_HEADER, 1, &header));
    one.extend(raw_frame(FRAME_BODY, 1, &[b'r'; 1024]));
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
    let close = method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    let (mut reader, mut writer) = raw.stream.into_split();
    let full = std::sync::Arc::new(tokio::sync::Notify::new());
    // Writes until a write stays blocked (the socket buffers are full), then, once that
    // write could finish, sends connection.close.
    let flood = tokio::spawn({
        let full = full.clone();
        async move {
            let mut written = 0usize;
            while written < 24 << 20 {
                let write = writer.write_all(&chunk);
                tokio::pin!(write);
                match tokio::time::timeout(Duration::from_secs(1), &mut write).await {
                    Ok(done) => done.expect("write"),
                    Err(_) => {
                        full.notify_one();
                        write.await.expect("write");
                        written += chunk.len();
                        break;
                    }
                }
                written += chunk.len();
            }
            full.notify_one();
            writer.write_all(&close).await.expect("write close");
            (writer, written)
        }
    });
    full.notified().await;
    // Now the client reads, slowly (4 MiB/s), until close-ok.
    let mut buf = Vec::new();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut close_ok = false;
    let started = std::time::Instant::now();
    'read: while started.elapsed() < Duration::from_secs(30) {
        let n = match tokio::time::timeout(
            BOUND,
            tokio::io::AsyncReadExt::read(&mut reader, &mut scratch),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => panic!("the broker sent nothing for {BOUND:?}"),
        };
        buf.extend_from_slice(&scratch[..n]);
        let mut at = 0;
        while buf.len() - at >= 7 {
            let size = u32::from_be_bytes([buf[at + 3], buf[at + 4], buf[at + 5], buf[at + 6]]);
            let end = at + 8 + size as usize;
            if buf.len() < end {
                break;
            }
            if buf[at] == 1
                && buf[at + 1..at + 3] == [0, 0]
                && buf[at + 7..at + 11] == [0, 10, 0, 51]
            {
                close_ok = true;
                break 'read;
            }
            at = end;
        }
        buf.drain(..at);
        tokio::time::sleep(Duration::from_millis(62)).await;
    }
    let (_writer, written) = within("the flood", flood).await.expect("the flood task");
    assert!(close_ok, "close-ok arrived (wrote {} MiB)", written >> 20);
}

// ---------------------------------------------------------------------------------------
// 9. Unbinding from an exchange that auto-delete took away.
// ---------------------------------------------------------------------------------------

/// An auto-delete exchange goes with its last binding, here when its only queue (an
/// auto-delete one) loses its consumer. Unbinding from it afterwards succeeds, as
/// unbinding from any missing exchange or of a missing queue does in RabbitMQ.
#[tokio::test(flavor = "multi_thread")]
async fn unbinding_from_an_exchange_auto_delete_removed_succeeds() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let exchange = unique_name("ad-x");
    let queue = unique_name("ad-q");
    let other = unique_name("ad-other");
    within(
        "exchange.declare",
        channel.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare an auto-delete exchange");
    within(
        "declare",
        channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare an auto-delete queue");
    declare_queue(&channel, &other).await;
    bind_queue(&channel, &queue, &exchange, "").await;
    let consumer = within(
        "consume",
        channel.basic_consume(
            queue.as_str().into(),
            "ad-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    within(
        "cancel",
        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let gone = wait_for(BOUND, || async { !exchange_exists(&conn, &exchange).await }).await;
    assert!(gone, "the auto-delete exchange went with its last binding");
    within(
        "queue.unbind of the deleted queue",
        channel.queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbinding a deleted queue from a deleted exchange succeeds");
    within(
        "queue.unbind of an existing queue",
        channel.queue_unbind(
            other.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbinding from a deleted exchange succeeds");
    within(
        "exchange.unbind",
        channel.exchange_unbind(
            "amq.fanout".into(),
            exchange.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind from a deleted source succeeds");
    within(
        "exchange.unbind",
        channel.exchange_unbind(
            exchange.as_str().into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind of a deleted destination succeeds");
    assert!(conn.status().connected());
}
