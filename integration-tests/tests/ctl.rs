//! `warren ctl` against a running broker process (issue 15): users, vhosts and
//! permissions managed at run time over the owner-only Unix socket, applied to open
//! connections at their next method, durable across `kill -9`, and definitions
//! exported and imported in RabbitMQ's shape.

mod common;

use common::*;
use futures_lite::StreamExt;
use integration_tests::{ProcessOptions, WarrenProcess, temp_data_dir, unique_name};
use lapin::types::FieldTable;

fn uri(broker: &WarrenProcess, user: &str, pass: &str, vhost: &str) -> String {
    format!("amqp://{user}:{pass}@{}/{vhost}", broker.addr())
}

#[tokio::test(flavor = "multi_thread")]
async fn users_vhosts_and_permissions_are_managed_at_run_time_and_survive_a_kill() {
    let dir = temp_data_dir("ctl-manage");
    let broker = WarrenProcess::start(&dir).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("warren.sock"))
            .expect("the socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the broker's user may use it");
    }
    ctl_ok(&dir, &["add_user", "bob", "s3cret"]);
    let (status, _, err) = warren_ctl(&dir, &["add_user", "bob", "again"]);
    assert_eq!(status, 2);
    assert!(err.contains("user_already_exists: bob"), "{err}");
    ctl_ok(&dir, &["add_vhost", "app"]);
    ctl_ok(
        &dir,
        &["set_permissions", "-p", "app", "bob", ".*", ".*", ".*"],
    );
    let users = ctl_ok(&dir, &["list_users", "--formatter", "json"]);
    assert!(users.contains("\"bob\""), "{users}");
    // As rabbitmqctl: `-q` drops banners (Warren prints none), not the rows that
    // scripts read; `--no-table-headers` drops the header.
    let vhosts = ctl_ok(&dir, &["list_vhosts", "-q"]);
    assert!(vhosts.starts_with("name\n"), "{vhosts}");
    assert!(vhosts.lines().any(|l| l == "app"), "{vhosts}");
    let bare = ctl_ok(&dir, &["list_vhosts", "-q", "--no-table-headers"]);
    assert!(!bare.lines().any(|l| l == "name"), "{bare}");
    assert!(bare.lines().any(|l| l == "app"), "{bare}");

    let conn = connect_uri(&uri(&broker, "bob", "s3cret", "app"))
        .await
        .expect("bob may use app");
    assert_amqp_error(
        connect_uri(&uri(&broker, "bob", "s3cret", "%2f")).await,
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'bob'",
    );
    let ch = channel(&conn).await;
    declare_queue(&ch, "q1").await;
    // Cleared permissions apply to the open connection at its next method.
    ctl_ok(
        &dir,
        &["set_permissions", "-p", "app", "bob", "^q1$", ".*", ".*"],
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.queue_declare("q2".into(), Default::default(), FieldTable::default())
            .await,
        403,
        "ACCESS_REFUSED - configure access to queue 'q2' in vhost 'app' refused for user 'bob'",
    );
    ctl_ok(&dir, &["change_password", "bob", "n3w"]);
    broker.kill();

    // What ctl answered is durable.
    let broker = WarrenProcess::start(&dir).await;
    connect_uri(&uri(&broker, "bob", "n3w", "app"))
        .await
        .expect("bob's new password and permissions survived the kill");
    assert_amqp_error(
        connect_uri(&uri(&broker, "bob", "s3cret", "app")).await,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    // Deleting a user closes its connections.
    let open = connect_uri(&uri(&broker, "bob", "n3w", "app"))
        .await
        .expect("bob's connection");
    let mut events = Box::pin(open.events_listener());
    ctl_ok(&dir, &["delete_user", "bob"]);
    let closed = closed_with(&mut events).await;
    assert_eq!(
        closed,
        Some((320, "CONNECTION_FORCED - user 'bob' is deleted".to_owned()))
    );
    assert_amqp_error(
        connect_uri(&uri(&broker, "bob", "n3w", "app")).await,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    // With every user and vhost gone, a restart does not bring the default user back.
    ctl_ok(&dir, &["delete_user", "guest"]);
    ctl_ok(&dir, &["delete_vhost", "/"]);
    ctl_ok(&dir, &["delete_vhost", "app"]);
    broker.kill();
    let broker = WarrenProcess::start(&dir).await;
    assert_amqp_error(
        connect_uri(&uri(&broker, "guest", "guest", "%2f")).await,
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_vhost_closes_its_connections_and_removes_its_queues() {
    let dir = temp_data_dir("ctl-delete-vhost");
    let broker = WarrenProcess::start(&dir).await;
    ctl_ok(&dir, &["add_vhost", "doomed"]);
    ctl_ok(
        &dir,
        &["set_permissions", "-p", "doomed", "guest", ".*", ".*", ".*"],
    );
    let conn = connect_uri(&uri(&broker, "guest", "guest", "doomed"))
        .await
        .expect("connect");
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    let name = unique_name("dq");
    within(
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    publish(&ch, "", &name, b"m").await;
    let other = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("a connection to another vhost");
    ctl_ok(&dir, &["delete_vhost", "doomed"]);
    // The broker's close comes to the client as a connection error.
    let closed = closed_with(&mut events).await;
    assert_eq!(
        closed,
        Some((
            320,
            "CONNECTION_FORCED - vhost 'doomed' is deleted".to_owned()
        ))
    );
    assert!(other.status().connected(), "other vhosts' connections stay");
    assert_amqp_error(
        connect_uri(&uri(&broker, "guest", "guest", "doomed")).await,
        530,
        "NOT_ALLOWED - vhost doomed not found",
    );
    broker.kill();
    // Gone for good, with its queue's log.
    let broker = WarrenProcess::start(&dir).await;
    ctl_ok(&dir, &["add_vhost", "doomed"]);
    ctl_ok(
        &dir,
        &["set_permissions", "-p", "doomed", "guest", ".*", ".*", ".*"],
    );
    let conn = connect_uri(&uri(&broker, "guest", "guest", "doomed"))
        .await
        .expect("connect");
    assert!(!queue_exists(&conn, &name).await);
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `n` messages to `queue` through the default exchange.
async fn publish_n(ch: &lapin::Channel, queue: &str, n: usize) {
    for _ in 0..n {
        publish(ch, "", queue, b"m").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_set_at_run_time_apply_at_once_and_survive_a_kill() {
    let dir = temp_data_dir("ctl-policies");
    let broker = WarrenProcess::start(&dir).await;
    let cap = |n: u32| format!("{{\"max-length\":{n}}}");
    let set_cap = |n: u32| {
        ctl_ok(
            &dir,
            &[
                "set_policy",
                "--apply-to",
                "queues",
                "cap",
                "^capped$",
                &cap(n),
                "--priority",
                "2",
            ],
        )
    };
    set_cap(1);
    let conn = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&conn).await;
    declare_queue(&ch, "capped").await;
    publish_n(&ch, "capped", 3).await;
    wait_for_count(&ch, "capped", 1).await;
    // A changed policy applies to the queue that exists.
    set_cap(2);
    publish_n(&ch, "capped", 3).await;
    wait_for_count(&ch, "capped", 2).await;
    let listed = ctl_ok(&dir, &["list_policies", "--formatter", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        listed,
        serde_json::json!([{
            "vhost": "/", "name": "cap", "pattern": "^capped$", "apply-to": "queues",
            "definition": "{\"max-length\":2}", "priority": 2
        }])
    );
    // Refusals, in rabbitmqctl's words.
    for (args, expected) in [
        (
            vec!["set_policy", "bad", "^x", r#"{"message-ttl":"x"}"#],
            "Validation failed\n\n<<\"x\">> is not a valid message TTL",
        ),
        (
            vec!["set_policy", "bad", "(", r#"{"message-ttl":5}"#],
            "Validation failed\n\npattern should be regular expression",
        ),
        (
            vec!["set_policy", "bad", "^x", "notjson"],
            "JSON decoding error",
        ),
        (
            vec![
                "set_policy",
                "-p",
                "nov",
                "bad",
                "^x",
                r#"{"message-ttl":5}"#,
            ],
            "no_such_vhost: nov",
        ),
        (vec!["clear_policy", "nope"], "Parameter does not exist"),
    ] {
        let (status, _, err) = warren_ctl(&dir, &args);
        assert_eq!(status, 2, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A vhost's policies go with it.
    ctl_ok(&dir, &["add_vhost", "gone"]);
    ctl_ok(&dir, &["set_policy", "-p", "gone", "p", ".*", &cap(1)]);
    ctl_ok(&dir, &["delete_vhost", "gone"]);
    ctl_ok(&dir, &["add_vhost", "gone"]);
    let listed = ctl_ok(
        &dir,
        &["list_policies", "-p", "gone", "--formatter", "json"],
    );
    assert_eq!(listed.trim(), "[]");
    drop(conn);
    broker.kill();

    // What ctl answered is durable: the policy holds for the queue made again.
    let broker = WarrenProcess::start(&dir).await;
    let conn = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&conn).await;
    declare_queue(&ch, "capped").await;
    publish_n(&ch, "capped", 3).await;
    wait_for_count(&ch, "capped", 2).await;
    ctl_ok(&dir, &["clear_policy", "cap"]);
    publish_n(&ch, "capped", 3).await;
    wait_for_count(&ch, "capped", 5).await;
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An operator policy set through ctl caps a queue below its policy at once, is refused
/// in rabbitmqctl's words when it sets more than limits, survives a kill, is exported
/// as RabbitMQ exports it, and lets go when cleared; a global parameter is kept too.
#[tokio::test(flavor = "multi_thread")]
async fn operator_policies_and_global_parameters_survive_a_kill() {
    let dir = temp_data_dir("ctl-operator-policies");
    let broker = WarrenProcess::start(&dir).await;
    ctl_ok(&dir, &["set_global_parameter", "gp", r#"{"k":[1,"x"]}"#]);
    ctl_ok(&dir, &["set_policy", "own", "^q$", r#"{"max-length":4}"#]);
    ctl_ok(
        &dir,
        &[
            "set_operator_policy",
            "cap",
            "^q$",
            r#"{"max-length":2}"#,
            "--apply-to",
            "queues",
        ],
    );
    let conn = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&conn).await;
    declare_queue(&ch, "q").await;
    publish_n(&ch, "q", 5).await;
    wait_for_count(&ch, "q", 2).await;
    let listed = ctl_ok(&dir, &["list_operator_policies", "--formatter", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        listed,
        serde_json::json!([{
            "vhost": "/", "name": "cap", "pattern": "^q$", "apply-to": "queues",
            "definition": "{\"max-length\":2}", "priority": 0
        }])
    );
    // A reader that went away (`| head -1`) ends the listing quietly, not in a panic.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let listed = std::process::Command::new(integration_tests::warren_binary())
        .args(["ctl", "--data-dir"])
        .arg(&dir)
        .arg("list_operator_policies")
        .stdout(writer)
        .output()
        .expect("run warren ctl");
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert_eq!(listed.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    for (args, expected) in [
        (
            vec![
                "set_operator_policy",
                "bad",
                "^x",
                r#"{"alternate-exchange":"x"}"#,
            ],
            "Validation failed\n\n[{<<\"alternate-exchange\">>,<<\"x\">>}] are not recognised policy settings",
        ),
        (
            vec!["clear_operator_policy", "own"],
            "Parameter does not exist",
        ),
        (
            vec!["clear_global_parameter", "nope"],
            "Parameter does not exist",
        ),
        (
            vec!["set_global_parameter", "bad", "notjson"],
            "JSON decoding error",
        ),
    ] {
        let (status, _, err) = warren_ctl(&dir, &args);
        assert_eq!(status, 2, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    drop(conn);
    broker.kill();

    let broker = WarrenProcess::start(&dir).await;
    let conn = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&conn).await;
    declare_queue(&ch, "q").await;
    publish_n(&ch, "q", 5).await;
    wait_for_count(&ch, "q", 2).await;
    let exported = ctl_ok(&dir, &["export_definitions", "-"]);
    let exported: serde_json::Value = serde_json::from_str(&exported).expect("json");
    assert_eq!(
        exported["parameters"],
        serde_json::json!([{
            "vhost": "/", "component": "operator_policy", "name": "cap",
            "value": { "pattern": "^q$", "definition": { "max-length": 2 }, "priority": 0,
                       "apply-to": "queues" }
        }])
    );
    assert_eq!(
        exported["global_parameters"],
        serde_json::json!([{ "name": "gp", "value": { "k": [1, "x"] } }])
    );
    let listed = ctl_ok(&dir, &["list_global_parameters", "--formatter", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed).expect("json"),
        serde_json::json!([{ "name": "gp", "value": "{\"k\":[1,\"x\"]}" }])
    );
    ctl_ok(&dir, &["clear_operator_policy", "cap"]);
    publish_n(&ch, "q", 5).await;
    wait_for_count(&ch, "q", 4).await;
    // A value as deep as ctl reads one (126 levels) survives the start that reads it
    // from the log and the one that reads the snapshot written then.
    let deep = format!("{}1{}", "[".repeat(126), "]".repeat(126));
    ctl_ok(&dir, &["set_global_parameter", "deep", &deep]);
    drop(conn);
    broker.kill();
    for start in ["from the log", "from the snapshot"] {
        let broker = WarrenProcess::start(&dir).await;
        let listed = ctl_ok(&dir, &["list_global_parameters", "--formatter", "json"]);
        assert!(
            listed.contains(&deep),
            "lost at the start {start}: {listed}"
        );
        broker.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_definitions_import_into_another_broker_with_every_login() {
    let from = temp_data_dir("ctl-export");
    let to = temp_data_dir("ctl-import");
    let first = WarrenProcess::start(&from).await;
    ctl_ok(&from, &["add_user", "carol", "pw"]);
    ctl_ok(
        &from,
        &["set_user_tags", "carol", "monitoring", "management"],
    );
    ctl_ok(&from, &["add_vhost", "v1"]);
    ctl_ok(
        &from,
        &["set_permissions", "-p", "v1", "carol", "^c", "^c", "^c"],
    );
    ctl_ok(
        &from,
        &[
            "set_topic_permissions",
            "-p",
            "v1",
            "carol",
            "amq.topic",
            "^x",
            "^y",
        ],
    );
    // Durable topology, declared over AMQP in v1.
    let admin = connect_uri(&uri(&first, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&admin).await;
    let durable = || lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "exchange.declare",
        ch.exchange_declare(
            "orders".into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange");
    within(
        "queue.declare",
        ch.queue_declare(
            "orders.eu".into(),
            durable(),
            table(&[("x-max-length", int(10)), ("x-queue-type", text("quorum"))]),
        ),
    )
    .await
    .expect("queue");
    within(
        "queue.bind",
        ch.queue_bind(
            "orders.eu".into(),
            "orders".into(),
            "eu.#".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    ctl_ok(
        &from,
        &["set_policy", "cap", "^capped$", r#"{"max-length":1}"#],
    );
    let file = from.with_extension("definitions.json");
    ctl_ok(
        &from,
        &["export_definitions", file.to_str().expect("utf-8 path")],
    );
    first.terminate();

    let second = WarrenProcess::start(&to).await;
    ctl_ok(
        &to,
        &["import_definitions", file.to_str().expect("utf-8 path")],
    );
    connect_uri(&uri(&second, "carol", "pw", "v1"))
        .await
        .expect("carol's hash came across");
    let users = ctl_ok(&to, &["list_users", "--formatter", "json"]);
    assert!(users.contains("monitoring"), "{users}");
    // The topology came across: the queue with its arguments, bound by its key.
    let guest = connect_uri(&uri(&second, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&guest).await;
    within(
        "same arguments",
        ch.queue_declare(
            "orders.eu".into(),
            durable(),
            table(&[("x-max-length", int(10)), ("x-queue-type", text("quorum"))]),
        ),
    )
    .await
    .expect("declared with the same arguments");
    publish(&ch, "orders", "eu.fr", b"routed").await;
    wait_for_count(&ch, "orders.eu", 1).await;
    // And the policy.
    declare_queue(&ch, "capped").await;
    publish_n(&ch, "capped", 3).await;
    wait_for_count(&ch, "capped", 1).await;
    let topic = ctl_ok(
        &to,
        &["list_topic_permissions", "-p", "v1", "--formatter", "json"],
    );
    assert!(topic.contains("amq.topic"), "{topic}");
    let (status, _, err) = warren_ctl(&to, &["import_definitions", "/nonexistent.json"]);
    assert_ne!(status, 0);
    assert!(err.contains("cannot read"), "{err}");
    second.terminate();
    let _ = std::fs::remove_dir_all(&from);
    let _ = std::fs::remove_dir_all(&to);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread")]
async fn vhost_user_and_broker_limits_refuse_with_rabbitmqs_texts() {
    let dir = temp_data_dir("ctl-limits");
    let broker = WarrenProcess::start_with_args(&dir, &["--max-connections", "3"]).await;
    ctl_ok(&dir, &["add_vhost", "lim"]);
    ctl_ok(
        &dir,
        &["set_permissions", "-p", "lim", "guest", ".*", ".*", ".*"],
    );
    ctl_ok(
        &dir,
        &[
            "set_vhost_limits",
            "-p",
            "lim",
            r#"{"max-connections": 1, "max-queues": 1}"#,
        ],
    );
    let (status, _, err) = warren_ctl(
        &dir,
        &["set_vhost_limits", "-p", "lim", r#"{"max-cats": 1}"#],
    );
    assert_eq!(status, 2, "{err}");
    assert!(
        err.contains("Validation failed\n\nUnrecognised terms [{<<\"max-cats\">>,1}] in limits"),
        "{err}"
    );

    let first = connect_uri(&uri(&broker, "guest", "guest", "lim"))
        .await
        .expect("the first connection");
    assert_amqp_error(
        connect_uri(&uri(&broker, "guest", "guest", "lim")).await,
        530,
        "NOT_ALLOWED - access to vhost 'lim' refused for user 'guest': connection limit (1) is reached",
    );
    let ch = channel(&first).await;
    declare_queue(&ch, "one").await;
    declare_queue(&ch, "one").await;
    assert_amqp_error(
        ch.queue_declare("two".into(), Default::default(), FieldTable::default())
            .await,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'two': queue limit in vhost 'lim' (1) is reached",
    );
    // A connection that goes frees its place.
    drop(ch);
    within("close", first.close(200, "bye".into()))
        .await
        .expect("close");
    let again = connect_uri(&uri(&broker, "guest", "guest", "lim")).await;
    assert!(again.is_ok(), "the place was freed");

    ctl_ok(&dir, &["add_user", "dora", "pw"]);
    ctl_ok(&dir, &["set_permissions", "dora", ".*", ".*", ".*"]);
    ctl_ok(
        &dir,
        &[
            "set_user_limits",
            "dora",
            r#"{"max-connections": 1, "max-channels": 1}"#,
        ],
    );
    let dora = connect_uri(&uri(&broker, "dora", "pw", "%2f"))
        .await
        .expect("dora's first connection");
    assert_amqp_error(
        connect_uri(&uri(&broker, "dora", "pw", "%2f")).await,
        530,
        "NOT_ALLOWED - connection refused for user 'dora': user connection limit (1) is reached",
    );
    let mut events = Box::pin(dora.events_listener());
    let _one = channel(&dora).await;
    // A second channel is refused with a connection error.
    let _ = dora.create_channel().await;
    let closed = closed_with(&mut events).await;
    assert_eq!(
        closed,
        Some((
            530,
            "NOT_ALLOWED - number of channels opened for user 'dora' has reached the maximum allowed user limit of 1".to_owned()
        ))
    );
    ctl_ok(&dir, &["clear_user_limits", "dora", "all"]);
    let _more = connect_uri(&uri(&broker, "dora", "pw", "%2f"))
        .await
        .expect("no limit now");
    let _most = connect_uri(&uri(&broker, "dora", "pw", "%2f"))
        .await
        .expect("no limit now");
    // Three are open now (lim's and dora's two): the broker's limit of 3 is reached.
    assert_amqp_error(
        connect_uri(&uri(&broker, "guest", "guest", "%2f")).await,
        530,
        "NOT_ALLOWED - connection refused: node connection limit (3) is reached",
    );
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The code and text of the connection error the broker closes with, from a
/// connection's events (bounded).
async fn closed_with(
    events: &mut std::pin::Pin<Box<impl futures_lite::Stream<Item = lapin::Event>>>,
) -> Option<(u16, String)> {
    within("the close", async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return amqp_error(&e);
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_are_logged_as_rabbitmq_logs_them_and_passwords_never() {
    let dir = temp_data_dir("ctl-login-log");
    let log = dir.with_extension("log");
    let broker = WarrenProcess::start_logged(
        &dir,
        ProcessOptions {
            stderr: Some(&log),
            ..Default::default()
        },
    )
    .await;
    let (secret, guess) = ("Sup3r-Secret-Pw", "wrong-Pw-guess-77");
    ctl_ok(&dir, &["add_user", "bob", secret]);
    ctl_ok(&dir, &["change_password", "bob", secret]);
    for (user, pass) in [("bob", guess), ("nobody", guess)] {
        assert!(connect_uri(&uri(&broker, user, pass, "%2f")).await.is_err());
    }
    assert!(
        connect_uri(&uri(&broker, "bob", secret, "%2f"))
            .await
            .is_err(),
        "bob has no permissions in /"
    );
    broker.terminate();
    let logged = std::fs::read_to_string(&log).expect("the broker's log");
    for line in [
        "PLAIN login refused: user 'bob' - invalid credentials",
        "PLAIN login refused: user 'nobody' - invalid credentials",
        "access to vhost '/' refused for user 'bob'",
    ] {
        let found = logged
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("{line:?} not logged:\n{logged}"));
        assert!(found.contains("peer=127.0.0.1:"), "{found}");
    }
    assert!(
        !logged.contains(secret) && !logged.contains(guess),
        "{logged}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_verbs_purge_delete_and_close_as_rabbitmqctl_does() {
    let dir = temp_data_dir("ctl-lists");
    let broker = WarrenProcess::start(&dir).await;
    let conn = connect_uri(&uri(&broker, "guest", "guest", "%2f"))
        .await
        .expect("connect");
    let ch = channel(&conn).await;
    let (q, g) = (unique_name("ctl-q"), unique_name("ctl-g"));
    declare_queue(&ch, &q).await;
    publish_n(&ch, &q, 3).await;
    declare_queue_with(&ch, &g, table(&[("x-partitions", int(2))]))
        .await
        .expect("declare a partitioned queue");
    let _member = within(
        "basic.consume",
        ch.basic_consume(
            g.as_str().into(),
            "ctl-member".into(),
            Default::default(),
            table(&[("x-consumer-group", text("grp"))]),
        ),
    )
    .await
    .expect("join the group");
    let json_of = |text: String| -> Vec<serde_json::Value> {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let queues = json_of(ctl_ok(
        &dir,
        &[
            "list_queues",
            "name",
            "messages",
            "durable",
            "--formatter",
            "json",
        ],
    ));
    assert!(
        queues.contains(&serde_json::json!({ "name": q, "messages": 3, "durable": false })),
        "{queues:?}"
    );
    // In a table the columns come in the order asked, as scripts that cut them expect.
    let table = ctl_ok(&dir, &["list_queues", "name", "messages"]);
    assert!(table.starts_with("name\tmessages\n"), "{table}");
    assert!(table.lines().any(|l| l == format!("{q}\t3")), "{table}");
    let consumers = json_of(ctl_ok(&dir, &["list_consumers", "--formatter", "json"]));
    assert!(
        consumers
            .iter()
            .any(|c| c["consumer_tag"] == "ctl-member" && c["queue_name"] == g.as_str()),
        "{consumers:?}"
    );
    let groups = json_of(ctl_ok(
        &dir,
        &["list_consumer_groups", "--formatter", "json"],
    ));
    let mine: Vec<_> = groups.iter().filter(|r| r["queue"] == g.as_str()).collect();
    assert_eq!(mine.len(), 2, "a row per partition: {groups:?}");
    assert!(mine.iter().all(|r| r["group"] == "grp"));
    let bindings = json_of(ctl_ok(&dir, &["list_bindings", "--formatter", "json"]));
    assert!(
        bindings
            .iter()
            .any(|b| b["destination_name"] == q.as_str() && b["source_name"] == ""),
        "{bindings:?}"
    );
    ctl_ok(&dir, &["purge_queue", &q]);
    wait_for_count(&ch, &q, 0).await;
    ctl_ok(&dir, &["delete_queue", &q]);
    let (status, _, err) = warren_ctl(&dir, &["delete_queue", &q]);
    assert_eq!(status, 2);
    assert!(err.contains("NOT_FOUND"), "{err}");
    let connections = json_of(ctl_ok(
        &dir,
        &["list_connections", "name", "user", "--formatter", "json"],
    ));
    let name = connections
        .iter()
        .find(|c| c["user"] == "guest")
        .and_then(|c| c["name"].as_str())
        .expect("our connection")
        .to_owned();
    ctl_ok(&dir, &["close_connection", &name, "go away"]);
    let closed = integration_tests::wait_for(BOUND, || async { !conn.status().connected() }).await;
    assert!(closed, "closed by warren ctl");
    broker.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
