//! Prometheus metrics (issue 16): `rabbitmq_prometheus`'s endpoints, family names, types,
//! HELP texts and labels (docs/prometheus-rabbitmq-facts.md), so that RabbitMQ's Grafana
//! dashboards work against Warren. Against RabbitMQ's own:
//! `WARREN_TEST_EXTERNAL_URI=amqp://guest:guest@127.0.0.1:5673/%2f
//! WARREN_TEST_EXTERNAL_PROMETHEUS=http://127.0.0.1:15674 cargo test -p integration-tests
//! --test prometheus` (the lab node started with `PLUGINS="rabbitmq_management
//! rabbitmq_prometheus"`).

mod common;

use std::collections::HashMap;

use common::*;
use integration_tests::{TestServer, unique_name};

/// GETs a path of the metrics endpoint: status, content type, body.
async fn scrape(server: &TestServer, path: &str) -> (u16, String, String) {
    let base = match std::env::var("WARREN_TEST_EXTERNAL_PROMETHEUS") {
        Ok(base) if !server.is_warren() => base,
        _ => format!(
            "http://{}",
            server.prometheus_addr().expect("metrics are on")
        ),
    };
    let url = format!("{base}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).call().expect("scrape");
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), kind, body)
    })
    .await
    .expect("the scrape's thread")
}

/// Each family's TYPE and HELP, and its samples (the text after the name).
fn families(body: &str) -> HashMap<String, (String, String, Vec<String>)> {
    let mut out: HashMap<String, (String, String, Vec<String>)> = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            out.entry(name.to_owned()).or_default().1 = help.to_owned();
        } else if !line.is_empty() {
            let end = line.find(['{', ' ']).expect("a sample");
            let (name, rest) = line.split_at(end);
            out.entry(name.to_owned())
                .or_default()
                .2
                .push(rest.to_owned());
        }
    }
    out
}

/// The families RabbitMQ's Overview dashboard reads, with their types.
const OVERVIEW_FAMILIES: &[(&str, &str)] = &[
    ("rabbitmq_queue_messages_ready", "gauge"),
    ("rabbitmq_queue_messages_unacked", "gauge"),
    ("rabbitmq_global_messages_received_total", "counter"),
    ("rabbitmq_global_messages_received_confirm_total", "counter"),
    ("rabbitmq_global_messages_routed_total", "counter"),
    ("rabbitmq_global_messages_confirmed_total", "counter"),
    (
        "rabbitmq_global_messages_unroutable_dropped_total",
        "counter",
    ),
    (
        "rabbitmq_global_messages_unroutable_returned_total",
        "counter",
    ),
    ("rabbitmq_global_messages_redelivered_total", "counter"),
    (
        "rabbitmq_global_messages_delivered_consume_auto_ack_total",
        "counter",
    ),
    (
        "rabbitmq_global_messages_delivered_consume_manual_ack_total",
        "counter",
    ),
    (
        "rabbitmq_global_messages_delivered_get_auto_ack_total",
        "counter",
    ),
    (
        "rabbitmq_global_messages_delivered_get_manual_ack_total",
        "counter",
    ),
    ("rabbitmq_global_messages_get_empty_total", "counter"),
    ("rabbitmq_global_messages_acknowledged_total", "counter"),
    ("rabbitmq_channels", "gauge"),
    ("rabbitmq_channel_consumers", "gauge"),
    ("rabbitmq_connections", "gauge"),
    ("rabbitmq_queues", "gauge"),
    ("rabbitmq_consumers", "gauge"),
    ("rabbitmq_build_info", "untyped"),
    ("rabbitmq_identity_info", "untyped"),
    ("rabbitmq_resident_memory_limit_bytes", "gauge"),
    ("rabbitmq_process_resident_memory_bytes", "gauge"),
    ("rabbitmq_disk_space_available_bytes", "gauge"),
    ("rabbitmq_process_max_fds", "gauge"),
    ("rabbitmq_process_open_fds", "gauge"),
    ("rabbitmq_process_max_tcp_sockets", "gauge"),
    ("rabbitmq_process_open_tcp_sockets", "gauge"),
    ("rabbitmq_queues_declared_total", "counter"),
    ("rabbitmq_queues_created_total", "counter"),
    ("rabbitmq_queues_deleted_total", "counter"),
    ("rabbitmq_channels_opened_total", "counter"),
    ("rabbitmq_channels_closed_total", "counter"),
    ("rabbitmq_connections_opened_total", "counter"),
    ("rabbitmq_connections_closed_total", "counter"),
    ("rabbitmq_erlang_uptime_seconds", "gauge"),
    ("rabbitmq_disk_space_available_limit_bytes", "gauge"),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_dashboards_families_are_served_with_rabbitmqs_types() {
    let server = TestServer::start().await;
    let (status, kind, body) = scrape(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let found = families(&body);
    for &(name, kind) in OVERVIEW_FAMILIES {
        let (got, help, _) = found
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert_eq!(got, kind, "{name}'s type");
        assert!(!help.is_empty(), "{name} has a HELP");
    }
    let identity = &found["rabbitmq_identity_info"].2;
    assert_eq!(identity.len(), 1, "one identity per endpoint: {identity:?}");
    assert!(
        identity[0].contains("rabbitmq_node=\"") && identity[0].contains("rabbitmq_cluster=\"")
    );
    assert_eq!(
        found["rabbitmq_queue_messages_ready"].1,
        "Messages ready to be delivered to consumers"
    );
    let (unknown, _, text) = scrape(&server, "/metrics/nosuch").await;
    assert_eq!((unknown, text.as_str()), (404, "Unknown Registry"));
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_follow_the_traffic_and_per_object_labels_each_queue() {
    let server = TestServer::start().await;
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    let q = unique_name("prom-q");
    declare_queue(&ch, &q).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    for _ in 0..5 {
        publish(&ch, "", &q, b"scraped").await;
    }
    let value = |body: &str, name: &str| -> Option<f64> {
        families(body)
            .get(name)
            .and_then(|f| f.2.first().cloned())
            .and_then(|s| s.rsplit(' ').next().and_then(|v| v.parse().ok()))
    };
    let counted = integration_tests::wait_for(std::time::Duration::from_secs(20), || async {
        let (_, _, body) = scrape(&server, "/metrics").await;
        value(&body, "rabbitmq_global_messages_received_total").unwrap_or(0.0) >= 5.0
            && value(&body, "rabbitmq_global_messages_confirmed_total").unwrap_or(0.0) >= 5.0
            && value(&body, "rabbitmq_queue_messages_ready").unwrap_or(0.0) >= 5.0
    })
    .await;
    assert!(counted, "{}", scrape(&server, "/metrics").await.2);
    let labelled = format!("{{vhost=\"/\",queue=\"{q}\"}} 5");
    let per_object = integration_tests::wait_for(std::time::Duration::from_secs(20), || async {
        let (_, _, body) = scrape(&server, "/metrics/per-object").await;
        families(&body)
            .get("rabbitmq_queue_messages_ready")
            .is_some_and(|f| f.2.contains(&labelled))
    })
    .await;
    assert!(
        per_object,
        "{}",
        scrape(&server, "/metrics/per-object").await.2
    );
    let (_, _, detailed) = scrape(
        &server,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=%2F",
    )
    .await;
    let found = families(&detailed);
    assert!(
        found
            .get("rabbitmq_detailed_queue_messages_ready")
            .is_some_and(|f| f.2.contains(&labelled)),
        "{detailed}"
    );
    assert!(found.contains_key("rabbitmq_identity_info"));
}

#[tokio::test(flavor = "multi_thread")]
async fn detailed_families_are_served_each_on_its_own() {
    let server = TestServer::start().await;
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    let (x, q) = (unique_name("prom-x"), unique_name("prom-consumed"));
    declare_exchange_with(&ch, &x, lapin::ExchangeKind::Direct, table(&[])).await;
    declare_queue(&ch, &q).await;
    bind_queue(&ch, &q, &x, "a").await;
    bind_queue(&ch, &q, &x, "b").await;
    let _consumer = consume_with(
        &ch,
        &q,
        "",
        lapin::options::BasicConsumeOptions::default(),
        table(&[]),
    )
    .await;
    let path = "/metrics/detailed?family=queue_consumer_count&family=exchange_bindings\
                &family=exchange_names&family=vhost_status&family=connection_churn_metrics\
                &family=nosuch";
    let consumer = format!("{{vhost=\"/\",queue=\"{q}\"}} 1");
    let counted = integration_tests::wait_for(std::time::Duration::from_secs(20), || async {
        families(&scrape(&server, path).await.2)
            .get("rabbitmq_detailed_queue_consumers")
            .is_some_and(|f| f.2.contains(&consumer))
    })
    .await;
    let (status, _, body) = scrape(&server, path).await;
    assert!(counted, "{body}");
    assert_eq!(status, 200);
    let found = families(&body);
    let labels = format!("{{vhost=\"/\",exchange=\"{x}\",type=\"direct\"}}");
    let family = |name: &str| {
        found
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    assert_eq!(
        family("rabbitmq_cluster_exchange_bindings").1,
        "Number of bindings for an exchange. This value is cluster-wide."
    );
    assert!(
        family("rabbitmq_cluster_exchange_bindings")
            .2
            .contains(&format!("{labels} 2")),
        "{body}"
    );
    assert!(
        family("rabbitmq_cluster_exchange_name")
            .2
            .contains(&format!("{labels} 1")),
        "{body}"
    );
    assert!(
        family("rabbitmq_cluster_vhost_status")
            .2
            .contains(&"{vhost=\"/\"} 1".to_owned()),
        "{body}"
    );
    assert_eq!(
        family("rabbitmq_detailed_connections_opened_total").0,
        "counter"
    );
    assert!(
        !found.contains_key("rabbitmq_detailed_queue_messages_ready"),
        "queue_coarse_metrics was not asked for:\n{body}"
    );
    // queue_coarse_metrics holds the depths, not the consumers.
    let (_, _, coarse) = scrape(&server, "/metrics/detailed?family=queue_coarse_metrics").await;
    let coarse = families(&coarse);
    assert!(coarse.contains_key("rabbitmq_detailed_queue_messages"));
    assert!(!coarse.contains_key("rabbitmq_detailed_queue_consumers"));
}

#[tokio::test(flavor = "multi_thread")]
async fn warrens_own_families_show_the_group_commit_and_consumer_group_lag() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        return;
    }
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    let q = unique_name("prom-groups");
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            durable,
            table(&[("x-partitions", int(2))]),
        ),
    )
    .await
    .expect("declare");
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    for i in 0..6 {
        publish_with(
            &ch,
            "",
            &q,
            format!("m{i}").as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    let member = channel(&conn).await;
    within(
        "basic.qos",
        member.basic_qos(1, lapin::options::BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let _consumer = within(
        "basic.consume",
        member.basic_consume(
            q.as_str().into(),
            "".into(),
            Default::default(),
            table(&[("x-consumer-group", text("g"))]),
        ),
    )
    .await
    .expect("join");
    let lag_line = format!("warren_consumer_group_lag{{vhost=\"/\",queue=\"{q}\",group=\"g\"");
    let seen = integration_tests::wait_for(std::time::Duration::from_secs(10), || async {
        let (_, _, body) = scrape(&server, "/metrics").await;
        let found = families(&body);
        let commits = found
            .get("warren_group_commit_duration_seconds")
            .map(|f| f.0.clone());
        commits.as_deref() == Some("histogram")
            && body.contains("warren_group_commit_duration_seconds_count ")
            && !body.contains("warren_group_commit_duration_seconds_count 0\n")
            && body.contains("warren_store_fsync_duration_seconds_count ")
            && !body.contains("warren_store_fsync_duration_seconds_count 0\n")
            && body.lines().filter(|l| l.starts_with(&lag_line)).count() == 2
            && body.contains(&format!(
                "warren_consumer_group_members{{vhost=\"/\",queue=\"{q}\",group=\"g\"}} 1"
            ))
    })
    .await;
    assert!(seen, "{}", scrape(&server, "/metrics").await.2);
}
