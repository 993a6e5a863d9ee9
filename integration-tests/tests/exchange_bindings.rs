//! Exchange-to-exchange bindings (`exchange.bind` / `exchange.unbind`) and internal
//! exchanges, as RabbitMQ has them.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::BasicPublishOptions;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind, internal: bool) {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                internal,
                auto_delete: false,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare an exchange");
}

async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    within(
        "queue.bind",
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind a queue");
}

async fn bind_exchange(
    channel: &Channel,
    destination: &str,
    source: &str,
    key: &str,
) -> lapin::Result<()> {
    within(
        "exchange.bind",
        channel.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_flow_through_exchange_to_exchange_bindings() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let front = unique_name("front");
    let back = unique_name("back");
    let queue = unique_name("e2e");
    let direct_queue = unique_name("e2e-direct");
    declare_exchange(&channel, &front, ExchangeKind::Topic, false).await;
    declare_exchange(&channel, &back, ExchangeKind::Fanout, false).await;
    declare_queue(&channel, &queue).await;
    declare_queue(&channel, &direct_queue).await;
    bind_queue(&channel, &queue, &back, "").await;
    // The same queue is also reachable straight from the front: it still gets one copy.
    bind_queue(&channel, &direct_queue, &front, "orders.*").await;
    bind_queue(&channel, &queue, &front, "orders.*").await;
    bind_exchange(&channel, &back, &front, "orders.#")
        .await
        .expect("exchange.bind");
    // A cycle back to the front must not loop.
    bind_exchange(&channel, &front, &back, "")
        .await
        .expect("exchange.bind back");

    publish(&channel, &front, "orders.new", b"o1").await;
    publish(&channel, &front, "other", b"ignored").await;
    wait_for_count(&channel, &queue, 1).await;
    wait_for_count(&channel, &direct_queue, 1).await;
    assert_eq!(
        drain(&channel, &queue).await,
        vec![("o1".to_owned(), false)]
    );

    within(
        "exchange.unbind",
        channel.exchange_unbind(
            back.as_str().into(),
            front.as_str().into(),
            "orders.#".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    within(
        "queue.unbind",
        channel.queue_unbind(
            queue.as_str().into(),
            front.as_str().into(),
            "orders.*".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    publish(&channel, &front, "orders.late", b"o2").await;
    wait_for_count(&channel, &direct_queue, 2).await;
    assert_eq!(
        message_count(&channel, &queue).await,
        0,
        "unbound exchanges route nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_to_a_missing_or_default_exchange_is_refused() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let real = unique_name("real");
    let missing = unique_name("missing");
    declare_exchange(&channel, &real, ExchangeKind::Direct, false).await;
    assert_amqp_error(
        bind_exchange(&channel, &missing, &real, "k").await,
        404,
        &format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    );
    let channel = common::channel(&conn).await;
    assert_amqp_error(
        bind_exchange(&channel, &real, &missing, "k").await,
        404,
        &format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    );
    let channel = common::channel(&conn).await;
    assert_amqp_error(
        bind_exchange(&channel, &real, "", "k").await,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_exchanges_take_messages_only_from_other_exchanges() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let public = unique_name("public");
    let internal = unique_name("internal");
    let queue = unique_name("behind-internal");
    declare_exchange(&channel, &public, ExchangeKind::Fanout, false).await;
    declare_exchange(&channel, &internal, ExchangeKind::Fanout, true).await;
    declare_queue(&channel, &queue).await;
    bind_queue(&channel, &queue, &internal, "").await;
    bind_exchange(&channel, &internal, &public, "")
        .await
        .expect("exchange.bind");
    publish(&channel, &public, "k", b"via-public").await;
    wait_for_count(&channel, &queue, 1).await;

    // In confirm mode the publish's confirm fails with the channel close it causes.
    let publisher = common::channel(&conn).await;
    let result = publish_confirmed_or_closed(
        &publisher,
        &internal,
        "k",
        BasicPublishOptions::default(),
        b"direct",
        BasicProperties::default(),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        &format!("ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"),
    );
}
