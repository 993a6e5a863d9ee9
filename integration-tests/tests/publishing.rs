//! Publishing: mandatory returns (before the confirm), publisher confirms, transactions,
//! publishing to a missing exchange, properties passed through.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

async fn publish_mandatory(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> Confirmation {
    within("mandatory publish", async {
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default(),
            )
            .await?
            .await
    })
    .await
    .expect("publish")
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_unroutable_is_returned_before_the_confirm() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let key = unique_name("nowhere");
    let confirmation = publish_mandatory(&channel, "", &key, b"lost").await;
    // lapin attaches a basic.return to the confirm only if it arrived before the ack.
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"lost");

    // Through a named exchange with no matching binding too.
    let confirmation = publish_mandatory(&channel, "amq.direct", &key, b"lost too").await;
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected a returned message, got {confirmation:?}");
    };
    assert_eq!(
        (returned.reply_code, returned.delivery.exchange.as_str()),
        (312, "amq.direct")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_routable_is_not_returned() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("routable");
    declare_queue(&channel, &queue).await;
    let confirmation = publish_mandatory(&channel, "", &queue, b"kept").await;
    assert_eq!(confirmation, Confirmation::Ack(None));
    assert_eq!(message_count(&channel, &queue).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_mandatory_unroutable_is_dropped_silently() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let confirmation = within("publish", async {
        channel
            .basic_publish(
                "".into(),
                unique_name("nowhere").as_str().into(),
                BasicPublishOptions::default(),
                b"dropped",
                BasicProperties::default(),
            )
            .await?
            .await
    })
    .await
    .expect("publish");
    assert_eq!(confirmation, Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_return_without_confirms() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let key = unique_name("nowhere");
    let confirmation = publish_mandatory(&channel, "", &key, b"back").await;
    assert_eq!(confirmation, Confirmation::NotRequested);
    // Without confirms, lapin collects returns for wait_for_confirms to hand over.
    let returned = std::sync::Mutex::new(Vec::new());
    let got = wait_for(BOUND, || async {
        let more = channel.wait_for_confirms().await.expect("returns");
        let mut returned = returned.lock().expect("lock");
        returned.extend(more);
        !returned.is_empty()
    })
    .await;
    assert!(got, "no basic.return");
    let returned = returned.into_inner().expect("lock");
    assert_eq!(returned[0].reply_code, 312);
    assert_eq!(returned[0].reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned[0].delivery.data, b"back");
}

#[tokio::test(flavor = "multi_thread")]
async fn confirms_ack_every_publish() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("confirms");
    declare_queue(&channel, &queue).await;
    let mut pending = Vec::new();
    for i in 0..200 {
        pending.push(
            within(
                "publish",
                channel.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("publish"),
        );
    }
    for confirm in pending {
        assert_eq!(
            within("confirm", confirm).await.expect("confirm"),
            Confirmation::Ack(None)
        );
    }
    // Once confirmed, every message is in the queue.
    assert_eq!(message_count(&channel, &queue).await, 200);
    assert!(
        channel
            .wait_for_confirms()
            .await
            .expect("nothing pending")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn confirm_select_is_idempotent_and_excludes_tx() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    within(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("a second confirm.select is fine");
    let result = within("tx.select", channel.tx_select()).await;
    assert_amqp_error(
        result,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
    let channel = common::channel(&conn).await;
    within("tx.select", channel.tx_select())
        .await
        .expect("tx.select");
    let result = within(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_a_missing_exchange_fails_the_confirm_and_the_channel() {
    let server = TestServer::start().await;
    let (conn, channel) = open_confirm(&server).await;
    let missing = unique_name("no-exchange");
    let result = within("publish", async {
        channel
            .basic_publish(
                missing.as_str().into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await?
            .await
    })
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    );
    let other = common::channel(&conn).await;
    declare_queue(&other, &unique_name("after")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tx_commit_releases_held_publishes() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("tx");
    declare_queue(&observer, &queue).await;
    let tx = common::channel(&conn).await;
    within("tx.select", tx.tx_select())
        .await
        .expect("tx.select");
    for i in 0..3 {
        publish(&tx, "", &queue, format!("m{i}").as_bytes()).await;
    }
    // A round trip on the tx channel: the publishes have been received, yet held.
    within("qos", tx.basic_qos(0, Default::default()))
        .await
        .expect("qos");
    assert_eq!(message_count(&observer, &queue).await, 0);
    within("tx.commit", tx.tx_commit()).await.expect("commit");
    // After commit-ok the messages are in the queue.
    assert_eq!(message_count(&observer, &queue).await, 3);
    // The channel stays transactional: the next publish is held again.
    publish(&tx, "", &queue, b"m3").await;
    within("qos", tx.basic_qos(0, Default::default()))
        .await
        .expect("qos");
    assert_eq!(message_count(&observer, &queue).await, 3);
    within("tx.commit", tx.tx_commit()).await.expect("commit");
    assert_eq!(message_count(&observer, &queue).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn tx_rollback_discards_held_publishes() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("tx-rollback");
    declare_queue(&observer, &queue).await;
    let tx = common::channel(&conn).await;
    within("tx.select", tx.tx_select())
        .await
        .expect("tx.select");
    publish(&tx, "", &queue, b"discarded").await;
    within("tx.rollback", tx.tx_rollback())
        .await
        .expect("rollback");
    within("tx.commit", tx.tx_commit())
        .await
        .expect("commit of nothing");
    assert_eq!(message_count(&observer, &queue).await, 0);
    publish(&tx, "", &queue, b"kept").await;
    within("tx.commit", tx.tx_commit()).await.expect("commit");
    assert_eq!(
        drain(&observer, &queue).await,
        vec![("kept".to_string(), false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tx_holds_acks_until_commit() {
    let server = TestServer::start().await;
    let (conn, observer) = open(&server).await;
    let queue = unique_name("tx-acks");
    declare_queue(&observer, &queue).await;
    fill_queue(&observer, &queue, 4).await;

    // Acks rolled back leave the messages unacked: they come back when the channel
    // closes.
    let tx = common::channel(&conn).await;
    within("tx.select", tx.tx_select())
        .await
        .expect("tx.select");
    let a = get(&tx, &queue).await.expect("m000");
    let b = get(&tx, &queue).await.expect("m001");
    within(
        "ack",
        tx.basic_ack(b.delivery.delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    within("tx.rollback", tx.tx_rollback())
        .await
        .expect("rollback");
    drop(a);
    within("close", tx.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&observer, &queue, 4).await;

    // Acks committed settle the messages for good.
    let tx = common::channel(&conn).await;
    within("tx.select", tx.tx_select())
        .await
        .expect("tx.select");
    let first = get(&tx, &queue).await.expect("m000");
    assert!(first.delivery.redelivered);
    let second = get(&tx, &queue).await.expect("m001");
    within(
        "ack",
        tx.basic_ack(
            second.delivery.delivery_tag,
            BasicAckOptions { multiple: true },
        ),
    )
    .await
    .expect("ack");
    within("tx.commit", tx.tx_commit()).await.expect("commit");
    within("close", tx.close(200, "OK".into()))
        .await
        .expect("close");
    wait_for_count(&observer, &queue, 2).await;
    assert_eq!(
        drain(&observer, &queue).await,
        vec![("m002".to_string(), false), ("m003".to_string(), false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tx_commit_or_rollback_without_select_is_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    assert_amqp_error(
        within("tx.commit", channel.tx_commit()).await,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
    let channel = common::channel(&conn).await;
    assert_amqp_error(
        within("tx.rollback", channel.tx_rollback()).await,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn immediate_flag_is_not_implemented() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("immediate");
    declare_queue(&channel, &queue).await;
    let result = publish_confirmed_or_closed(
        &channel,
        "",
        &queue,
        BasicPublishOptions {
            immediate: true,
            ..BasicPublishOptions::default()
        },
        b"now",
        BasicProperties::default(),
    )
    .await;
    assert_amqp_error(result, 540, "NOT_IMPLEMENTED - immediate=true");
    assert!(
        wait_for(BOUND, || async { !conn.status().connected() }).await,
        "540 closes the connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_and_headers_reach_the_consumer_unchanged() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("props");
    declare_queue(&channel, &queue).await;
    let exchange = "amq.topic";
    within(
        "bind",
        channel.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "a.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    let mut headers = FieldTable::default();
    headers.insert("str".into(), AMQPValue::LongString("text".into()));
    headers.insert("int".into(), AMQPValue::LongInt(-42));
    headers.insert("long".into(), AMQPValue::LongLongInt(1 << 40));
    headers.insert("bool".into(), AMQPValue::Boolean(true));
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(vec![0u8, 1, 2, 255].into()),
    );
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::ShortInt(7));
    headers.insert("table".into(), AMQPValue::FieldTable(nested));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("type".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_headers(headers);
    publish_with(&channel, exchange, "a.b", b"{}", properties.clone()).await;
    // An empty body too.
    publish_with(
        &channel,
        exchange,
        "a.empty",
        b"",
        BasicProperties::default(),
    )
    .await;
    let got = get(&channel, &queue).await.expect("message");
    assert_eq!(got.delivery.properties, properties);
    assert_eq!(got.delivery.exchange.as_str(), exchange);
    assert_eq!(got.delivery.routing_key.as_str(), "a.b");
    let empty = get(&channel, &queue).await.expect("empty message");
    assert!(empty.delivery.data.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_user_id_property_is_refused() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let queue = unique_name("user-id");
    declare_queue(&channel, &queue).await;
    let result = publish_confirmed_or_closed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"spoofed",
        BasicProperties::default().with_user_id("someone-else".into()),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        "PRECONDITION_FAILED - user_id property set to 'someone-else' but authenticated \
         user was 'guest'",
    );
}
