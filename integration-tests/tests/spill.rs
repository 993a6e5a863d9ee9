//! Transient queues whose backlog outgrows memory spill it to disk: every message still
//! comes back exactly once and in order (returned ones first), the spill files go with
//! the queue, and a restart starts with none.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use integration_tests::{TestServer, temp_data_dir, unique_name, wait_for};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

/// Messages of [`BODY`] bytes: more than a transient queue keeps in memory (32 MiB).
const BACKLOG: usize = 10_000;
const BODY: usize = 4096;

/// Body `i` of a run tagged `tag`: its name, padded to [`BODY`] bytes.
fn body_of(tag: &str, i: usize) -> String {
    format!("{:<BODY$}", format!("{tag}{i:05}"))
}

/// The segment files under the data directory's spill area.
fn spill_segments(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(logs) = std::fs::read_dir(data_dir.join("spill")) else {
        return Vec::new();
    };
    logs.flatten()
        .filter_map(|log| std::fs::read_dir(log.path()).ok())
        .flat_map(|files| files.flatten().map(|f| f.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect()
}

/// Publishes `bodies` to the empty `queue` and waits until it holds them all.
async fn fill_with(channel: &lapin::Channel, queue: &str, bodies: &[String]) {
    for body in bodies {
        publish(channel, "", queue, body.as_bytes()).await;
    }
    wait_for_count(channel, queue, bodies.len() as u32).await;
}

fn spilled_bytes(data_dir: &Path) -> u64 {
    spill_segments(data_dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_backlog_spills_to_disk_and_comes_back_in_order() {
    let dir = temp_data_dir("spill");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("spill");
    let (_conn, channel) = open(&server).await;
    declare_queue(&channel, &queue).await;
    let bodies: Vec<String> = (0..BACKLOG).map(|i| body_of("m", i)).collect();
    fill_with(&channel, &queue, &bodies).await;
    assert!(
        spilled_bytes(&dir) > 0,
        "a backlog past the memory window is written to the spill area"
    );

    // Past the in-memory window, then a few from the spilled part go out and return.
    let head = 9_000;
    for expected in &bodies[..head] {
        let message = get(&channel, &queue).await.expect("a message");
        assert_eq!(body(&message.delivery), *expected);
        within(
            "ack",
            message
                .delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default()),
        )
        .await
        .expect("ack");
    }
    within(
        "basic.qos",
        channel.basic_qos(10, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let mut consumer = within(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "spill-reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let mut last = None;
    for expected in &bodies[head..head + 10] {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(body(&delivery), *expected);
        last = Some(delivery);
    }
    within(
        "basic.cancel",
        channel.basic_cancel("spill-reader".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let last = last.expect("ten deliveries");
    within(
        "nack",
        last.acker.nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        }),
    )
    .await
    .expect("nack");
    for i in 0..5 {
        publish(&channel, "", &queue, body_of("late", i).as_bytes()).await;
    }
    wait_for_count(&channel, &queue, (BACKLOG - head + 5) as u32).await;

    let drained = drain(&channel, &queue).await;
    let mut expected: Vec<(String, bool)> = bodies[head..head + 10]
        .iter()
        .map(|b| (b.clone(), true))
        .collect();
    expected.extend(bodies[head + 10..].iter().map(|b| (b.clone(), false)));
    expected.extend((0..5).map(|i| (body_of("late", i), false)));
    assert_eq!(drained.len(), expected.len());
    assert!(
        drained == expected,
        "returned messages first, then the rest in publish order; first difference at {:?}",
        drained.iter().zip(&expected).position(|(a, b)| a != b)
    );

    within(
        "queue.delete",
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    let data_dir = dir.clone();
    let gone = wait_for(Duration::from_secs(5), || {
        let data_dir = data_dir.clone();
        async move { spill_segments(&data_dir).is_empty() }
    })
    .await;
    assert!(gone, "a deleted queue's spill log is removed");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_starts_with_no_spilled_messages() {
    let dir = temp_data_dir("spill-restart");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("spill-restart");
    let (conn, channel) = open(&server).await;
    declare_queue(&channel, &queue).await;
    let bodies: Vec<String> = (0..BACKLOG).map(|i| body_of("m", i)).collect();
    fill_with(&channel, &queue, &bodies).await;
    assert!(spilled_bytes(&dir) > 0, "the backlog spilled");
    drop(conn);
    server.stop().await;

    let server = TestServer::start_in(&dir).await;
    assert!(
        spill_segments(&dir).is_empty(),
        "transient messages do not outlive the broker: {:?}",
        spill_segments(&dir)
    );
    let (conn, _channel) = open(&server).await;
    assert!(
        !queue_exists(&conn, &queue).await,
        "the transient queue is gone"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_that_spills_again_after_catching_up_loses_nothing() {
    let dir = temp_data_dir("spill-again");
    let server = TestServer::start_in(&dir).await;
    let queue = unique_name("spill-again");
    let (_conn, channel) = open(&server).await;
    declare_queue(&channel, &queue).await;
    for round in 0..2 {
        let bodies: Vec<String> = (0..BACKLOG)
            .map(|i| body_of(&format!("r{round}-"), i))
            .collect();
        fill_with(&channel, &queue, &bodies).await;
        let drained: Vec<String> = drain(&channel, &queue)
            .await
            .into_iter()
            .map(|(body, _)| body)
            .collect();
        assert!(
            drained == bodies,
            "round {round}: {} of {BACKLOG} came back, first difference at {:?}",
            drained.len(),
            drained.iter().zip(&bodies).position(|(a, b)| a != b)
        );
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_memory_is_tight_a_transient_queue_spills_early() {
    let dir = temp_data_dir("spill-tight");
    let data_dir = dir.clone();
    // A 16 MiB limit puts the spill budget at 4 MiB, far below a transient queue's own
    // 32 MiB window, and the alarm itself out of reach once the backlog spills.
    let server = TestServer::start_with(move |c| {
        c.data_dir = data_dir;
        c.memory_limit = 16 << 20;
    })
    .await;
    let queue = unique_name("spill-tight");
    let (_conn, channel) = open(&server).await;
    declare_queue(&channel, &queue).await;
    let mut bodies = Vec::new();
    // 6 MiB in memory puts the broker past its budget; then each further batch may spill.
    // 6,000 messages (24 MiB) stay below the queue's own window: only tight memory spills them.
    while bodies.len() < 6 * 256 || (spilled_bytes(&dir) == 0 && bodies.len() < 6_000) {
        for _ in 0..64 {
            let body = body_of("t", bodies.len());
            publish(&channel, "", &queue, body.as_bytes()).await;
            bodies.push(body);
        }
        wait_for_count(&channel, &queue, bodies.len() as u32).await;
    }
    assert!(
        spilled_bytes(&dir) > 0,
        "{} messages of {BODY} bytes stayed in memory past the spill budget",
        bodies.len()
    );
    let drained: Vec<String> = drain(&channel, &queue)
        .await
        .into_iter()
        .map(|(body, _)| body)
        .collect();
    assert!(drained == bodies, "every message back once, in order");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
