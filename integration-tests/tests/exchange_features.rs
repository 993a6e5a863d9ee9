//! Exchange extensions: alternate exchanges (the `alternate-exchange` argument) catching
//! what an exchange cannot route, and sender-selected distribution (the `CC` and `BCC`
//! headers) routing copies with extra routing keys.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};

fn with_alternate(alternate: &str) -> FieldTable {
    table(&[("alternate-exchange", text(alternate))])
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

/// A fresh queue bound to `exchange` with `key`.
async fn bound_queue(channel: &Channel, exchange: &str, key: &str) -> String {
    let queue = unique_name("bound");
    declare_queue(channel, &queue).await;
    bind_queue(channel, &queue, exchange, key).await;
    queue
}

fn keys(keys: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(keys.iter().map(|key| text(key)).collect::<Vec<_>>().into())
}

fn with_headers(headers: &[(&str, AMQPValue)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(headers))
}

// ---------------------------------------------------------------------------------------
// Alternate exchanges.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unroutable_messages_go_to_the_alternate_exchange() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let alternate = unique_name("ae");
    let exchange = unique_name("with-ae");
    declare_exchange_with(&channel, &alternate, ExchangeKind::Fanout, table(&[])).await;
    declare_exchange_with(
        &channel,
        &exchange,
        ExchangeKind::Direct,
        with_alternate(&alternate),
    )
    .await;
    let routed = bound_queue(&channel, &exchange, "known").await;
    let caught = bound_queue(&channel, &alternate, "").await;

    publish(&channel, &exchange, "known", b"routed").await;
    publish(&channel, &exchange, "unknown", b"caught").await;
    assert_eq!(
        drain(&channel, &routed).await,
        [("routed".to_string(), false)]
    );
    let got = get(&channel, &caught)
        .await
        .expect("the unroutable message");
    assert_eq!(got.delivery.data, b"caught");
    // The message keeps the exchange and routing key it was published with.
    assert_eq!(got.delivery.exchange.as_str(), exchange);
    assert_eq!(got.delivery.routing_key.as_str(), "unknown");
    assert!(
        get(&channel, &caught).await.is_none(),
        "a routed message reached the AE"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alternate_exchanges_chain() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // first --(AE)--> second --(AE)--> last (fanout).
    let first = unique_name("ae-first");
    let second = unique_name("ae-second");
    let last = unique_name("ae-last");
    declare_exchange_with(&channel, &last, ExchangeKind::Fanout, table(&[])).await;
    declare_exchange_with(
        &channel,
        &second,
        ExchangeKind::Direct,
        with_alternate(&last),
    )
    .await;
    declare_exchange_with(
        &channel,
        &first,
        ExchangeKind::Direct,
        with_alternate(&second),
    )
    .await;
    let at_first = bound_queue(&channel, &first, "one").await;
    let at_second = bound_queue(&channel, &second, "two").await;
    let at_last = bound_queue(&channel, &last, "").await;
    for key in ["one", "two", "three"] {
        publish(&channel, &first, key, key.as_bytes()).await;
    }
    assert_eq!(
        drain(&channel, &at_first).await,
        [("one".to_string(), false)]
    );
    assert_eq!(
        drain(&channel, &at_second).await,
        [("two".to_string(), false)]
    );
    assert_eq!(
        drain(&channel, &at_last).await,
        [("three".to_string(), false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_is_not_returned_when_the_alternate_exchange_routes() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let alternate = unique_name("ae");
    let exchange = unique_name("with-ae");
    declare_exchange_with(&channel, &alternate, ExchangeKind::Fanout, table(&[])).await;
    declare_exchange_with(
        &channel,
        &exchange,
        ExchangeKind::Direct,
        with_alternate(&alternate),
    )
    .await;
    let caught = bound_queue(&channel, &alternate, "").await;
    let confirmation = publish_confirmed(
        &channel,
        &exchange,
        "unknown",
        mandatory(),
        b"caught",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(confirmation, Confirmation::Ack(None));
    assert_eq!(message_count(&channel, &caught).await, 1);
}

/// Publishes mandatory to `exchange` and asserts the message comes back as NO_ROUTE
/// naming that exchange.
async fn assert_returned(channel: &Channel, exchange: &str, key: &str) {
    let confirmation = publish_confirmed(
        channel,
        exchange,
        key,
        mandatory(),
        b"lost",
        BasicProperties::default(),
    )
    .await;
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(
        (
            returned.reply_code,
            returned.reply_text.as_str(),
            returned.delivery.exchange.as_str(),
            returned.delivery.routing_key.as_str(),
        ),
        (312, "NO_ROUTE", exchange, key)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_is_returned_when_the_alternate_exchange_does_not_route_either() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let alternate = unique_name("ae-unbound");
    let exchange = unique_name("with-ae");
    declare_exchange_with(&channel, &alternate, ExchangeKind::Direct, table(&[])).await;
    declare_exchange_with(
        &channel,
        &exchange,
        ExchangeKind::Direct,
        with_alternate(&alternate),
    )
    .await;
    assert_returned(&channel, &exchange, "nowhere").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_alternate_exchange_is_ignored() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("with-missing-ae");
    declare_exchange_with(
        &channel,
        &exchange,
        ExchangeKind::Direct,
        with_alternate(&unique_name("no-such-exchange")),
    )
    .await;
    let routed = bound_queue(&channel, &exchange, "known").await;
    assert_returned(&channel, &exchange, "unknown").await;
    publish(&channel, &exchange, "known", b"routed").await;
    assert_eq!(message_count(&channel, &routed).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alternate_exchange_cycle_ends() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    // Each is the other's alternate, and neither has bindings.
    let a = unique_name("ae-cycle-a");
    let b = unique_name("ae-cycle-b");
    declare_exchange_with(&channel, &a, ExchangeKind::Direct, with_alternate(&b)).await;
    declare_exchange_with(&channel, &b, ExchangeKind::Direct, with_alternate(&a)).await;
    assert_returned(&channel, &a, "nowhere").await;
    // With a binding on the second, the cycle still delivers once.
    let caught = bound_queue(&channel, &b, "here").await;
    publish(&channel, &a, "here", b"once").await;
    assert_eq!(
        drain(&channel, &caught).await,
        [("once".to_string(), false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alternate_exchange_must_be_a_string_and_is_compared_on_redeclare() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    for (value, type_name) in [(int(1), "signedint"), (AMQPValue::Boolean(true), "bool")] {
        let channel = common::channel(&conn).await;
        let name = unique_name("bad-ae");
        let result =
            declare_exchange(&channel, &name, table(&[("alternate-exchange", value)])).await;
        assert_amqp_error(
            result,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid type '{type_name}' for arg 'alternate-exchange' \
                 in exchange '{name}' in vhost '/'"
            ),
        );
    }
    let cases: [(&[&str], &[&str], &str, &str); 3] = [
        (&["a"], &["b"], "'b'", "'a'"),
        (&["a"], &[], "none", "the value 'a' of type 'longstr'"),
        (&[], &["a"], "the value 'a' of type 'longstr'", "none"),
    ];
    for (first, second, received, current) in cases {
        let name = unique_name("ae-redeclare");
        let args = |ae: &[&str]| match ae {
            [ae] => with_alternate(ae),
            _ => FieldTable::default(),
        };
        let channel = common::channel(&conn).await;
        declare_exchange(&channel, &name, args(first))
            .await
            .expect("first declare");
        let result = declare_exchange(&channel, &name, args(second)).await;
        assert_amqp_error(
            result,
            406,
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange \
                 '{name}' in vhost '/': received {received} but current is {current}"
            ),
        );
    }
    // Other arguments are not compared.
    let name = unique_name("other-args");
    let channel = common::channel(&conn).await;
    declare_exchange(&channel, &name, table(&[("x-whatever", int(1))]))
        .await
        .expect("first declare");
    declare_exchange(&channel, &name, table(&[("x-whatever", int(2))]))
        .await
        .expect("an unknown argument is not compared");
}

/// Declares a direct exchange with `args`; the broker's refusal is returned.
async fn declare_exchange(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// CC and BCC.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cc_and_bcc_route_copies_with_extra_routing_keys() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("sender-selected");
    declare_exchange_with(&channel, &exchange, ExchangeKind::Direct, table(&[])).await;
    let to = bound_queue(&channel, &exchange, "to").await;
    let cc = bound_queue(&channel, &exchange, "cc").await;
    let bcc = bound_queue(&channel, &exchange, "bcc").await;
    let other = bound_queue(&channel, &exchange, "other").await;
    let properties = with_headers(&[
        ("CC", keys(&["cc", "unbound"])),
        ("BCC", keys(&["bcc"])),
        ("app", text("kept")),
    ]);
    publish_with(&channel, &exchange, "to", b"memo", properties).await;
    for queue in [&to, &cc, &bcc] {
        let got = get(&channel, queue).await.expect("a copy");
        let delivery = &got.delivery;
        assert_eq!(delivery.data, b"memo");
        // Every copy carries the published routing key, whichever key routed it.
        assert_eq!(delivery.routing_key.as_str(), "to");
        let props = &delivery.properties;
        // CC is delivered as sent; BCC is removed from every copy.
        assert_eq!(header(props, "CC"), Some(&keys(&["cc", "unbound"])));
        assert_eq!(header(props, "BCC"), None, "BCC leaked to {queue}");
        assert_eq!(header_text(props, "app").as_deref(), Some("kept"));
        assert!(
            get(&channel, queue).await.is_none(),
            "{queue} got two copies"
        );
    }
    assert_eq!(message_count(&channel, &other).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_routes_through_the_default_exchange_and_a_queue_gets_one_copy() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let a = unique_name("cc-a");
    let b = unique_name("cc-b");
    declare_queue(&channel, &a).await;
    declare_queue(&channel, &b).await;
    // a is named by the routing key, CC and BCC; b by CC and BCC.
    let properties = with_headers(&[("CC", keys(&[&a, &b])), ("BCC", keys(&[&a, &b]))]);
    publish_with(&channel, "", &a, b"once each", properties).await;
    for queue in [&a, &b] {
        assert_eq!(
            drain(&channel, queue).await,
            [("once each".to_string(), false)]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_keys_match_topic_patterns() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("cc-topic");
    declare_exchange_with(&channel, &exchange, ExchangeKind::Topic, table(&[])).await;
    let stars = bound_queue(&channel, &exchange, "*.b").await;
    let hashes = bound_queue(&channel, &exchange, "x.#").await;
    let properties = with_headers(&[("CC", keys(&["a.b"])), ("BCC", keys(&["x.y.z"]))]);
    publish_with(
        &channel,
        &exchange,
        "no.match.here",
        b"patterned",
        properties,
    )
    .await;
    assert_eq!(message_count(&channel, &stars).await, 1);
    assert_eq!(message_count(&channel, &hashes).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_is_not_returned_when_only_cc_or_bcc_routes() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    for header_name in ["CC", "BCC"] {
        let queue = unique_name("cc-only");
        declare_queue(&channel, &queue).await;
        let confirmation = publish_confirmed(
            &channel,
            "",
            &unique_name("nowhere"),
            mandatory(),
            b"by cc",
            with_headers(&[(header_name, keys(&[&queue]))]),
        )
        .await;
        assert_eq!(confirmation, Confirmation::Ack(None), "{header_name}");
        assert_eq!(message_count(&channel, &queue).await, 1, "{header_name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_and_bcc_are_case_sensitive_and_skip_non_string_keys() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let target = unique_name("cc-target");
    let named = unique_name("cc-named");
    declare_queue(&channel, &target).await;
    declare_queue(&channel, &named).await;
    // Lower-case "cc" is an ordinary header.
    publish_with(
        &channel,
        "",
        &target,
        b"lower",
        with_headers(&[("cc", keys(&[&named]))]),
    )
    .await;
    assert_eq!(message_count(&channel, &named).await, 0);
    // An empty array routes nowhere extra; a non-string element is skipped.
    publish_with(
        &channel,
        "",
        &target,
        b"empty",
        with_headers(&[("CC", keys(&[]))]),
    )
    .await;
    let mixed = AMQPValue::FieldArray(vec![int(1), text(&named)].into());
    publish_with(
        &channel,
        "",
        &target,
        b"mixed",
        with_headers(&[("CC", mixed)]),
    )
    .await;
    assert_eq!(
        drain(&channel, &named).await,
        [("mixed".to_string(), false)]
    );
    assert_eq!(message_count(&channel, &target).await, 3);
}

/// Publishes with `headers` on a fresh channel and asserts the 406 RabbitMQ answers for
/// a CC or BCC header that is not an array.
async fn assert_bad_header(conn: &Connection, name: &str, value: AMQPValue, type_name: &str) {
    let channel = common::channel(conn).await;
    let queue = unique_name("bad-cc");
    declare_queue(&channel, &queue).await;
    let result = publish_confirmed_or_closed(
        &channel,
        "",
        &queue,
        BasicPublishOptions::default(),
        b"x",
        with_headers(&[(name, value)]),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid message: \
             {{unacceptable_type_in_header,\"{name}\",{type_name}}}"
        ),
    );
    let channel = common::channel(conn).await;
    assert_eq!(
        message_count(&channel, &queue).await,
        0,
        "the message was kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_or_bcc_other_than_an_array_closes_the_channel() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    assert_bad_header(&conn, "CC", text("key"), "longstr").await;
    assert_bad_header(&conn, "BCC", text("key"), "longstr").await;
    assert_bad_header(&conn, "CC", int(1), "signedint").await;
    assert_bad_header(&conn, "CC", AMQPValue::Void, "void").await;
}

async fn declare_auto_delete(channel: &Channel, name: &str) {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare an auto-delete exchange");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_delete_exchange_goes_with_its_last_binding() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    // Never bound: it stays.
    let idle = unique_name("ad-idle");
    declare_auto_delete(&channel, &idle).await;
    let queue = unique_name("ad-q");
    declare_queue(&channel, &queue).await;
    assert!(exchange_exists(&conn, &idle).await);

    // Unbinding the last queue deletes it.
    let unbound = unique_name("ad-unbind");
    declare_auto_delete(&channel, &unbound).await;
    bind_queue(&channel, &queue, &unbound, "a").await;
    bind_queue(&channel, &queue, &unbound, "b").await;
    within(
        "queue.unbind",
        channel.queue_unbind(
            queue.as_str().into(),
            unbound.as_str().into(),
            "a".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind a");
    assert!(
        exchange_exists(&conn, &unbound).await,
        "one binding is left"
    );
    within(
        "queue.unbind",
        channel.queue_unbind(
            queue.as_str().into(),
            unbound.as_str().into(),
            "b".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind b");
    assert!(
        !exchange_exists(&conn, &unbound).await,
        "the last binding went"
    );

    // Deleting the bound queue deletes it too.
    let by_queue = unique_name("ad-queue-gone");
    declare_auto_delete(&channel, &by_queue).await;
    bind_queue(&channel, &queue, &by_queue, "k").await;
    within(
        "queue.delete",
        channel.queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        ),
    )
    .await
    .expect("delete the queue");
    assert!(!exchange_exists(&conn, &by_queue).await);
    assert!(exchange_exists(&conn, &idle).await, "the unbound one stays");
}
