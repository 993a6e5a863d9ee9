//! Queue arguments (the `x-` extensions): which types and values `queue.declare` accepts,
//! the exact 406 RabbitMQ answers for the rest, and argument equivalence on redeclare.
//!
//! The texts are RabbitMQ 3.10's. Its check order is fixed (x-expires, x-message-ttl,
//! x-dead-letter-exchange, x-dead-letter-routing-key, x-max-length, x-max-length-bytes,
//! x-max-priority, x-overflow, x-queue-mode, x-single-active-consumer, x-queue-type), so
//! with several bad arguments the first in that order is reported.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::QueueDeclareOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, Queue};

/// A queue's arguments, as `(key, value)` pairs.
type Args = Vec<(&'static str, AMQPValue)>;

/// RabbitMQ's ceiling for x-message-ttl and x-expires: ten years in milliseconds.
const TEN_YEARS_MS: i64 = 315_360_000_000;

/// Declares a fresh queue with `args` on a throwaway channel of `conn`.
async fn declare_fresh(
    conn: &Connection,
    args: &[(&str, AMQPValue)],
) -> (String, lapin::Result<Queue>) {
    let channel = channel(conn).await;
    let name = unique_name("qargs");
    let result = declare_queue_with(&channel, &name, table(args)).await;
    (name, result)
}

/// Asserts that declaring a queue with `args` is refused with a 406 whose text is
/// `expected(queue name)`, and that no queue was made.
async fn assert_refused(
    conn: &Connection,
    args: &[(&str, AMQPValue)],
    expected: impl Fn(&str) -> String,
) {
    let (name, result) = declare_fresh(conn, args).await;
    assert_amqp_error(result, 406, &expected(&name));
    assert!(
        !queue_exists(conn, &name).await,
        "a refused declare made {name}"
    );
}

/// Asserts that declaring a queue with `args` succeeds.
async fn assert_accepted(conn: &Connection, args: &[(&str, AMQPValue)]) {
    let (name, result) = declare_fresh(conn, args).await;
    if let Err(err) = result {
        panic!("declaring {name} with {args:?} failed: {err:?}");
    }
}

/// The text of RabbitMQ's refusal of one argument: `detail` is the Erlang term it prints.
fn invalid_arg(key: &str, detail: &str) -> impl Fn(&str) -> String {
    let (key, detail) = (key.to_owned(), detail.to_owned());
    move |queue| {
        format!(
            "PRECONDITION_FAILED - invalid arg '{key}' for queue '{queue}' in vhost '/': {detail}"
        )
    }
}

/// RabbitMQ prints a type error as a quoted Erlang string.
fn expected_integer(got: &str) -> String {
    format!("\"expected integer, got {got}\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn message_ttl_must_be_a_non_negative_integer_up_to_ten_years() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-message-ttl";
    for (value, type_name) in [
        (text("100"), "longstr"),
        (AMQPValue::Boolean(true), "bool"),
        (AMQPValue::Double(1.5), "double"),
        (AMQPValue::Void, "void"),
    ] {
        assert_refused(
            &conn,
            &[(key, value)],
            invalid_arg(key, &expected_integer(type_name)),
        )
        .await;
    }
    assert_refused(
        &conn,
        &[(key, int(-1))],
        invalid_arg(key, "{value_negative,-1}"),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, AMQPValue::LongLongInt(TEN_YEARS_MS + 1))],
        invalid_arg(key, "{value_too_large,315360000001}"),
    )
    .await;
    // Any integer type will do, and 0 is a valid TTL.
    for value in [
        int(0),
        AMQPValue::ShortShortUInt(5),
        AMQPValue::ShortInt(5),
        AMQPValue::LongUInt(5),
        AMQPValue::LongLongInt(TEN_YEARS_MS),
    ] {
        assert_accepted(&conn, &[(key, value)]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expires_must_be_a_positive_integer_up_to_ten_years() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-expires";
    assert_refused(
        &conn,
        &[(key, text("100"))],
        invalid_arg(key, &expected_integer("longstr")),
    )
    .await;
    assert_refused(&conn, &[(key, int(0))], invalid_arg(key, "{value_zero,0}")).await;
    assert_refused(
        &conn,
        &[(key, int(-1))],
        invalid_arg(key, "{value_negative,-1}"),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, AMQPValue::LongLongInt(TEN_YEARS_MS + 1))],
        invalid_arg(key, "{value_too_large,315360000001}"),
    )
    .await;
    assert_accepted(&conn, &[(key, int(1))]).await;
    assert_accepted(&conn, &[(key, AMQPValue::LongLongInt(TEN_YEARS_MS))]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_and_max_length_bytes_must_be_non_negative_integers() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    for key in ["x-max-length", "x-max-length-bytes"] {
        assert_refused(
            &conn,
            &[(key, text("10"))],
            invalid_arg(key, &expected_integer("longstr")),
        )
        .await;
        assert_refused(
            &conn,
            &[(key, int(-1))],
            invalid_arg(key, "{value_negative,-1}"),
        )
        .await;
        // 0 is a limit (nothing fits); there is no upper bound.
        assert_accepted(&conn, &[(key, int(0))]).await;
        assert_accepted(&conn, &[(key, AMQPValue::LongLongInt(1 << 62))]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_must_be_a_known_behaviour() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-overflow";
    for value in ["bogus", "", "Drop-Head"] {
        assert_refused(
            &conn,
            &[(key, text(value))],
            invalid_arg(key, "invalid_overflow"),
        )
        .await;
    }
    assert_refused(
        &conn,
        &[(key, int(1))],
        invalid_arg(key, "{unacceptable_type,signedint}"),
    )
    .await;
    for value in ["drop-head", "reject-publish", "reject-publish-dlx"] {
        assert_accepted(&conn, &[(key, text(value))]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_exchange_must_be_a_string() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    // Worded unlike the other argument errors.
    assert_refused(&conn, &[("x-dead-letter-exchange", int(1))], |queue| {
        format!(
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' \
             in queue '{queue}' in vhost '/'"
        )
    })
    .await;
    // The exchange need not exist (nor be the default exchange's empty name) to declare.
    assert_accepted(&conn, &[("x-dead-letter-exchange", text(""))]).await;
    assert_accepted(
        &conn,
        &[("x-dead-letter-exchange", text(&unique_name("no-such-dlx")))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_routing_key_needs_a_dead_letter_exchange() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-dead-letter-routing-key";
    assert_refused(
        &conn,
        &[(key, text("somewhere"))],
        invalid_arg(key, "routing_key_but_no_dlx_defined"),
    )
    .await;
    assert_refused(
        &conn,
        &[("x-dead-letter-exchange", text("")), (key, int(1))],
        invalid_arg(key, "{unacceptable_type,signedint}"),
    )
    .await;
    // A bad type is reported before the missing exchange.
    assert_refused(
        &conn,
        &[(key, int(1))],
        invalid_arg(key, "{unacceptable_type,signedint}"),
    )
    .await;
    assert_accepted(
        &conn,
        &[
            ("x-dead-letter-exchange", text("")),
            (key, text("somewhere")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_priority_must_be_an_integer_from_0_to_255() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-max-priority";
    assert_refused(
        &conn,
        &[(key, text("5"))],
        invalid_arg(key, &expected_integer("longstr")),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, AMQPValue::Double(1.0))],
        invalid_arg(key, &expected_integer("double")),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, int(-1))],
        invalid_arg(key, "{value_negative,-1}"),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, int(256))],
        invalid_arg(key, "{max_value_exceeded,256}"),
    )
    .await;
    for value in [0, 1, 255] {
        assert_accepted(&conn, &[(key, int(value))]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_type_must_be_a_known_type() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-queue-type";
    assert_refused(
        &conn,
        &[(key, text("bogus"))],
        invalid_arg(key, "\"unsupported queue type 'bogus'\""),
    )
    .await;
    assert_refused(
        &conn,
        &[(key, int(1))],
        invalid_arg(key, "{unacceptable_type,signedint}"),
    )
    .await;
    assert_accepted(&conn, &[(key, text("classic"))]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn single_active_consumer_must_be_a_bool() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-single-active-consumer";
    for (value, type_name) in [
        (text("true"), "longstr"),
        (int(1), "signedint"),
        (AMQPValue::Void, "void"),
    ] {
        assert_refused(
            &conn,
            &[(key, value)],
            invalid_arg(key, &format!("{{unacceptable_type,{type_name}}}")),
        )
        .await;
    }
    assert_accepted(&conn, &[(key, AMQPValue::Boolean(true))]).await;
    assert_accepted(&conn, &[(key, AMQPValue::Boolean(false))]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_bad_argument_in_check_order_is_reported() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    // x-expires is checked before x-message-ttl and x-max-length, whatever the table's
    // order (a field table is sorted by key on the wire anyway).
    assert_refused(
        &conn,
        &[("x-message-ttl", int(-1)), ("x-expires", int(0))],
        invalid_arg("x-expires", "{value_zero,0}"),
    )
    .await;
    assert_refused(
        &conn,
        &[("x-max-length", int(-1)), ("x-message-ttl", int(-1))],
        invalid_arg("x-message-ttl", "{value_negative,-1}"),
    )
    .await;
    assert_refused(
        &conn,
        &[("x-overflow", text("bogus")), ("x-max-priority", int(300))],
        invalid_arg("x-max-priority", "{max_value_exceeded,300}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_arguments_are_accepted_and_not_compared() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("unknown-arg");
    declare_queue_with(&channel, &name, table(&[("x-bogus", int(1))]))
        .await
        .expect("declare with an unknown argument");
    declare_queue_with(&channel, &name, table(&[("x-bogus", text("other"))]))
        .await
        .expect("redeclare with another value of the unknown argument");
    declare_queue_with(&channel, &name, table(&[]))
        .await
        .expect("redeclare without it");
}

/// Declares `name` with `first`, then redeclares it with `second` on a fresh channel and
/// returns that outcome.
async fn redeclare(
    conn: &Connection,
    name: &str,
    first: &[(&str, AMQPValue)],
    second: &[(&str, AMQPValue)],
) -> lapin::Result<Queue> {
    let channel = channel(conn).await;
    declare_queue_with(&channel, name, table(first))
        .await
        .expect("first declare");
    let channel = common::channel(conn).await;
    declare_queue_with(&channel, name, table(second)).await
}

fn inequivalent(key: &str, queue: &str, received: &str, current: &str) -> String {
    format!(
        "PRECONDITION_FAILED - inequivalent arg '{key}' for queue '{queue}' in vhost '/': \
         received {received} but current is {current}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclare_with_another_message_ttl_is_inequivalent() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let key = "x-message-ttl";
    let q = unique_name("ttl-diff");
    let result = redeclare(&conn, &q, &[(key, int(1000))], &[(key, int(2000))]).await;
    assert_amqp_error(result, 406, &inequivalent(key, &q, "'2000'", "'1000'"));

    // Missing on either side: the present side is named with its type.
    let q = unique_name("ttl-missing");
    let result = redeclare(&conn, &q, &[(key, int(1000))], &[]).await;
    assert_amqp_error(
        result,
        406,
        &inequivalent(key, &q, "none", "the value '1000' of type 'signedint'"),
    );
    let q = unique_name("ttl-added");
    let result = redeclare(&conn, &q, &[], &[(key, AMQPValue::LongLongInt(1000))]).await;
    assert_amqp_error(
        result,
        406,
        &inequivalent(key, &q, "the value '1000' of type 'long'", "none"),
    );

    // Equivalence compares values, not integer types; a string is never an integer.
    let q = unique_name("ttl-types");
    redeclare(
        &conn,
        &q,
        &[(key, int(1000))],
        &[(key, AMQPValue::LongLongInt(1000))],
    )
    .await
    .expect("the same TTL as a long");
    let channel = channel(&conn).await;
    declare_queue_with(&channel, &q, table(&[(key, AMQPValue::ShortInt(1000))]))
        .await
        .expect("the same TTL as a short");
    let result = declare_queue_with(&channel, &q, table(&[(key, text("1000"))])).await;
    assert_amqp_error(result, 406, &inequivalent(key, &q, "'1000'", "'1000'"));

    // Equivalence is checked before validity.
    let q = unique_name("ttl-invalid");
    let result = redeclare(&conn, &q, &[(key, int(1000))], &[(key, int(-1))]).await;
    assert_amqp_error(result, 406, &inequivalent(key, &q, "'-1'", "'1000'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclare_compares_every_known_argument() {
    let server = TestServer::start().await;
    let (conn, _) = open(&server).await;
    let dlx = ("x-dead-letter-exchange", text("a"));
    // (argument, first declare, redeclare, received, current)
    let cases: Vec<(&str, Args, Args, &str, &str)> = vec![
        (
            "x-max-length",
            vec![("x-max-length", int(1))],
            vec![("x-max-length", int(2))],
            "'2'",
            "'1'",
        ),
        (
            "x-max-length-bytes",
            vec![("x-max-length-bytes", int(1))],
            vec![("x-max-length-bytes", int(2))],
            "'2'",
            "'1'",
        ),
        (
            "x-expires",
            vec![("x-expires", int(100_000))],
            vec![("x-expires", int(200_000))],
            "'200000'",
            "'100000'",
        ),
        (
            "x-dead-letter-exchange",
            vec![dlx.clone()],
            vec![("x-dead-letter-exchange", text("b"))],
            "'b'",
            "'a'",
        ),
        (
            "x-dead-letter-routing-key",
            vec![dlx.clone(), ("x-dead-letter-routing-key", text("a"))],
            vec![dlx.clone(), ("x-dead-letter-routing-key", text("b"))],
            "'b'",
            "'a'",
        ),
        (
            "x-overflow",
            vec![("x-overflow", text("drop-head"))],
            vec![("x-overflow", text("reject-publish"))],
            "'reject-publish'",
            "'drop-head'",
        ),
        // The default, spelled out, is not the same as absent.
        (
            "x-overflow",
            vec![],
            vec![("x-overflow", text("drop-head"))],
            "the value 'drop-head' of type 'longstr'",
            "none",
        ),
        (
            "x-max-priority",
            vec![("x-max-priority", int(5))],
            vec![("x-max-priority", int(6))],
            "'6'",
            "'5'",
        ),
        (
            "x-single-active-consumer",
            vec![("x-single-active-consumer", AMQPValue::Boolean(true))],
            vec![("x-single-active-consumer", AMQPValue::Boolean(false))],
            "'false'",
            "'true'",
        ),
        (
            "x-single-active-consumer",
            vec![("x-single-active-consumer", AMQPValue::Boolean(true))],
            vec![],
            "none",
            "the value 'true' of type 'bool'",
        ),
    ];
    for (key, first, second, received, current) in cases {
        let q = unique_name("inequivalent");
        let result = redeclare(&conn, &q, &first, &second).await;
        assert_amqp_error(result, 406, &inequivalent(key, &q, received, current));
    }
    // x-queue-type classic on a queue declared without a type is the same queue.
    let q = unique_name("classic");
    redeclare(&conn, &q, &[], &[("x-queue-type", text("classic"))])
        .await
        .expect("classic is the default type");
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declare_ignores_arguments() {
    let server = TestServer::start().await;
    let (_conn, channel) = open(&server).await;
    let name = unique_name("passive-args");
    declare_queue_with(&channel, &name, table(&[("x-message-ttl", int(1000))]))
        .await
        .expect("declare");
    let queue = within(
        "passive queue.declare",
        channel.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            table(&[("x-message-ttl", int(-1)), ("x-max-priority", text("x"))]),
        ),
    )
    .await
    .expect("passive declare with other (and invalid) arguments");
    assert_eq!(queue.name().as_str(), name);
}
