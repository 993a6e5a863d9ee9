//! Users, virtual hosts and permissions as RabbitMQ has them (issue 15): logins against
//! RabbitMQ's password hashes, `connection.open` refused with 530 for a missing vhost
//! or one the user may not use, and every method checked for its permission, refused
//! with 403 and RabbitMQ's texts (docs/security-rabbitmq-facts.md). The users come from
//! a RabbitMQ definitions file given with `--load-definitions`.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren::access::password::{Algorithm, PasswordHash};

/// A definitions file as RabbitMQ exports one: guest with every permission in `/`;
/// `limited` who may configure, write and read only names starting `lim-` (and write to
/// the default exchange); `sha512`, whose hash is SHA-512 with a salt of our choosing;
/// `topical`, with topic permissions on `amq.topic`; `impostor`, an impersonator; and a
/// vhost `other` where only guest may go.
fn definitions() -> String {
    let sha512 = PasswordHash::with_salt(Algorithm::Sha512, [1, 2, 3, 4], "pw512");
    let full = |user: &str, vhost: &str| {
        format!(
            r#"{{"user":"{user}","vhost":"{vhost}","configure":".*","write":".*","read":".*"}}"#
        )
    };
    format!(
        r#"{{
  "rabbit_version": "3.10.8",
  "users": [
    {{"name": "guest", "password": "guest", "tags": ["administrator"]}},
    {{"name": "limited", "password": "pw", "tags": []}},
    {{"name": "sha512", "password_hash": "{hash}", "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": ""}},
    {{"name": "topical", "password": "pw", "tags": []}},
    {{"name": "impostor", "password": "pw", "tags": ["impersonator"]}}
  ],
  "vhosts": [{{"name": "/"}}, {{"name": "other"}}],
  "permissions": [
    {guest},
    {guest_other},
    {{"user": "limited", "vhost": "/", "configure": "^lim-", "write": "^(lim-|amq\\.default$)", "read": "^lim-"}},
    {sha},
    {topical},
    {impostor}
  ],
  "topic_permissions": [
    {{"user": "topical", "vhost": "/", "exchange": "amq.topic", "write": "^{{username}}\\.", "read": "^public\\."}}
  ],
  "exchanges": [{{"name": "preloaded-x", "vhost": "/", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {{}}}}],
  "queues": [{{"name": "preloaded", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {{"x-max-length": 5}}}}],
  "bindings": [{{"source": "preloaded-x", "vhost": "/", "destination": "preloaded", "destination_type": "queue", "routing_key": "", "arguments": {{}}}}]
}}"#,
        hash = sha512.to_base64(),
        guest = full("guest", "/"),
        guest_other = full("guest", "other"),
        sha = full("sha512", "/"),
        topical = full("topical", "/"),
        impostor = full("impostor", "/"),
    )
}

async fn server() -> TestServer {
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("warren-defs")));
    std::fs::write(&file, definitions()).expect("write the definitions");
    TestServer::start_with(move |c| c.load_definitions = Some(file)).await
}

async fn login(
    server: &TestServer,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    connect_uri(&uri_with(server, user, pass, vhost, "")).await
}

fn refused(perm: &str, kind: &str, name: &str, user: &str) -> String {
    format!(
        "ACCESS_REFUSED - {perm} access to {kind} '{name}' in vhost '/' refused for user '{user}'"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn users_log_in_with_rabbitmqs_hashes_and_only_into_vhosts_they_may_use() {
    let server = server().await;
    login(&server, "sha512", "pw512", "%2f")
        .await
        .expect("a SHA-512 hash logs in");
    login(&server, "limited", "pw", "%2f")
        .await
        .expect("a clear password, hashed on import");
    let bad = login(&server, "limited", "nope", "%2f").await;
    assert_amqp_error(
        bad,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    assert_amqp_error(
        login(&server, "nobody", "pw", "%2f").await,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    assert_amqp_error(
        login(&server, "limited", "pw", "other").await,
        530,
        "NOT_ALLOWED - access to vhost 'other' refused for user 'limited'",
    );
    assert_amqp_error(
        login(&server, "guest", "guest", "missing").await,
        530,
        "NOT_ALLOWED - vhost missing not found",
    );
    login(&server, "guest", "guest", "other")
        .await
        .expect("guest may use other");
    // The file's topology was declared too.
    let admin = server.connect().await;
    let ch = channel(&admin).await;
    publish(&ch, "preloaded-x", "", b"from the file's binding").await;
    wait_for_count(&ch, "preloaded", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_method_needs_its_permission() {
    let server = server().await;
    let admin = server.connect().await;
    let admin_channel = channel(&admin).await;
    declare_queue(&admin_channel, "not-mine").await;
    declare_exchange_with(
        &admin_channel,
        "x-not-mine",
        lapin::ExchangeKind::Direct,
        FieldTable::default(),
    )
    .await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");

    // Declare and delete: configure.
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_declare("q".into(), Default::default(), FieldTable::default())
            .await,
        403,
        &refused("configure", "queue", "q", "limited"),
    );
    let ch = channel(&conn).await;
    declare_queue(&ch, "lim-q").await;
    assert_amqp_error(
        ch.queue_delete("not-mine".into(), Default::default()).await,
        403,
        &refused("configure", "queue", "not-mine", "limited"),
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.exchange_declare(
            "x".into(),
            lapin::ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
        &refused("configure", "exchange", "x", "limited"),
    );

    // Consume, get and purge: read.
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.basic_consume(
            "not-mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        &refused("read", "queue", "not-mine", "limited"),
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.basic_get("not-mine".into(), Default::default()).await,
        403,
        &refused("read", "queue", "not-mine", "limited"),
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_purge("not-mine".into(), Default::default()).await,
        403,
        &refused("read", "queue", "not-mine", "limited"),
    );

    // Bind: write on the queue, read on the exchange.
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_bind(
            "lim-q".into(),
            "x-not-mine".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        &refused("read", "exchange", "x-not-mine", "limited"),
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_bind(
            "not-mine".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        &refused("write", "queue", "not-mine", "limited"),
    );

    // Publish: write on the exchange; the default exchange is `amq.default` here.
    let ch = channel(&conn).await;
    publish(&ch, "", "lim-q", b"allowed").await;
    let ch = channel(&conn).await;
    let refused_publish = publish_confirmed_or_closed(
        &ch,
        "x-not-mine",
        "k",
        BasicPublishOptions::default(),
        b"no",
        BasicProperties::default(),
    )
    .await;
    assert_amqp_error(
        refused_publish,
        403,
        &refused("write", "exchange", "x-not-mine", "limited"),
    );
    // What was allowed went through.
    assert_eq!(message_count(&admin_channel, "lim-q").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_permissions_check_routing_and_binding_keys() {
    let server = server().await;
    let conn = login(&server, "topical", "pw", "%2f").await.expect("login");
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_queue(&ch, "t-q").await;
    publish(&ch, "amq.topic", "topical.news", b"mine").await;
    let denied = async {
        ch.basic_publish(
            "amq.topic".into(),
            "other.news".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        )
        .await?
        .await
    }
    .await;
    assert_amqp_error(
        denied,
        403,
        "ACCESS_REFUSED - write access to topic 'other.news' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
    let ch = channel(&conn).await;
    within(
        "queue.bind",
        ch.queue_bind(
            "t-q".into(),
            "amq.topic".into(),
            "public.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("a readable binding key");
    assert_amqp_error(
        ch.queue_bind(
            "t-q".into(),
            "amq.topic".into(),
            "private.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
        "ACCESS_REFUSED - read access to topic 'private.#' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_impersonator_may_claim_another_user_id() {
    let server = server().await;
    let claim = |user: &str| BasicProperties::default().with_user_id(user.into());
    let conn = login(&server, "impostor", "pw", "%2f")
        .await
        .expect("login");
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_queue(&ch, "imp-q").await;
    publish_with(&ch, "", "imp-q", b"as guest", claim("guest")).await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");
    let ch = channel(&conn).await;
    declare_queue(&ch, "lim-imp").await;
    let denied = publish_confirmed_or_closed(
        &ch,
        "",
        "lim-imp",
        BasicPublishOptions::default(),
        b"no",
        claim("guest"),
    )
    .await;
    assert_amqp_error(
        denied,
        406,
        "PRECONDITION_FAILED - user_id property set to 'guest' but authenticated user was 'limited'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declares_need_any_permission_and_system_exchanges_are_refused_first() {
    let server = server().await;
    let admin = server.connect().await;
    declare_queue(&channel(&admin).await, "not-mine").await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");
    // limited may do nothing with `not-mine`: the refusal names configure, the last tried.
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_declare(
            "not-mine".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        403,
        &refused("configure", "queue", "not-mine", "limited"),
    );
    // Reading its own queues is enough for a passive declare.
    let ch = channel(&conn).await;
    declare_queue(&ch, "lim-passive").await;
    within(
        "passive declare",
        ch.queue_declare(
            "lim-passive".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("a queue it may read");
    // Deleting a system exchange is refused before any permission is looked at.
    assert_amqp_error(
        ch.exchange_delete("amq.direct".into(), Default::default())
            .await,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_and_bcc_keys_need_topic_write_permission_too() {
    let server = server().await;
    let conn = login(&server, "topical", "pw", "%2f").await.expect("login");
    let ch = channel(&conn).await;
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        lapin::types::AMQPValue::FieldArray(vec![text("other.news")].into()),
    );
    let denied = publish_confirmed_or_closed(
        &ch,
        "amq.topic",
        "topical.news",
        BasicPublishOptions::default(),
        b"cc",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    assert_amqp_error(
        denied,
        403,
        "ACCESS_REFUSED - write access to topic 'other.news' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_logins_are_offered_only_when_enabled() {
    let server = server().await;
    let anonymous =
        |server: &TestServer| format!("amqp://{}/%2f?auth_mechanism=anonymous", server.addr());
    // Off by default: the mechanism is not offered, and the handshake ends.
    assert!(connect_uri(&anonymous(&server)).await.is_err());
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("warren-defs")));
    std::fs::write(&file, definitions()).expect("write the definitions");
    let enabled = TestServer::start_with(move |c| {
        c.load_definitions = Some(file);
        c.anonymous_login_user = Some("limited".into());
    })
    .await;
    let conn = connect_uri(&anonymous(&enabled))
        .await
        .expect("logged in as the anonymous login user");
    // With that user's permissions.
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_declare("q".into(), Default::default(), FieldTable::default())
            .await,
        403,
        &refused("configure", "queue", "q", "limited"),
    );
}
