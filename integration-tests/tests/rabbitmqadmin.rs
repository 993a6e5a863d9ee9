//! `rabbitmqadmin`, the CLI RabbitMQ ships for its management API, drives Warren's
//! (issue 16): declare, list, publish, get, purge, delete, export and import, as
//! people script it. `scripts/test.sh` fetches it from Debian's rabbitmq-server package
//! and names it in `WARREN_RABBITMQADMIN`.

mod common;

use common::*;
use integration_tests::{TestServer, unique_name};
use serde_json::Value;

/// The CLI: `WARREN_RABBITMQADMIN`, or `rabbitmqadmin` on the PATH.
fn rabbitmqadmin() -> String {
    std::env::var("WARREN_RABBITMQADMIN").unwrap_or_else(|_| "rabbitmqadmin".to_owned())
}

/// Runs the CLI against `server`'s API; its status and output.
async fn admin(server: &TestServer, args: &[&str]) -> (bool, String) {
    let port = server
        .management_addr()
        .expect("the management API is on")
        .port()
        .to_string();
    let mut command = std::process::Command::new("python3");
    command
        .arg(rabbitmqadmin())
        .args(["-H", "127.0.0.1", "-P", &port, "-u", "guest", "-p", "guest"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the CLI's thread")
        .unwrap_or_else(|e| panic!("run {} (scripts/test.sh fetches it): {e}", rabbitmqadmin()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn ok(server: &TestServer, args: &[&str]) -> String {
    let (success, text) = admin(server, args).await;
    assert!(success, "rabbitmqadmin {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqadmin_declares_publishes_gets_purges_and_deletes() {
    let server = TestServer::start().await;
    let (x, q) = (unique_name("ra-x"), unique_name("ra-q"));
    ok(
        &server,
        &["declare", "exchange", &format!("name={x}"), "type=fanout"],
    )
    .await;
    ok(
        &server,
        &[
            "declare",
            "queue",
            &format!("name={q}"),
            "durable=false",
            r#"arguments={"x-max-length":3}"#,
        ],
    )
    .await;
    ok(
        &server,
        &[
            "declare",
            "binding",
            &format!("source={x}"),
            &format!("destination={q}"),
            "routing_key=rk",
        ],
    )
    .await;
    let listed = ok(
        &server,
        &["-f", "raw_json", "list", "queues", "name", "messages"],
    )
    .await;
    let queues: Value = serde_json::from_str(&listed).expect("raw_json");
    assert!(
        queues
            .as_array()
            .is_some_and(|all| all.iter().any(|i| i["name"] == q.as_str())),
        "{listed}"
    );
    let published = ok(
        &server,
        &[
            "publish",
            &format!("exchange={x}"),
            "routing_key=rk",
            "payload=hello",
        ],
    )
    .await;
    assert!(published.contains("Message published"), "{published}");
    // Observed over AMQP too.
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    wait_for_count(&ch, &q, 1).await;
    let got = ok(
        &server,
        &[
            "-f",
            "raw_json",
            "get",
            &format!("queue={q}"),
            "ackmode=ack_requeue_true",
        ],
    )
    .await;
    let got: Value = serde_json::from_str(&got).expect("raw_json");
    assert_eq!(got[0]["payload"], "hello");
    ok(&server, &["purge", "queue", &format!("name={q}")]).await;
    wait_for_count(&ch, &q, 0).await;
    ok(
        &server,
        &[
            "delete",
            "binding",
            &format!("source={x}"),
            "destination_type=queue",
            &format!("destination={q}"),
            "properties_key=rk",
        ],
    )
    .await;
    ok(&server, &["delete", "queue", &format!("name={q}")]).await;
    ok(&server, &["delete", "exchange", &format!("name={x}")]).await;
    let (gone, text) = admin(&server, &["delete", "queue", &format!("name={q}")]).await;
    assert!(!gone && text.contains("Not found"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmqadmin_exports_and_imports_definitions() {
    let server = TestServer::start().await;
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("ra-defs")));
    let path = file.to_str().expect("utf-8 path");
    let (user, vhost) = (unique_name("ra-u"), unique_name("ra-v"));
    ok(
        &server,
        &[
            "declare",
            "user",
            &format!("name={user}"),
            "password=pw",
            "tags=management,monitoring",
        ],
    )
    .await;
    ok(&server, &["declare", "vhost", &format!("name={vhost}")]).await;
    ok(
        &server,
        &[
            "declare",
            "permission",
            &format!("vhost={vhost}"),
            &format!("user={user}"),
            "configure=.*",
            "write=.*",
            "read=.*",
        ],
    )
    .await;
    ok(
        &server,
        &[
            "declare",
            "policy",
            "name=ra-p",
            "pattern=^ra",
            r#"definition={"max-length":5}"#,
            "priority=3",
            "apply-to=queues",
        ],
    )
    .await;
    ok(&server, &["export", path]).await;
    ok(&server, &["delete", "user", &format!("name={user}")]).await;
    ok(&server, &["delete", "policy", "name=ra-p"]).await;
    ok(&server, &["import", path]).await;
    let users = ok(&server, &["-f", "raw_json", "list", "users"]).await;
    assert!(users.contains(&user), "{users}");
    let policies = ok(&server, &["-f", "raw_json", "list", "policies"]).await;
    assert!(policies.contains("ra-p"), "{policies}");
    let uri = uri_with(&server, &user, "pw", &vhost, "");
    connect_uri(&uri).await.expect("the imported user logs in");
    let _ = std::fs::remove_file(&file);
}
