//! Exchanges: the predeclared ones, routing by type (direct, fanout, topic, headers),
//! declare (passive, equivalence), delete (if-unused), bind/unbind, reserved names.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare an exchange");
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .expect("bind");
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Publishes one message per key on `channel` (in confirm mode: each publish returns
/// once routed), and returns which of `queues` got which bodies (bodies are the keys).
async fn route(
    channel: &Channel,
    exchange: &str,
    keys: &[&str],
    queues: &[&str],
) -> Vec<Vec<String>> {
    for key in keys {
        publish(channel, exchange, key, key.as_bytes()).await;
    }
    assert!(
        channel.status().confirm(),
        "route() needs a confirm-mode channel"
    );
    let mut out = Vec::new();
    for queue in queues {
        out.push(drain_bodies(channel, queue).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn predeclared_exchanges_exist() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        within(
            "passive exchange.declare",
            channel.exchange_declare(name.into(), kind, passive(), FieldTable::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} missing: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn default_exchange_routes_by_queue_name() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("default-ex");
    declare_queue(&channel, &queue).await;
    let got = route(
        &channel,
        "",
        &[queue.as_str(), "no-such-queue-here"],
        &[&queue],
    )
    .await;
    assert_eq!(got, vec![vec![queue.clone()]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_exchange_cannot_be_bound_or_deleted() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    let result = within(
        "queue.bind to the default exchange",
        channel.queue_bind(
            queue.as_str().into(),
            "".into(),
            "key".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    let channel = common::channel(&conn).await;
    let result = within(
        "exchange.delete of the default exchange",
        channel.exchange_delete("".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_exchange_routes_on_exact_key() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("direct");
    declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
    let (a, b) = (unique_name("a"), unique_name("b"));
    declare_queue(&channel, &a).await;
    declare_queue(&channel, &b).await;
    bind(&channel, &a, &exchange, "red", FieldTable::default()).await;
    bind(&channel, &b, &exchange, "green", FieldTable::default()).await;
    bind(&channel, &b, &exchange, "red", FieldTable::default()).await;
    let got = route(
        &channel,
        &exchange,
        &["red", "green", "blue", "RED"],
        &[&a, &b],
    )
    .await;
    assert_eq!(got, vec![vec!["red"], vec!["red", "green"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn amq_direct_routes_like_a_direct_exchange() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("amq-direct");
    declare_queue(&channel, &queue).await;
    let key = unique_name("key");
    bind(&channel, &queue, "amq.direct", &key, FieldTable::default()).await;
    let got = route(&channel, "amq.direct", &[key.as_str(), "other"], &[&queue]).await;
    assert_eq!(got, vec![vec![key.clone()]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fanout_exchange_ignores_the_key() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("fanout");
    declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
    let (a, b) = (unique_name("a"), unique_name("b"));
    declare_queue(&channel, &a).await;
    declare_queue(&channel, &b).await;
    bind(&channel, &a, &exchange, "", FieldTable::default()).await;
    bind(&channel, &b, &exchange, "whatever", FieldTable::default()).await;
    let got = route(&channel, &exchange, &["x", "y"], &[&a, &b]).await;
    assert_eq!(got, vec![vec!["x", "y"], vec!["x", "y"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_bound_twice_gets_one_copy() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("topic");
    declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    bind(&channel, &queue, &exchange, "a.*", FieldTable::default()).await;
    bind(&channel, &queue, &exchange, "#", FieldTable::default()).await;
    bind(&channel, &queue, &exchange, "a.b", FieldTable::default()).await;
    let got = route(&channel, &exchange, &["a.b"], &[&queue]).await;
    assert_eq!(got, vec![vec!["a.b"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_exchange_matches_star_and_hash() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("topic");
    declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    let patterns = [
        "*.orange.*",
        "*.*.rabbit",
        "lazy.#",
        "#",
        "a.#.z",
        "*",
        "#.end",
        "exact.key",
    ];
    let mut queues = Vec::new();
    for pattern in patterns {
        let queue = unique_name("topic-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &exchange, pattern, FieldTable::default()).await;
        queues.push(queue);
    }
    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy",
        "quick.brown.fox",
        "orange",
        "quick.orange.male.rabbit",
        "a.z",
        "a.b.c.z",
        "a.b.c",
        "end",
        "x.y.end",
        "exact.key",
        "",
    ];
    let refs: Vec<&str> = queues.iter().map(String::as_str).collect();
    let got = route(&channel, &exchange, &keys, &refs).await;
    let expected: Vec<Vec<&str>> = vec![
        // *.orange.*
        vec![
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
        ],
        // *.*.rabbit
        vec!["quick.orange.rabbit"],
        // lazy.# (# matches zero words too)
        vec!["lazy.orange.elephant", "lazy.brown.fox", "lazy"],
        // # matches everything, the empty key included
        keys.to_vec(),
        // a.#.z
        vec!["a.z", "a.b.c.z"],
        // * is exactly one non-empty word: the empty key does not match
        vec!["lazy", "orange", "end"],
        // #.end
        vec!["end", "x.y.end"],
        // no wildcard
        vec!["exact.key"],
    ];
    for ((pattern, got), expected) in patterns.iter().zip(&got).zip(&expected) {
        assert_eq!(got, expected, "pattern {pattern:?}");
    }
}

fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    table
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_exchange_matches_all_and_any() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("headers");
    declare_exchange(&channel, &exchange, ExchangeKind::Headers).await;
    let (all, any, default_all) = (unique_name("all"), unique_name("any"), unique_name("dflt"));
    for q in [&all, &any, &default_all] {
        declare_queue(&channel, q).await;
    }
    bind(
        &channel,
        &all,
        &exchange,
        "",
        headers(&[("x-match", "all"), ("format", "pdf"), ("type", "report")]),
    )
    .await;
    bind(
        &channel,
        &any,
        &exchange,
        "",
        headers(&[("x-match", "any"), ("format", "pdf"), ("type", "report")]),
    )
    .await;
    // Without x-match, "all" applies.
    bind(
        &channel,
        &default_all,
        &exchange,
        "",
        headers(&[("format", "pdf"), ("type", "report")]),
    )
    .await;

    let messages: [(&str, &[(&str, &str)]); 5] = [
        ("both", &[("format", "pdf"), ("type", "report")]),
        (
            "both-plus",
            &[("format", "pdf"), ("type", "report"), ("extra", "1")],
        ),
        ("format-only", &[("format", "pdf")]),
        ("wrong-value", &[("format", "zip"), ("type", "log")]),
        ("none", &[]),
    ];
    for (body, pairs) in messages {
        publish_with(
            &channel,
            &exchange,
            "ignored-key",
            body.as_bytes(),
            BasicProperties::default().with_headers(headers(pairs)),
        )
        .await;
    }
    let got = route(&channel, &exchange, &[], &[&all, &any, &default_all]).await;
    assert_eq!(got[0], vec!["both", "both-plus"], "x-match all");
    assert_eq!(
        got[1],
        vec!["both", "both-plus", "format-only"],
        "x-match any"
    );
    assert_eq!(got[2], vec!["both", "both-plus"], "x-match defaults to all");
}

#[tokio::test(flavor = "multi_thread")]
async fn amq_match_is_a_headers_exchange() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let queue = unique_name("match");
    declare_queue(&channel, &queue).await;
    let tag = unique_name("tag");
    bind(
        &channel,
        &queue,
        "amq.match",
        "",
        headers(&[("x-match", "any"), ("tag", &tag)]),
    )
    .await;
    for (body, value) in [("yes", tag.as_str()), ("no", "other")] {
        publish_with(
            &channel,
            "amq.match",
            "",
            body.as_bytes(),
            BasicProperties::default().with_headers(headers(&[("tag", value)])),
        )
        .await;
    }
    let got = route(&channel, "amq.match", &[], &[&queue]).await;
    assert_eq!(got, vec![vec!["yes"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("missing-ex");
    let result = within(
        "passive exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclare_with_another_type_or_durability_is_406() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("equiv");
    declare_exchange(&channel, &name, ExchangeKind::Direct).await;
    // The same declaration again is fine, and a passive one with any type too.
    declare_exchange(&channel, &name, ExchangeKind::Direct).await;
    within(
        "passive exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive ignores the type");

    let result = within(
        "exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost \
             '/': received 'fanout' but current is 'direct'"
        ),
    );

    let channel = common::channel(&conn).await;
    let result = within(
        "exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{name}' in \
             vhost '/': received 'true' but current is 'false'"
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_exchange_type_is_refused() {
    // RabbitMQ 3.10: 503 COMMAND_INVALID, closing the connection. RabbitMQ 4.0+
    // (commit b6aacb7, "a precondition failure, not an invalid command that closes the
    // whole connection"): 406 PRECONDITION_FAILED on the channel only. The text is the
    // same; Warren should follow 4.x (406), and either passes here.
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = unique_name("weird");
    let result = within(
        "exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Custom("no-such-type".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let err = result.expect_err("an unknown type is refused");
    match amqp_error(&err) {
        Some((406, text)) => {
            assert_eq!(
                text,
                "PRECONDITION_FAILED - unknown exchange type 'no-such-type'"
            );
            // Only the channel is closed.
            let other = common::channel(&conn).await;
            declare_queue(&other, &unique_name("after")).await;
        }
        Some((503, text)) => {
            assert_eq!(
                text,
                "COMMAND_INVALID - unknown exchange type 'no-such-type'"
            );
            assert!(
                integration_tests::wait_for(BOUND, || async { !conn.status().connected() }).await,
                "503 closes the connection"
            );
        }
        other => panic!("unexpected error {other:?} ({err:?})"),
    }
    // Nothing was declared.
    let (_conn, channel) = open(&server).await;
    let result = within(
        "passive exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_names_starting_amq_are_reserved() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let name = format!("amq.{}", unique_name("custom"));
    let result = within(
        "exchange.declare",
        channel.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        &format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"),
    );
    // Redeclaring a predeclared one with its exact properties is fine (an existing
    // exchange is only checked for equivalence) ...
    let channel = common::channel(&conn).await;
    within(
        "exchange.declare",
        channel.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("an equivalent redeclare of amq.direct");
    // ... and with other properties it is the usual equivalence error.
    let result = within(
        "exchange.declare",
        channel.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in \
         vhost '/': received 'false' but current is 'true'",
    );
    let channel = common::channel(&conn).await;
    let result = within(
        "exchange.delete",
        channel.exchange_delete("amq.fanout".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_amqp_error(
        result,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_if_unused_refuses_a_bound_exchange() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let exchange = unique_name("in-use");
    declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    bind(&channel, &queue, &exchange, "", FieldTable::default()).await;
    let result = within(
        "exchange.delete",
        channel.exchange_delete(
            exchange.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..ExchangeDeleteOptions::default()
            },
        ),
    )
    .await;
    assert_amqp_error(
        result,
        406,
        &format!("PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use"),
    );
    // Unbound, it can go.
    let channel = common::channel(&conn).await;
    within(
        "queue.unbind",
        channel.queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind");
    within(
        "exchange.delete",
        channel.exchange_delete(
            exchange.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..ExchangeDeleteOptions::default()
            },
        ),
    )
    .await
    .expect("delete an unused exchange");
    let result = within(
        "passive exchange.declare",
        channel.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_exchange_removes_its_bindings_and_missing_ones_delete_fine() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("gone");
    declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    bind(&channel, &queue, &exchange, "", FieldTable::default()).await;
    within(
        "exchange.delete",
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete");
    // Deleting it again (now missing) succeeds.
    within(
        "exchange.delete",
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("deleting a missing exchange succeeds");
    // Re-created, it has no bindings left.
    declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
    let got = route(&channel, &exchange, &["x"], &[&queue]).await;
    assert_eq!(got, vec![Vec::<String>::new()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unbind_stops_routing_and_unbinding_a_missing_binding_succeeds() {
    let server = TestServer::start().await;
    let (_conn, channel) = open_confirm(&server).await;
    let exchange = unique_name("unbind");
    declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    bind(&channel, &queue, &exchange, "k", FieldTable::default()).await;
    let got = route(&channel, &exchange, &["k"], &[&queue]).await;
    assert_eq!(got, vec![vec!["k"]]);
    for _ in 0..2 {
        within(
            "queue.unbind",
            channel.queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "k".into(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("unbind (twice: the second has nothing to remove)");
    }
    let got = route(&channel, &exchange, &["k"], &[&queue]).await;
    assert_eq!(got, vec![Vec::<String>::new()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_to_a_missing_exchange_or_queue_is_404() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let queue = unique_name("q");
    declare_queue(&channel, &queue).await;
    let missing_ex = unique_name("no-ex");
    let result = within(
        "queue.bind",
        channel.queue_bind(
            queue.as_str().into(),
            missing_ex.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{missing_ex}' in vhost '/'"),
    );

    let channel = common::channel(&conn).await;
    let missing_q = unique_name("no-q");
    let result = within(
        "queue.bind",
        channel.queue_bind(
            missing_q.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no queue '{missing_q}' in vhost '/'"),
    );

    let channel = common::channel(&conn).await;
    let result = within(
        "queue.bind",
        channel.queue_bind(
            missing_q.as_str().into(),
            missing_ex.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        // RabbitMQ names only the exchange when both are missing.
        &format!("NOT_FOUND - no exchange '{missing_ex}' in vhost '/'"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let server = TestServer::start().await;
    let (conn, channel) = open(&server).await;
    let missing = unique_name("no-ex");
    let result = publish_confirmed_or_closed(
        &channel,
        &missing,
        "k",
        lapin::options::BasicPublishOptions::default(),
        b"lost",
        BasicProperties::default(),
    )
    .await;
    assert_amqp_error(
        result,
        404,
        &format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    );
    // The connection and its other channels are unaffected.
    let other = common::channel(&conn).await;
    declare_queue(&other, &unique_name("after")).await;
}
