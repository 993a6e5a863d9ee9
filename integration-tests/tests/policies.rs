//! Policies from a file in RabbitMQ's definitions-export shape: applied by queue-name
//! pattern at start, with RabbitMQ's precedence against queue arguments, reloaded on
//! SIGHUP (an invalid file keeps the old policies), and refused clearly at start-up.

mod common;

use std::path::Path;

use common::*;
use integration_tests::{WarrenProcess, temp_data_dir, unique_name, warren_binary};
use lapin::Channel;

fn write_policies(path: &Path, policies: &str) {
    std::fs::write(path, format!(r#"{{"policies": [{policies}]}}"#))
        .expect("write the policy file");
}

fn policy(name: &str, pattern: &str, definition: &str) -> String {
    policy_for("queues", name, pattern, definition)
}

fn policy_for(apply_to: &str, name: &str, pattern: &str, definition: &str) -> String {
    format!(
        r#"{{"vhost": "/", "name": "{name}", "pattern": "{pattern}", "apply-to": "{apply_to}",
            "priority": 0, "definition": {definition}}}"#
    )
}

async fn publish_n(channel: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(channel, "", queue, format!("m{i}").as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_apply_at_start_and_change_on_sighup() {
    let dir = temp_data_dir("policies");
    std::fs::create_dir_all(&dir).expect("data dir");
    let file = dir.with_extension("policies.json");
    let prefix = unique_name("p");
    write_policies(
        &file,
        &[
            policy(
                "ttl",
                &format!("^{prefix}\\\\.ttl"),
                r#"{"message-ttl": 100}"#,
            ),
            policy("len", &format!("^{prefix}\\\\.len"), r#"{"max-length": 5}"#),
            policy_for(
                "exchanges",
                "ae",
                &format!("^{prefix}\\\\.ex"),
                &format!(r#"{{"alternate-exchange": "{prefix}.ae"}}"#),
            ),
        ]
        .join(","),
    );
    let broker =
        WarrenProcess::start_with_args(&dir, &["--policies", file.to_str().expect("utf-8 path")])
            .await;
    let conn = within(
        "connect",
        lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let channel = common::channel(&conn).await;

    // The TTL policy expires messages of matching queues only.
    let ttl_q = format!("{prefix}.ttl");
    let plain_q = format!("{prefix}.plain");
    declare_queue(&channel, &ttl_q).await;
    declare_queue(&channel, &plain_q).await;
    publish(&channel, "", &ttl_q, b"brief").await;
    publish(&channel, "", &plain_q, b"kept").await;
    wait_for_count(&channel, &ttl_q, 0).await;
    assert_eq!(message_count(&channel, &plain_q).await, 1);

    // An exchange policy gives unroutable messages an alternate exchange.
    let ae_q = format!("{prefix}.caught");
    declare_queue(&channel, &ae_q).await;
    declare_exchange_with(
        &channel,
        &format!("{prefix}.ae"),
        lapin::ExchangeKind::Fanout,
        lapin::types::FieldTable::default(),
    )
    .await;
    bind_queue(&channel, &ae_q, &format!("{prefix}.ae"), "").await;
    declare_exchange_with(
        &channel,
        &format!("{prefix}.ex"),
        lapin::ExchangeKind::Direct,
        lapin::types::FieldTable::default(),
    )
    .await;
    publish(&channel, &format!("{prefix}.ex"), "nowhere", b"caught").await;
    wait_for_count(&channel, &ae_q, 1).await;

    // Length limits: the lower of the policy and the queue's own argument wins.
    let len_q = format!("{prefix}.len");
    let len_arg_q = format!("{prefix}.len-arg");
    declare_queue(&channel, &len_q).await;
    declare_queue_with(&channel, &len_arg_q, table(&[("x-max-length", int(2))]))
        .await
        .expect("declare with x-max-length");
    publish_n(&channel, &len_q, 7).await;
    publish_n(&channel, &len_arg_q, 4).await;
    wait_for_count(&channel, &len_q, 5).await;
    wait_for_count(&channel, &len_arg_q, 2).await;

    // A reload tightens the limit at once and drops the TTL policy.
    write_policies(
        &file,
        &policy("len", &format!("^{prefix}\\\\.len"), r#"{"max-length": 1}"#),
    );
    broker.hang_up();
    wait_for_count(&channel, &len_q, 1).await;
    publish(&channel, "", &ttl_q, b"now kept").await;
    wait_for_count(&channel, &ttl_q, 1).await;

    // An invalid file is refused and the policies in force stay.
    std::fs::write(&file, r#"{"policies": [{"name": "bad"}]}"#).expect("write");
    broker.hang_up();
    publish_n(&channel, &len_q, 3).await;
    wait_for_count(&channel, &len_q, 1).await;
    assert_eq!(
        get(&channel, &len_q).await.expect("newest").delivery.data,
        b"m2"
    );

    drop(conn);
    broker.terminate();
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_policy_file_stops_the_broker_at_start() {
    let dir = temp_data_dir("bad-policies");
    let file = dir.with_extension("policies.json");
    write_policies(&file, &policy("ttl", "^x", r#"{"message-ttl": -1}"#));
    let output = std::process::Command::new(warren_binary())
        .args([
            "--port",
            "0",
            "--no-management",
            "--no-prometheus",
            "--data-dir",
        ])
        .arg(&dir)
        .arg("--policies")
        .arg(&file)
        .output()
        .expect("run warren");
    assert!(
        !output.status.success(),
        "warren started with a bad policy file"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy 'ttl'") && stderr.contains("message-ttl"),
        "unclear error: {stderr}"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
}
