//! Direct reply-to: an RPC client consumes `amq.rabbitmq.reply-to` without acks, sends a
//! request naming it as `reply_to`, and the server's reply (published to the rewritten
//! address) reaches that consumer without a queue being declared.

mod common;

use common::*;
use integration_tests::python::{examples_dir, venv_python};
use integration_tests::{TestServer, unique_name};
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rpc_round_trip_needs_no_reply_queue() {
    let server = TestServer::start().await;
    let (_server_conn, server_channel) = open(&server).await;
    let requests = unique_name("rpc-requests");
    declare_queue(&server_channel, &requests).await;
    let mut incoming = consume_with(
        &server_channel,
        &requests,
        "rpc-server",
        no_ack(),
        FieldTable::default(),
    )
    .await;

    let (_client_conn, client) = open(&server).await;
    let mut replies = consume_with(&client, REPLY_TO, "", no_ack(), FieldTable::default()).await;
    publish_with(
        &client,
        "",
        &requests,
        b"ping",
        BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("42".into()),
    )
    .await;

    let request = next_delivery(&mut incoming).await;
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("the request names where to reply");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "reply_to was not rewritten: {reply_to}"
    );
    publish_with(
        &server_channel,
        "",
        reply_to.as_str(),
        b"pong",
        BasicProperties::default().with_correlation_id("42".into()),
    )
    .await;
    let reply = next_delivery(&mut replies).await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("42")
    );
    assert_eq!(reply.routing_key.as_str(), reply_to.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reply_consumer_must_not_ack_and_exists_once_per_channel() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let acking = channel
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_amqp_error(
        acking,
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    );
    let channel = common::channel(&conn).await;
    let _first = consume_with(&channel, REPLY_TO, "", no_ack(), FieldTable::default()).await;
    let second = channel
        .basic_consume(REPLY_TO.into(), "".into(), no_ack(), FieldTable::default())
        .await;
    assert_amqp_error(
        second,
        406,
        "PRECONDITION_FAILED - reply consumer already set",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_with_reply_to_needs_the_reply_consumer() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("rpc-no-consumer");
    declare_queue(&channel, &queue).await;
    let result = publish_confirmed_or_closed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pseudo_queue_can_be_checked_but_not_declared() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let passive = channel
        .queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a passive declare of the pseudo-queue succeeds");
    assert_eq!(passive.message_count(), 0);
    let channel = common::channel(&conn).await;
    let declared = channel
        .queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_amqp_error(
        declared,
        403,
        "ACCESS_REFUSED - queue name 'amq.rabbitmq.reply-to' contains reserved prefix 'amq.*'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_after_the_consumer_went_are_dropped() {
    let server = TestServer::start().await;
    let (_server_conn, server_channel) = open_confirm(&server).await;
    let requests = unique_name("rpc-gone");
    declare_queue(&server_channel, &requests).await;
    let reply_to = {
        let (client_conn, client) = open(&server).await;
        let _replies = consume_with(&client, REPLY_TO, "", no_ack(), FieldTable::default()).await;
        publish_with(
            &client,
            "",
            &requests,
            b"req",
            BasicProperties::default().with_reply_to(REPLY_TO.into()),
        )
        .await;
        let request = wait_for_get(&server_channel, &requests).await;
        within("close the client", client_conn.close(200, "bye".into()))
            .await
            .expect("close");
        request
            .delivery
            .properties
            .reply_to()
            .clone()
            .expect("reply_to")
    };
    // The reply goes nowhere, is not an error, and the broker keeps working.
    publish_with(
        &server_channel,
        "",
        reply_to.as_str(),
        b"late",
        BasicProperties::default(),
    )
    .await;
    assert_broker_works(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pika_completes_an_rpc_round_trip() {
    let server = TestServer::start().await;
    let python = venv_python().expect("the examples' virtualenv");
    let script = examples_dir().join("rpc_direct_reply.py");
    let uri = server.uri().to_owned();
    // The script gives up by itself after 10 s, so waiting for it is bounded.
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(uri)
            .output()
    });
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("rpc_direct_reply.py finishes")
        .expect("join the script's waiter")
        .expect("run rpc_direct_reply.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rpc_direct_reply.py failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "reply: echo:hello");
}
