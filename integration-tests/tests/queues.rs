//! Queues: declare (durable, exclusive, auto-delete, server-named, passive,
//! equivalence), purge, delete (if-unused, if-empty) and the counts they return.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

fn opts(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..QueueDeclareOptions::default()
    }
}

async fn declare(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        channel.queue_declare(name.into(), options, FieldTable::default()),
    )
    .await
}

fn locked(name: &str) -> String {
    format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost \
         '/'. It could be originally declared on another connection or the exclusive \
         property value does not match that of the original declaration."
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn declare_returns_name_and_counts() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let name = unique_name("counts");
    let queue = declare(&channel, &name, opts(false, false, false))
        .await
        .expect("declare");
    assert_eq!(queue.name().as_str(), name);
    assert_eq!((queue.message_count(), queue.consumer_count()), (0, 0));
    for _ in 0..3 {
        publish(&channel, "", &name, b"x").await;
    }
    let queue = declare(&channel, &name, opts(false, false, false))
        .await
        .expect("redeclare");
    assert_eq!((queue.message_count(), queue.consumer_count()), (3, 0));
    let channel = common::channel(&conn).await;
    let _consumer = within(
        "basic.consume",
        channel.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let passive = declare(
        &channel,
        &name,
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
    )
    .await
    .expect("passive");
    assert_eq!(passive.consumer_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_flag_is_kept_and_checked_on_redeclare() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("durable");
    declare(&channel, &name, opts(true, false, false))
        .await
        .expect("declare durable");
    declare(&channel, &name, opts(true, false, false))
        .await
        .expect("equivalent redeclare");
    let result = declare(&channel, &name, opts(false, false, false)).await;
    assert_amqp_error(
        result,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost \
             '/': received 'false' but current is 'true'"
        ),
    );
    let channel = common::channel(&conn).await;
    let result = declare(&channel, &name, opts(true, false, true)).await;
    assert_amqp_error(
        result,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{name}' in \
             vhost '/': received 'true' but current is 'false'"
        ),
    );
    let channel = common::channel(&conn).await;
    within(
        "queue.delete",
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclaring_with_another_exclusive_flag_is_resource_locked() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("not-exclusive");
    declare(&channel, &name, opts(false, false, false))
        .await
        .expect("declare");
    let result = declare(&channel, &name, opts(false, true, false)).await;
    assert_amqp_error(result, 405, &locked(&name));
    let channel = common::channel(&conn).await;
    let name = unique_name("exclusive");
    declare(&channel, &name, opts(false, true, false))
        .await
        .expect("declare exclusive");
    let result = declare(&channel, &name, opts(false, false, false)).await;
    assert_amqp_error(result, 405, &locked(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_queue_is_locked_for_other_connections() {
    let server = TestServer::start().await;
    let (_owner, owner_channel) = open(&server).await;
    let name = unique_name("exclusive");
    // durable + exclusive is exclusive.
    declare(&owner_channel, &name, opts(true, true, false))
        .await
        .expect("declare exclusive");
    publish(&owner_channel, "", &name, b"mine").await;

    let (other, _) = open(&server).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // Every operation from another connection: 405, checked before anything else.
    let ch = common::channel(&other).await;
    assert_amqp_error(declare(&ch, &name, passive).await, 405, &locked(&name));
    let ch = common::channel(&other).await;
    assert_amqp_error(
        declare(&ch, &name, opts(true, true, false)).await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "basic.consume",
            ch.basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "basic.get",
            ch.basic_get(name.as_str().into(), BasicGetOptions::default()),
        )
        .await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "queue.purge",
            ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()),
        )
        .await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "queue.bind",
            ch.queue_bind(
                name.as_str().into(),
                "amq.direct".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "queue.delete",
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await,
        405,
        &locked(&name),
    );
    // Exclusivity is checked before equivalence or emptiness.
    let ch = common::channel(&other).await;
    assert_amqp_error(
        declare(&ch, &name, opts(false, false, true)).await,
        405,
        &locked(&name),
    );
    let ch = common::channel(&other).await;
    assert_amqp_error(
        within(
            "queue.delete",
            ch.queue_delete(
                name.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..QueueDeleteOptions::default()
                },
            ),
        )
        .await,
        405,
        &locked(&name),
    );
    // Publishing to it from elsewhere is allowed.
    let ch = common::channel(&other).await;
    publish(&ch, "", &name, b"from elsewhere").await;
    wait_for_count(&owner_channel, &name, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_queue_goes_with_its_connection() {
    let server = TestServer::start().await;
    let (owner, owner_channel) = open(&server).await;
    let name = unique_name("exclusive");
    declare(&owner_channel, &name, opts(false, true, false))
        .await
        .expect("declare exclusive");
    let (observer, _) = open(&server).await;
    within("close", owner.close(200, "OK".into()))
        .await
        .expect("close the owner");
    let gone = wait_for(BOUND, || async { !queue_exists(&observer, &name).await }).await;
    assert!(gone, "exclusive queue survived its connection");
    // Now anyone may declare that name.
    let ch = common::channel(&observer).await;
    declare(&ch, &name, opts(false, false, false))
        .await
        .expect("declare the freed name");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("auto-delete");
    declare(&channel, &name, opts(false, false, true))
        .await
        .expect("declare auto-delete");
    // Without ever having had a consumer, it stays.
    let ch2 = common::channel(&conn).await;
    let a = within(
        "consume",
        channel.basic_consume(
            name.as_str().into(),
            "a".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let b = within(
        "consume",
        ch2.basic_consume(
            name.as_str().into(),
            "b".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    within(
        "basic.cancel",
        channel.basic_cancel(a.tag(), Default::default()),
    )
    .await
    .expect("cancel a");
    assert!(queue_exists(&conn, &name).await, "one consumer is left");
    // The last consumer going (here: its channel closing) deletes it.
    drop(b);
    within("channel.close", ch2.close(200, "OK".into()))
        .await
        .expect("close");
    let gone = wait_for(BOUND, || async { !queue_exists(&conn, &name).await }).await;
    assert!(gone, "auto-delete queue survived its last consumer");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_delete_queue_without_consumers_stays() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("auto-delete-idle");
    declare(&channel, &name, opts(false, false, true))
        .await
        .expect("declare auto-delete");
    publish(&channel, "", &name, b"x").await;
    wait_for_count(&channel, &name, 1).await;
    let _ = get(&channel, &name).await.expect("a message");
    assert!(queue_exists(&conn, &name).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_named_queues_are_amq_gen() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let a = declare(&channel, "", opts(false, true, false))
        .await
        .expect("server-named");
    let b = declare(&channel, "", opts(false, true, false))
        .await
        .expect("server-named");
    let (a, b) = (a.name().to_string(), b.name().to_string());
    assert!(a.starts_with("amq.gen-"), "{a}");
    // RabbitMQ: "amq.gen-" and 22 characters of URL-safe base64.
    assert_eq!(a.len(), "amq.gen-".len() + 22, "{a}");
    assert_ne!(a, b);
    publish(&channel, "", &a, b"to a").await;
    wait_for_count(&channel, &a, 1).await;
    // But a client may not choose an amq. name.
    let ch = common::channel(&conn).await;
    let name = format!("amq.{}", unique_name("mine"));
    assert_amqp_error(
        declare(&ch, &name, opts(false, false, false)).await,
        403,
        &format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declare_of_a_missing_queue_is_404() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("missing");
    let result = declare(
        &channel,
        &name,
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
    );
    assert!(
        !channel.status().connected(),
        "the channel is closed after a channel error"
    );
    // The connection lives on.
    let ch = common::channel(&conn).await;
    declare_queue(&ch, &unique_name("after")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_returns_the_count_and_leaves_unacked_messages() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("purge");
    declare_queue(&channel, &name).await;
    fill_queue(&channel, &name, 5).await;
    // One delivered and not acked: purge does not touch it.
    let held = common::channel(&conn).await;
    let _unacked = get(&held, &name).await.expect("a message");
    let purged = within(
        "queue.purge",
        channel.queue_purge(name.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(purged, 4);
    assert_eq!(message_count(&channel, &name).await, 0);
    let purged = within(
        "queue.purge",
        channel.queue_purge(name.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge an empty queue");
    assert_eq!(purged, 0);
    // The unacked one comes back when its channel closes.
    within("close", held.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&channel, &name, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_of_a_missing_queue_is_404() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("missing");
    let result = within(
        "queue.purge",
        channel.queue_purge(name.as_str().into(), QueuePurgeOptions::default()),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_returns_the_count_and_missing_queues_delete_fine() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("delete");
    declare_queue(&channel, &name).await;
    fill_queue(&channel, &name, 3).await;
    let deleted = within(
        "queue.delete",
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    assert_eq!(deleted, 3);
    assert!(!queue_exists(&conn, &name).await);
    let deleted = within(
        "queue.delete",
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("deleting a missing queue succeeds");
    assert_eq!(deleted, 0);
}

async fn delete_with(
    conn: &Connection,
    name: &str,
    if_unused: bool,
    if_empty: bool,
) -> lapin::Result<u32> {
    let channel = common::channel(conn).await;
    within(
        "queue.delete",
        channel.queue_delete(
            name.into(),
            QueueDeleteOptions {
                if_unused,
                if_empty,
                ..QueueDeleteOptions::default()
            },
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_if_unused_and_if_empty_refuse_with_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("guarded");
    declare_queue(&channel, &name).await;
    fill_queue(&channel, &name, 2).await;

    assert_amqp_error(
        delete_with(&conn, &name, false, true).await,
        406,
        &format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"),
    );
    let consumer_channel = common::channel(&conn).await;
    within("qos", consumer_channel.basic_qos(1, Default::default()))
        .await
        .expect("qos");
    let mut consumer = within(
        "consume",
        consumer_channel.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let _first = next_delivery(&mut consumer).await;
    assert_amqp_error(
        delete_with(&conn, &name, true, false).await,
        406,
        &format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"),
    );
    // Plain delete works, counts only the ready message, and cancels the consumer.
    assert_eq!(
        delete_with(&conn, &name, false, false)
            .await
            .expect("delete"),
        1
    );
    let end = within("consumer end", futures_lite::StreamExt::next(&mut consumer)).await;
    assert!(end.is_none(), "the consumer was cancelled: {end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_if_empty_and_if_unused_succeed_when_true() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("unguarded");
    declare_queue(&channel, &name).await;
    assert_eq!(
        delete_with(&conn, &name, true, true).await.expect("delete"),
        0
    );
    assert!(!queue_exists(&conn, &name).await);
}
