//! Prometheus metrics on port 15692, as `rabbitmq_prometheus` serves them
//! (`docs/prometheus-rabbitmq-facts.md`): `/metrics` sums over objects,
//! `/metrics/per-object` labels each queue, channel and connection, and
//! `/metrics/detailed?family=…` gives the families asked for. The names, HELP texts,
//! types and labels are RabbitMQ's, so its Grafana dashboards work unchanged.
//!
//! A scrape takes no lock on the message path: queue lengths come from the management
//! sampler's last reading (as RabbitMQ's come from its last stats emission), counters
//! from atomics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::management::rates::Rates;
use crate::stats::Tally;

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The RabbitMQ version the metrics claim (as the management API's).
const RABBITMQ_VERSION: &str = crate::management::overview::RABBITMQ_VERSION;

#[derive(Clone)]
struct Scrape {
    broker: Weak<Broker>,
    rates: Arc<RwLock<Rates>>,
}

/// Serves the metrics on `listener` until `stopping` turns true.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: TcpListener,
    broker: Weak<Broker>,
    rates: Arc<RwLock<Rates>>,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/", get(aggregated))
        .route("/metrics/{registry}", get(registry))
        .fallback(|| async { crate::management::reply::ApiError::not_found() })
        .with_state(Scrape { broker, rates })
        .into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn aggregated(State(scrape): State<Scrape>) -> Response {
    let Some(broker) = scrape.broker.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let rates = scrape.rates.read();
    text(render(&broker, &rates, Mode::Aggregated))
}

async fn registry(
    State(scrape): State<Scrape>,
    Path(registry): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(broker) = scrape.broker.upgrade() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let rates = scrape.rates.read();
    match registry.as_str() {
        "per-object" => text(render(&broker, &rates, Mode::PerObject)),
        "detailed" => {
            let (families, vhosts) = detailed_query(query.as_deref().unwrap_or_default());
            text(render_detailed(&broker, &rates, &families, &vhosts))
        }
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "Unknown Registry",
        )
            .into_response(),
    }
}

/// The `family` and `vhost` values of a detailed scrape (both may repeat).
fn detailed_query(query: &str) -> (Vec<String>, Vec<String>) {
    let (mut families, mut vhosts) = (Vec::new(), Vec::new());
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = percent_decode(value);
        match key {
            "family" => families.push(value),
            "vhost" => vhosts.push(value),
            _ => {}
        }
    }
    (families, vhosts)
}

/// `%XX` and `+` decoded.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A label value escaped as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its TYPE and HELP lines, in RabbitMQ's order.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    /// One sample.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Aggregated,
    PerObject,
}

/// The node's name and a stable cluster id (from the data directory's path).
fn identity(broker: &Broker) -> (String, String) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let node = crate::management::overview::node_name();
    let path = broker.config().data_dir.to_string_lossy().into_owned();
    let digest = sha2::Sha256::digest(path.as_bytes());
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
    (
        node,
        format!("rabbitmq-cluster-id-{}", &id[..22.min(id.len())]),
    )
}

fn info_families(out: &mut Exposition, broker: &Broker, endpoint: &str) {
    let (node, cluster_id) = identity(broker);
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    out.sample(
        "rabbitmq_build_info",
        &[
            ("product_name", "Warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
            ("rabbitmq_version", RABBITMQ_VERSION),
            ("prometheus_plugin_version", RABBITMQ_VERSION),
            ("prometheus_client_version", "4.9.1"),
            ("erlang_version", "none"),
        ],
        1,
    );
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    out.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &node),
            ("rabbitmq_cluster", &node),
            ("rabbitmq_cluster_permanent_id", &cluster_id),
            ("rabbitmq_endpoint", endpoint),
        ],
        1,
    );
}

/// Reads a number from a `/proc/self` file line.
fn proc_status(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Connections, channels and queues opened, closed, declared, created and deleted
/// since start (RabbitMQ's `connection_churn_metrics`).
fn churn_families(out: &mut Exposition, broker: &Broker) {
    let churn = &broker.registry().churn;
    let (mut declared, mut created, mut deleted) = (0, 0, 0);
    for vhost in broker.all_vhosts() {
        let q = vhost.queue_churn();
        declared += q.declared.load(Relaxed);
        created += q.created.load(Relaxed);
        deleted += q.deleted.load(Relaxed);
    }
    for (name, help, value) in [
        (
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
            churn.connections_opened.load(Relaxed),
        ),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
            churn.connections_closed.load(Relaxed),
        ),
        (
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
            churn.channels_opened.load(Relaxed),
        ),
        (
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
            churn.channels_closed.load(Relaxed),
        ),
        (
            "rabbitmq_queues_declared_total",
            "Total number of queues declared",
            declared,
        ),
        (
            "rabbitmq_queues_created_total",
            "Total number of queues created",
            created,
        ),
        (
            "rabbitmq_queues_deleted_total",
            "Total number of queues deleted",
            deleted,
        ),
    ] {
        out.single(name, "counter", help, value);
    }
}

fn node_families(out: &mut Exposition, broker: &Broker) {
    let alarms = broker.alarms().current();
    out.single(
        "rabbitmq_alarms_file_descriptor_limit",
        "untyped",
        "is 1 if file descriptor limit alarm is in effect",
        0,
    );
    out.single(
        "rabbitmq_alarms_free_disk_space_watermark",
        "untyped",
        "is 1 if free disk space watermark alarm is in effect",
        u8::from(alarms.disk),
    );
    out.single(
        "rabbitmq_alarms_memory_used_watermark",
        "untyped",
        "is 1 if VM memory watermark alarm is in effect",
        u8::from(alarms.memory),
    );
    churn_families(out, broker);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(0);
    let rss = proc_status("VmRSS:").unwrap_or(0) * 1024;
    let config = broker.config();
    let disk_free =
        rustix::fs::statvfs(&config.data_dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
    let connections = broker.registry().connections().len();
    out.single(
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
        open_fds,
    );
    out.single(
        "rabbitmq_process_open_tcp_sockets",
        "gauge",
        "Open TCP sockets",
        connections,
    );
    out.single(
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        rss,
    );
    out.single(
        "rabbitmq_disk_space_available_bytes",
        "gauge",
        "Disk space available in bytes",
        disk_free,
    );
    out.single(
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
        max_fds,
    );
    out.single(
        "rabbitmq_process_max_tcp_sockets",
        "gauge",
        "Open TCP sockets limit",
        config.max_connections.unwrap_or(max_fds),
    );
    out.single(
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        config.memory_limit,
    );
    out.single(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        config.disk_free_limit,
    );
    out.single(
        "rabbitmq_erlang_uptime_seconds",
        "gauge",
        "Node uptime",
        broker.uptime_ms() as f64 / 1000.0,
    );
    let churn = &broker.registry().churn;
    for (name, help, value) in [
        (
            "rabbitmq_auth_attempts_total",
            "Total number of authorization attempts",
            churn.auth_attempts.load(Relaxed),
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total",
            "Total number of successful authentication attempts",
            churn.auth_succeeded.load(Relaxed),
        ),
        (
            "rabbitmq_auth_attempts_failed_total",
            "Total number of failed authentication attempts",
            churn.auth_failed.load(Relaxed),
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[("protocol", "amqp091")], value);
    }
}

/// The queue families: one sample each, summed (aggregated), or one per queue. The
/// first three are `/metrics/detailed`'s `queue_coarse_metrics`, the last its
/// `queue_consumer_count`.
const QUEUE_FAMILIES: &[(&str, &str, &str, &str)] = &[
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        "messages_ready",
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        "messages_unacknowledged",
    ),
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        "messages",
    ),
    (
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers on a queue",
        "consumers",
    ),
];

/// The queue families of `QUEUE_FAMILIES` that `which` holds, of the queues in `vhosts`
/// (all when empty).
fn queue_families(
    out: &mut Exposition,
    rates: &Rates,
    mode: Mode,
    vhosts: &[String],
    which: &[(&str, &str, &str, &str)],
) {
    let mut queues: Vec<(String, String, HashMap<&'static str, u64>)> = Vec::new();
    rates.each_queue(|vhost, name, fields| {
        if vhosts.is_empty() || vhosts.iter().any(|v| v == vhost) {
            queues.push((vhost.to_owned(), name.to_owned(), fields.clone()));
        }
    });
    queues.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for &(family, kind, help, field) in which {
        out.family(family, kind, help);
        match mode {
            Mode::Aggregated => {
                let sum: u64 = queues
                    .iter()
                    .map(|q| q.2.get(field).copied().unwrap_or(0))
                    .sum();
                out.sample(family, &[], sum);
            }
            Mode::PerObject => {
                for (vhost, name, fields) in &queues {
                    let value = fields.get(field).copied().unwrap_or(0);
                    out.sample(family, &[("vhost", vhost), ("queue", name)], value);
                }
            }
        }
    }
    if mode == Mode::Aggregated {
        let published: u64 = queues
            .iter()
            .map(|q| q.2.get("publish").copied().unwrap_or(0))
            .sum();
        out.single(
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Total number of messages published to queues",
            published,
        );
    }
}

/// A family: its name, its HELP, and how to read its value.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One open channel, as its families read it.
struct ChannelRow {
    label: String,
    consumers: u64,
    unacked: u64,
    unconfirmed: u64,
    consumer_prefetch: u64,
    channel_prefetch: u64,
    tally: Tally,
}

/// The channel counter families and the `Tally` field each reads.
const CHANNEL_COUNTERS: &[Family<Tally>] = &[
    (
        "rabbitmq_channel_messages_published_total",
        "Total number of messages published into an exchange on a channel",
        |t| t.publish,
    ),
    (
        "rabbitmq_channel_messages_confirmed_total",
        "Total number of messages published into an exchange and confirmed on the channel",
        |t| t.confirm,
    ),
    (
        "rabbitmq_channel_messages_unroutable_returned_total",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        |t| t.return_unroutable,
    ),
    (
        "rabbitmq_channel_messages_unroutable_dropped_total",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        |t| t.drop_unroutable,
    ),
    (
        "rabbitmq_channel_get_ack_total",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        |t| t.get,
    ),
    (
        "rabbitmq_channel_get_total",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        |t| t.get_no_ack,
    ),
    (
        "rabbitmq_channel_messages_delivered_ack_total",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        |t| t.deliver,
    ),
    (
        "rabbitmq_channel_messages_delivered_total",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        |t| t.deliver_no_ack,
    ),
    (
        "rabbitmq_channel_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        |t| t.redeliver,
    ),
    (
        "rabbitmq_channel_messages_acked_total",
        "Total number of messages acknowledged by consumers",
        |t| t.ack,
    ),
    (
        "rabbitmq_channel_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        |t| t.get_empty,
    ),
];

fn channel_families(out: &mut Exposition, broker: &Broker, mode: Mode) {
    let mut channels = Vec::new();
    let connections = broker.registry().connections();
    for c in &connections {
        for ch in c.channels() {
            let consumers = ch.consumers();
            channels.push(ChannelRow {
                label: format!("<{}.{}>", c.id, ch.number),
                consumers: consumers.len() as u64,
                unacked: u64::from(ch.unacked.load(Relaxed)),
                unconfirmed: u64::from(ch.unconfirmed.load(Relaxed)),
                consumer_prefetch: consumers.iter().map(|x| u64::from(x.prefetch)).sum(),
                channel_prefetch: u64::from(ch.global_prefetch.load(Relaxed)),
                tally: ch.messages.read(),
            });
        }
    }
    let gauges: [Family<ChannelRow>; 5] = [
        (
            "rabbitmq_channel_consumers",
            "Consumers on a channel",
            |c| c.consumers,
        ),
        (
            "rabbitmq_channel_messages_unacked",
            "Delivered but not yet acknowledged messages",
            |c| c.unacked,
        ),
        (
            "rabbitmq_channel_messages_unconfirmed",
            "Published but not yet confirmed messages",
            |c| c.unconfirmed,
        ),
        (
            "rabbitmq_consumer_prefetch",
            "Limit of unacknowledged messages for each consumer",
            |c| c.consumer_prefetch,
        ),
        (
            "rabbitmq_channel_prefetch",
            "Total limit of unacknowledged messages for all consumers on a channel",
            |c| c.channel_prefetch,
        ),
    ];
    for (name, help, read) in gauges {
        out.family(name, "gauge", help);
        match mode {
            Mode::Aggregated => out.sample(name, &[], channels.iter().map(read).sum::<u64>()),
            Mode::PerObject => {
                for c in &channels {
                    out.sample(name, &[("channel", &c.label)], read(c));
                }
            }
        }
    }
    for &(name, help, read) in CHANNEL_COUNTERS {
        out.family(name, "counter", help);
        match mode {
            Mode::Aggregated => {
                out.sample(
                    name,
                    &[],
                    channels.iter().map(|c| read(&c.tally)).sum::<u64>(),
                );
            }
            Mode::PerObject => {
                for c in &channels {
                    out.sample(name, &[("channel", &c.label)], read(&c.tally));
                }
            }
        }
    }
    let conn_rows: Vec<(String, [u64; 5])> = connections
        .iter()
        .map(|c| {
            (
                format!("<{}.0>", c.id),
                [
                    c.recv_oct.load(Relaxed),
                    c.send_oct.load(Relaxed),
                    c.recv_cnt.load(Relaxed),
                    c.send_cnt.load(Relaxed),
                    c.channel_count() as u64,
                ],
            )
        })
        .collect();
    for (i, (name, kind, help)) in [
        (
            "rabbitmq_connection_incoming_bytes_total",
            "counter",
            "Total number of bytes received on a connection",
        ),
        (
            "rabbitmq_connection_outgoing_bytes_total",
            "counter",
            "Total number of bytes sent on a connection",
        ),
        (
            "rabbitmq_connection_incoming_packets_total",
            "counter",
            "Total number of packets received on a connection",
        ),
        (
            "rabbitmq_connection_outgoing_packets_total",
            "counter",
            "Total number of packets sent on a connection",
        ),
        (
            "rabbitmq_connection_channels",
            "gauge",
            "Channels on a connection",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        out.family(name, kind, help);
        match mode {
            Mode::Aggregated => {
                out.sample(name, &[], conn_rows.iter().map(|c| c.1[i]).sum::<u64>());
            }
            Mode::PerObject => {
                for (label, values) in &conn_rows {
                    out.sample(name, &[("channel", label)], values[i]);
                }
            }
        }
    }
    let consumers: u64 = channels.iter().map(|c| c.consumers).sum();
    out.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        connections.len(),
    );
    out.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels.len(),
    );
    out.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );
}

/// The `rabbitmq_global_*` families, monotonic since start.
fn global_families(out: &mut Exposition, broker: &Broker, rates: &Rates) {
    let t = broker.message_counters().read();
    let amqp = [("protocol", "amqp091")];
    let per_protocol: [(&str, &str, u64); 6] = [
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            t.confirm,
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            t.publish_confirm,
        ),
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            t.publish,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            t.routed,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            t.drop_unroutable,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            t.return_unroutable,
        ),
    ];
    for (name, help, value) in per_protocol {
        out.family(name, "counter", help);
        out.sample(name, &amqp, value);
    }
    let consumers: u64 = broker
        .registry()
        .connections()
        .iter()
        .flat_map(|c| c.channels())
        .map(|ch| ch.consumers().len() as u64)
        .sum();
    let mut queues = 0u64;
    rates.each_queue(|_, _, _| queues += 1);
    out.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    );
    out.sample("rabbitmq_global_consumers", &amqp, consumers);
    // Every message counted under classic queues: Warren does not split by queue type yet.
    let classic = [
        ("protocol", "amqp091"),
        ("queue_type", "rabbit_classic_queue"),
    ];
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            t.ack,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            t.deliver_no_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            t.deliver,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            t.get_no_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            t.get,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            t.deliver_get(),
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            t.get_empty,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            t.redeliver,
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &classic, value);
    }
    let publishers: u64 = broker
        .registry()
        .connections()
        .iter()
        .flat_map(|c| c.channels())
        .filter(|ch| ch.messages.read().publish > 0)
        .count() as u64;
    out.family(
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers",
    );
    out.sample("rabbitmq_global_publishers", &amqp, publishers);
    out.single("rabbitmq_queues", "gauge", "Queues available", queues);
}

/// A histogram family: cumulative buckets by `le`, then the sum and the count.
fn histogram(out: &mut Exposition, name: &str, help: &str, h: &crate::stats::Histogram) {
    let (buckets, sum, count) = h.read();
    out.family(name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (bound, cumulative) in buckets {
        let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        out.sample(&bucket, &[("le", &le)], cumulative);
    }
    out.sample(&format!("{name}_sum"), &[], sum);
    out.sample(&format!("{name}_count"), &[], count);
}

/// Warren's own families: the group commit, and consumer groups' lag and rebalances.
fn warren_families(out: &mut Exposition, broker: &Broker, rates: &Rates) {
    let stats = broker.commit_stats();
    histogram(
        out,
        "warren_group_commit_duration_seconds",
        "Time a group-commit round takes: the writes and fsyncs of the definitions and of every queue log in it",
        &stats.duration,
    );
    histogram(
        out,
        "warren_group_commit_requests",
        "Requests (a connection's batch of publishes, a moved message) one group-commit round made durable",
        &stats.requests,
    );
    histogram(
        out,
        "warren_group_commit_logs",
        "Queue logs one group-commit round synced",
        &stats.logs,
    );
    histogram(
        out,
        "warren_store_fsync_duration_seconds",
        "Time one fsync step of a group-commit round takes (a round syncs its queue logs in one step, or in several when file descriptors are short)",
        &stats.sync,
    );
    let partitions = rates.group_partitions();
    out.family(
        "warren_consumer_group_lag",
        "gauge",
        "Messages of a partition not yet delivered to its consumer group (a stream's: not yet settled by it)",
    );
    for p in partitions {
        let index = p.partition.to_string();
        let labels = [
            ("vhost", p.vhost.as_str()),
            ("queue", p.queue.as_str()),
            ("group", p.group.as_str()),
            ("partition", index.as_str()),
        ];
        out.sample("warren_consumer_group_lag", &labels, p.lag);
    }
    out.family(
        "warren_consumer_group_unacked",
        "gauge",
        "Deliveries of a partition to its consumer group not yet settled",
    );
    for p in partitions {
        let index = p.partition.to_string();
        let labels = [
            ("vhost", p.vhost.as_str()),
            ("queue", p.queue.as_str()),
            ("group", p.group.as_str()),
            ("partition", index.as_str()),
        ];
        out.sample("warren_consumer_group_unacked", &labels, p.unacked);
    }
    let mut groups: Vec<(&str, &str, &str, u64, u64)> = partitions
        .iter()
        .map(|p| {
            (
                p.vhost.as_str(),
                p.queue.as_str(),
                p.group.as_str(),
                p.members,
                p.rebalances,
            )
        })
        .collect();
    groups.dedup();
    out.family(
        "warren_consumer_group_members",
        "gauge",
        "Members of a consumer group",
    );
    for &(vhost, queue, group, members, _) in &groups {
        let labels = [("vhost", vhost), ("queue", queue), ("group", group)];
        out.sample("warren_consumer_group_members", &labels, members);
    }
    out.family(
        "warren_consumer_group_rebalances_total",
        "counter",
        "Times a consumer group's partitions were assigned afresh",
    );
    for &(vhost, queue, group, _, rebalances) in &groups {
        let labels = [("vhost", vhost), ("queue", queue), ("group", group)];
        out.sample(
            "warren_consumer_group_rebalances_total",
            &labels,
            rebalances,
        );
    }
}

/// `/metrics` or `/metrics/per-object`.
fn render(broker: &Broker, rates: &Rates, mode: Mode) -> String {
    let mut out = Exposition::default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(broker.uptime_ms() / 1000);
    out.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        started,
    );
    node_families(&mut out, broker);
    queue_families(&mut out, rates, mode, &[], QUEUE_FAMILIES);
    channel_families(&mut out, broker, mode);
    let endpoint = match mode {
        Mode::Aggregated => "aggregated",
        Mode::PerObject => "per-object",
    };
    info_families(&mut out, broker, endpoint);
    global_families(&mut out, broker, rates);
    warren_families(&mut out, broker, rates);
    out.out.push('\n');
    out.out
}

/// `/metrics/detailed`: the families asked for (unknown ones are left out, as RabbitMQ
/// does), with the `rabbitmq_detailed_` prefix, or `rabbitmq_cluster_` for the vhost
/// and exchange families. Only the queue families heed `vhosts`.
fn render_detailed(
    broker: &Broker,
    rates: &Rates,
    families: &[String],
    vhosts: &[String],
) -> String {
    let asked = |family: &str| families.iter().any(|f| f == family);
    let mut out = Exposition::default();
    let mut detailed = Exposition::default();
    if asked("connection_churn_metrics") {
        churn_families(&mut detailed, broker);
    }
    if asked("queue_coarse_metrics") {
        queue_families(
            &mut detailed,
            rates,
            Mode::PerObject,
            vhosts,
            &QUEUE_FAMILIES[..3],
        );
    }
    if asked("queue_consumer_count") {
        queue_families(
            &mut detailed,
            rates,
            Mode::PerObject,
            vhosts,
            &QUEUE_FAMILIES[3..],
        );
    }
    out.out.push_str(&detailed_names(&detailed.out));
    if asked("vhost_status") {
        out.family(
            "rabbitmq_cluster_vhost_status",
            "gauge",
            "Whether a given vhost is running",
        );
        for vhost in broker.all_vhosts() {
            out.sample(
                "rabbitmq_cluster_vhost_status",
                &[("vhost", vhost.name())],
                1,
            );
        }
    }
    if asked("exchange_bindings") || asked("exchange_names") {
        exchange_families(
            &mut out,
            broker,
            asked("exchange_bindings"),
            asked("exchange_names"),
        );
    }
    info_families(&mut out, broker, "detailed");
    out.out.push('\n');
    out.out
}

/// `text` with each family's name (on its TYPE and HELP lines and at the start of its
/// samples) given the `rabbitmq_detailed_` prefix; label values and HELP texts are left
/// as they are.
fn detailed_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive('\n') {
        let (head, rest) = match line.strip_prefix("# TYPE ") {
            Some(rest) => ("# TYPE ", rest),
            None => match line.strip_prefix("# HELP ") {
                Some(rest) => ("# HELP ", rest),
                None => ("", line),
            },
        };
        out.push_str(head);
        match rest.strip_prefix("rabbitmq_") {
            Some(name) => {
                out.push_str("rabbitmq_detailed_");
                out.push_str(name);
            }
            None => out.push_str(rest),
        }
    }
    out
}

/// `rabbitmq_cluster_exchange_bindings` (bindings from each exchange) and
/// `rabbitmq_cluster_exchange_name` (each exchange, 1), without internal exchanges and
/// the default exchange, as RabbitMQ lists them.
fn exchange_families(out: &mut Exposition, broker: &Broker, bindings: bool, names: bool) {
    let mut rows = Vec::new();
    for vhost in broker.all_vhosts() {
        for exchange in vhost.exchanges() {
            let settings = exchange.settings();
            if !settings.internal {
                rows.push((
                    vhost.name().to_owned(),
                    exchange.name().to_string(),
                    settings.type_name(),
                    exchange.bindings().len(),
                ));
            }
        }
    }
    rows.sort();
    let mut family = |name: &str, help: &str, value: fn(usize) -> usize| {
        out.family(name, "gauge", help);
        for (vhost, exchange, kind, bindings) in &rows {
            let labels = [
                ("vhost", vhost.as_str()),
                ("exchange", exchange),
                ("type", kind),
            ];
            out.sample(name, &labels, value(*bindings));
        }
    };
    if bindings {
        family(
            "rabbitmq_cluster_exchange_bindings",
            "Number of bindings for an exchange. This value is cluster-wide.",
            |bindings| bindings,
        );
    }
    if names {
        family(
            "rabbitmq_cluster_exchange_name",
            "Enumerates exchanges without any additional info. This value is cluster-wide. \
             A cheaper alternative to `exchange_bindings`",
            |_| 1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detailed_names_prefix_the_families_not_the_labels_or_help() {
        let text = "# TYPE rabbitmq_queue_messages gauge\n\
                    # HELP rabbitmq_queue_messages Sum of rabbitmq_x\n\
                    rabbitmq_queue_messages{vhost=\"/\",queue=\"rabbitmq_q\"} 3\n";
        assert_eq!(
            detailed_names(text),
            "# TYPE rabbitmq_detailed_queue_messages gauge\n\
             # HELP rabbitmq_detailed_queue_messages Sum of rabbitmq_x\n\
             rabbitmq_detailed_queue_messages{vhost=\"/\",queue=\"rabbitmq_q\"} 3\n"
        );
    }

    #[test]
    fn samples_are_written_in_the_exposition_format_with_escaped_labels() {
        let mut out = Exposition::default();
        out.family("rabbitmq_queue_messages", "gauge", "Depth");
        out.sample(
            "rabbitmq_queue_messages",
            &[("vhost", "/"), ("queue", "we\"ird\\q\n")],
            3,
        );
        assert_eq!(
            out.out,
            "# TYPE rabbitmq_queue_messages gauge\n# HELP rabbitmq_queue_messages Depth\n\
             rabbitmq_queue_messages{vhost=\"/\",queue=\"we\\\"ird\\\\q\\n\"} 3\n"
        );
    }

    #[test]
    fn detailed_queries_repeat_their_keys() {
        let (families, vhosts) =
            detailed_query("family=queue_coarse_metrics&family=queue_metrics&vhost=a%20b%2Fc");
        assert_eq!(families, ["queue_coarse_metrics", "queue_metrics"]);
        assert_eq!(vhosts, ["a b/c"]);
    }
}
