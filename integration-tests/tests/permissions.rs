//! Users, virtual hosts and permissions as RabbitMQ has them (issue 15): logins against
//! RabbitMQ's password hashes, `connection.open` refused with 530 for a missing vhost
//! or one the user may not use, and every method checked for its permission, refused
//! with 403 and RabbitMQ's texts (docs/security-rabbitmq-facts.md). The users come from
//! a RabbitMQ definitions file given with `--load-definitions`.
//!
//! The same tests run against a real RabbitMQ, which gets the file through
//! `rabbitmqctl import_definitions`:
//! `WARREN_TEST_EXTERNAL_URI=amqp://guest:guest@127.0.0.1:5673/%2f
//! WARREN_TEST_EXTERNAL_CTL="../shared/tools/rabbitmq.sh ctl 5673"
//! cargo test -p integration-tests --test permissions`. The names are unique, so runs
//! do not meet on a broker that outlives them.

mod common;

use common::pki::{Pki, tls_connect};
use common::*;
use integration_tests::{TestServer, external_ctl, unique_name};
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

/// Warren with the definitions loaded at start and the settings `configure` makes; or
/// the external broker, given them now (RabbitMQ reads the file as its own user: it is
/// left world-readable).
async fn server_with(configure: impl FnOnce(&mut warren::Config) + Send + 'static) -> TestServer {
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("warren-defs")));
    std::fs::write(&file, definitions()).expect("write the definitions");
    let server = TestServer::start_with({
        let file = file.clone();
        move |c| {
            c.load_definitions = Some(file);
            configure(c);
        }
    })
    .await;
    if !server.is_warren() {
        external_ctl(&["import_definitions", file.to_str().expect("utf-8 path")]);
    }
    server
}

/// The broker under test and how the tests reach it: plain TCP, or TLS with a client
/// certificate, which the broker then requires.
struct Target {
    server: TestServer,
    /// The CA and the client's certificate and key, over TLS.
    tls: Option<(Pki, (String, String))>,
}

impl Target {
    async fn tcp() -> Self {
        Self {
            server: server_with(|_| {}).await,
            tls: None,
        }
    }

    /// None against an external broker: the lab's has no TLS listener.
    async fn tls() -> Option<Self> {
        if std::env::var(integration_tests::EXTERNAL_URI_ENV).is_ok() {
            return None;
        }
        let pki = Pki::new("permissions-tls");
        pki.sign("server", &["localhost"], "localhost", None);
        let client = pki.sign("client", &[], "client", None);
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let server = server_with(move |c| {
            c.tls_cert = Some(cert.into());
            c.tls_key = Some(key.into());
            c.tls_ca = Some(ca.into());
            c.tls_fail_if_no_peer_cert = true;
        })
        .await;
        Some(Self {
            server,
            tls: Some((pki, client)),
        })
    }

    fn is_warren(&self) -> bool {
        self.server.is_warren()
    }

    /// guest's connection to `/`.
    async fn connect(&self) -> Connection {
        login(self, "guest", "guest", "%2f")
            .await
            .expect("guest connects")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((pki, _)) = &self.tls {
            let _ = std::fs::remove_dir_all(&pki.dir);
        }
    }
}

/// The external broker's RabbitMQ version; None for Warren, which has RabbitMQ 4's
/// checks (docs/security-rabbitmq-facts.md).
fn rabbitmq_version(server: &Target) -> Option<(u32, u32, u32)> {
    if server.is_warren() {
        return None;
    }
    let version = external_ctl(&["version"]);
    let mut parts = version.trim().split('.').map(|p| p.parse().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    Some((next(), next(), next()))
}

/// Asserts a 403 refusal. RabbitMQ before 3.12 (the lab's 3.10) words it without the
/// permission (docs/security-rabbitmq-facts.md §0): an external broker may leave the
/// word out; Warren must say it.
fn assert_refused<T: std::fmt::Debug>(
    server: &Target,
    result: Result<T, lapin::Error>,
    expected: &str,
) {
    if server.is_warren() {
        return assert_amqp_error(result, 403, expected);
    }
    let without_word = ["configure ", "write ", "read "]
        .iter()
        .fold(expected.to_owned(), |text, word| {
            text.replacen(&format!("- {word}access"), "- access", 1)
        });
    let got = result.as_ref().err().and_then(amqp_error);
    match got {
        Some((403, text)) if text == expected || text == without_word => {}
        other => panic!("expected 403 {expected:?}, got {other:?} from {result:?}"),
    }
}

async fn login(server: &Target, user: &str, pass: &str, vhost: &str) -> lapin::Result<Connection> {
    match &server.tls {
        None => connect_uri(&uri_with(&server.server, user, pass, vhost, "")).await,
        Some((pki, client)) => {
            let port = server.server.tls_addr().expect("a TLS listener").port();
            let uri = format!("amqps://{user}:{pass}@localhost:{port}/{vhost}");
            tls_connect(&uri, &pki.ca_pem, Some(client.clone())).await
        }
    }
}

fn refused(perm: &str, kind: &str, name: &str, user: &str) -> String {
    format!(
        "ACCESS_REFUSED - {perm} access to {kind} '{name}' in vhost '/' refused for user '{user}'"
    )
}

async fn users_log_in_with_rabbitmqs_hashes_and_only_into_vhosts_they_may_use(server: Target) {
    login(&server, "sha512", "pw512", "%2f")
        .await
        .expect("a SHA-512 hash logs in");
    login(&server, "limited", "pw", "%2f")
        .await
        .expect("a clear password, hashed on import");
    let bad = login(&server, "limited", "nope", "%2f").await;
    assert_refused(
        &server,
        bad,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    assert_refused(
        &server,
        login(&server, "nobody", "pw", "%2f").await,
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
    within(
        "purge",
        ch.queue_purge("preloaded".into(), Default::default()),
    )
    .await
    .expect("purge what earlier runs left");
    publish(&ch, "preloaded-x", "", b"from the file's binding").await;
    wait_for_count(&ch, "preloaded", 1).await;
}

async fn each_method_needs_its_permission(server: Target) {
    let (q, x) = (unique_name("q"), unique_name("x"));
    let (not_mine, x_not_mine) = (unique_name("not-mine"), unique_name("x-not-mine"));
    let lim_q = unique_name("lim-q");
    let admin = server.connect().await;
    let admin_channel = channel(&admin).await;
    declare_queue(&admin_channel, &not_mine).await;
    declare_exchange_with(
        &admin_channel,
        &x_not_mine,
        lapin::ExchangeKind::Direct,
        FieldTable::default(),
    )
    .await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");

    // Declare and delete: configure.
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
            .await,
        &refused("configure", "queue", &q, "limited"),
    );
    let ch = channel(&conn).await;
    declare_queue(&ch, &lim_q).await;
    assert_refused(
        &server,
        ch.queue_delete(not_mine.as_str().into(), Default::default())
            .await,
        &refused("configure", "queue", &not_mine, "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.exchange_declare(
            x.as_str().into(),
            lapin::ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await,
        &refused("configure", "exchange", &x, "limited"),
    );

    // Consume, get and purge: read.
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.basic_consume(
            not_mine.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        &refused("read", "queue", &not_mine, "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.basic_get(not_mine.as_str().into(), Default::default())
            .await,
        &refused("read", "queue", &not_mine, "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.queue_purge(not_mine.as_str().into(), Default::default())
            .await,
        &refused("read", "queue", &not_mine, "limited"),
    );

    // Bind: write on the queue, read on the exchange.
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.queue_bind(
            lim_q.as_str().into(),
            x_not_mine.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        &refused("read", "exchange", &x_not_mine, "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        &server,
        ch.queue_bind(
            not_mine.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        &refused("write", "queue", &not_mine, "limited"),
    );

    // Publish: write on the exchange; the default exchange is `amq.default` here.
    let ch = channel(&conn).await;
    publish(&ch, "", &lim_q, b"allowed").await;
    let ch = channel(&conn).await;
    let refused_publish = publish_confirmed_or_closed(
        &ch,
        &x_not_mine,
        "k",
        BasicPublishOptions::default(),
        b"no",
        BasicProperties::default(),
    )
    .await;
    assert_refused(
        &server,
        refused_publish,
        &refused("write", "exchange", &x_not_mine, "limited"),
    );
    // What was allowed went through.
    assert_eq!(message_count(&admin_channel, &lim_q).await, 1);
}

async fn topic_permissions_check_routing_and_binding_keys(server: Target) {
    let t_q = unique_name("t-q");
    let conn = login(&server, "topical", "pw", "%2f").await.expect("login");
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_queue(&ch, &t_q).await;
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
    assert_refused(
        &server,
        denied,
        "ACCESS_REFUSED - write access to topic 'other.news' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
    let ch = channel(&conn).await;
    within(
        "queue.bind",
        ch.queue_bind(
            t_q.as_str().into(),
            "amq.topic".into(),
            "public.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("a readable binding key");
    assert_refused(
        &server,
        ch.queue_bind(
            t_q.as_str().into(),
            "amq.topic".into(),
            "private.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        "ACCESS_REFUSED - read access to topic 'private.#' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
}

async fn only_an_impersonator_may_claim_another_user_id(server: Target) {
    let (imp_q, lim_imp) = (unique_name("imp-q"), unique_name("lim-imp"));
    let claim = |user: &str| BasicProperties::default().with_user_id(user.into());
    let conn = login(&server, "impostor", "pw", "%2f")
        .await
        .expect("login");
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    declare_queue(&ch, &imp_q).await;
    publish_with(&ch, "", &imp_q, b"as guest", claim("guest")).await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");
    let ch = channel(&conn).await;
    declare_queue(&ch, &lim_imp).await;
    let denied = publish_confirmed_or_closed(
        &ch,
        "",
        &lim_imp,
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

async fn passive_declares_need_any_permission_and_system_exchanges_are_refused_first(
    server: Target,
) {
    let (not_mine, lim_passive) = (unique_name("not-mine"), unique_name("lim-passive"));
    let admin = server.connect().await;
    declare_queue(&channel(&admin).await, &not_mine).await;
    let conn = login(&server, "limited", "pw", "%2f").await.expect("login");
    // limited may do nothing with `not-mine`: the refusal names configure, the last tried.
    let ch = channel(&conn).await;
    let passive = ch
        .queue_declare(
            not_mine.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match rabbitmq_version(&server) {
        // Before 4.2.7 (and in 4.3.0) RabbitMQ checked no permission on a passive declare.
        Some(v) if v < (4, 2, 7) || v == (4, 3, 0) => {
            passive.expect("no check before RabbitMQ 4.2.7");
        }
        _ => assert_refused(
            &server,
            passive,
            &refused("configure", "queue", &not_mine, "limited"),
        ),
    }
    // Reading its own queues is enough for a passive declare.
    let ch = channel(&conn).await;
    declare_queue(&ch, &lim_passive).await;
    within(
        "passive declare",
        ch.queue_declare(
            lim_passive.as_str().into(),
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
    assert_refused(
        &server,
        ch.exchange_delete("amq.direct".into(), Default::default())
            .await,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
}

async fn cc_and_bcc_keys_need_topic_write_permission_too(server: Target) {
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
    if rabbitmq_version(&server).is_some_and(|v| v < (4, 0, 0)) {
        // RabbitMQ 3 checked the routing key alone.
        denied.expect("CC is not checked before RabbitMQ 4");
        return;
    }
    assert_refused(
        &server,
        denied,
        "ACCESS_REFUSED - write access to topic 'other.news' in exchange 'amq.topic' in vhost '/' refused for user 'topical'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_logins_are_offered_only_when_enabled() {
    let server = server_with(|_| {}).await;
    let anonymous =
        |server: &TestServer| format!("amqp://{}/%2f?auth_mechanism=anonymous", server.addr());
    // Off by default: the mechanism is not offered, and the handshake ends.
    assert!(connect_uri(&anonymous(&server)).await.is_err());
    if !server.is_warren() {
        // Turning it on is Warren's `--anonymous-login-user`.
        return;
    }
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

/// Each test above, over plain TCP and over TLS with a client certificate.
macro_rules! over_tcp_and_tls {
    ($($name:ident),* $(,)?) => {
        mod over_tcp {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(super::Target::tcp().await).await;
                }
            )*
        }
        mod over_tls {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    if let Some(target) = super::Target::tls().await {
                        super::$name(target).await;
                    }
                }
            )*
        }
    };
}

over_tcp_and_tls!(
    users_log_in_with_rabbitmqs_hashes_and_only_into_vhosts_they_may_use,
    each_method_needs_its_permission,
    topic_permissions_check_routing_and_binding_keys,
    only_an_impersonator_may_claim_another_user_id,
    passive_declares_need_any_permission_and_system_exchanges_are_refused_first,
    cc_and_bcc_keys_need_topic_write_permission_too,
);
