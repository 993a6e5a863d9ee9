//! The `warren` binary: flags, one-line errors, and a clean stop on SIGTERM.

mod common;

use std::process::{Command, Stdio};

use integration_tests::{WarrenProcess, temp_data_dir};

fn warren() -> Command {
    Command::new(integration_tests::warren_binary())
}

#[test]
fn help_and_version_succeed() {
    let help = warren().arg("--help").output().expect("run warren --help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bind",
        "--port",
        "--data-dir",
        "--log-level",
        "--default-user",
        "--default-pass",
    ] {
        assert!(text.contains(flag), "--help lists {flag}:\n{text}");
    }
    let version = warren()
        .arg("--version")
        .output()
        .expect("run warren --version");
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("warren "));
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let out = warren().arg("--no-such-flag").output().expect("run warren");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let out = warren()
        .args(["--port", "not-a-port"])
        .output()
        .expect("run warren");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

#[test]
fn an_unusable_port_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = temp_data_dir("cli-port");
    let out = warren()
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--log-level",
            "error",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run warren");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_management_port_says_which_flag_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = temp_data_dir("cli-mgmt-port");
    let out = warren()
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--management-port",
            &port,
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run warren");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--management-port") && stderr.contains("--no-management"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_clients_with_320_and_exits_cleanly() {
    let dir = temp_data_dir("cli-term");
    let broker = WarrenProcess::start(&dir).await;
    let mut raw = common::Raw::connect_open(broker.addr()).await;
    raw.open_channel(1).await;
    let (status, close) = tokio::join!(
        tokio::task::spawn_blocking(move || broker.terminate()),
        raw.expect_connection_close()
    );
    let (code, text, _, _) = close;
    assert_eq!(code, 320);
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    let status = status.expect("join");
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs written to a file (not a terminal) carry no colour codes: they would litter
/// every log file and every tool that reads one.
#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_file_carry_no_colour_codes() {
    let dir = temp_data_dir("cli-log-file");
    let log = dir.with_extension("log");
    let broker = WarrenProcess::start_logged(
        &dir,
        integration_tests::ProcessOptions {
            args: &["--log-level", "info"],
            stderr: Some(&log),
        },
    )
    .await;
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("accepting AMQP connections"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// A log that cannot be written (a full disk, a closed pipe) loses its lines, never the
/// broker: it starts, serves a client and stops cleanly with every write to its stderr
/// failing. (tracing-subscriber reports such a failure with `eprintln!`, which panics
/// when stderr fails too: the logging thread, a connection, died with it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_written_does_not_stop_the_broker() {
    let dir = temp_data_dir("cli-log-full");
    let broker = WarrenProcess::start_logged(
        &dir,
        integration_tests::ProcessOptions {
            args: &["--log-level", "debug"],
            stderr: Some(std::path::Path::new("/dev/full")),
        },
    )
    .await;
    let conn = common::connect_uri(&broker.uri()).await.expect("connect");
    let channel = common::channel(&conn).await;
    common::declare_queue(&channel, "logs-full").await;
    common::publish(&channel, "", "logs-full", b"kept").await;
    let got = common::within(
        "basic.get",
        channel.basic_get(
            "logs-full".into(),
            lapin::options::BasicGetOptions::default(),
        ),
    )
    .await
    .expect("basic.get")
    .expect("the message");
    assert_eq!(got.delivery.data, b"kept");
    common::within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json` writes one JSON object per line, a connection's lines carrying
/// its span.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_connection_span() {
    let dir = temp_data_dir("cli-log-json");
    let log = dir.with_extension("log");
    let broker = WarrenProcess::start_logged(
        &dir,
        integration_tests::ProcessOptions {
            args: &["--log-level", "info", "--log-format", "json"],
            stderr: Some(&log),
        },
    )
    .await;
    let conn = common::connect_uri(&broker.uri()).await.expect("connect");
    common::within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&log).expect("read the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "accepting AMQP connections"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "connection opened"
                && l["span"]["name"] == "connection"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
