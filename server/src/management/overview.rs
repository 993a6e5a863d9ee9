//! `/api/overview`, `/api/whoami`, `/api/nodes` and `/api/extensions`: who is asking,
//! and the broker as one node of a one-node cluster.

use axum::Router;
use axum::extract::Path;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::rates::{Subject, message_fields};
use super::reply::{ApiError, ApiResult, json};

/// The RabbitMQ version the API claims, so that tools that check it go on.
pub const RABBITMQ_VERSION: &str = "3.13.0";

/// The node's name, as RabbitMQ names nodes (the host's name when first asked).
pub fn node_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        format!("warren@{host}")
    })
    .clone()
}

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node))
        .route("/api/extensions", get(extensions))
}

async fn whoami(caller: Caller) -> Response {
    json(json!({ "name": caller.user, "tags": caller.tags }))
}

/// The totals the caller may see: every vhost for a monitor, its own for the others.
fn totals(caller: &Caller) -> (Value, Value, Value) {
    let (mut ready, mut unacked) = (0u64, 0u64);
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let mut tally = crate::stats::Tally::default();
    for vhost in caller.broker.all_vhosts() {
        if !caller.is_monitor() && !caller.sees_contents(vhost.name()) {
            continue;
        }
        let counted = vhost.message_counters().read();
        tally = sum_tallies(&tally, &counted);
        exchanges += vhost.exchanges().len() as u64;
        for queue in vhost.queues() {
            queues += 1;
            ready += u64::from(queue.message_count());
            unacked += queue.unacked_count();
            consumers += u64::from(queue.consumer_count());
        }
    }
    if caller.is_monitor() {
        // Deleted vhosts' messages count too, as RabbitMQ's node-wide figures do.
        tally = caller.broker.message_counters().read();
    }
    let rates = caller.rates.read();
    let message_stats = rates.with_rates(&Subject::Overview, &message_fields(&tally));
    let queue_totals = rates.with_rates(
        &Subject::Overview,
        &[
            ("messages", ready + unacked),
            ("messages_ready", ready),
            ("messages_unacknowledged", unacked),
        ],
    );
    drop(rates);
    let registry = caller.broker.registry().connections();
    let mine = |c: &&std::sync::Arc<crate::registry::ConnectionEntry>| {
        caller.is_monitor() || c.facts.user == caller.user
    };
    let connections = registry.iter().filter(mine).count();
    let channels: usize = registry
        .iter()
        .filter(mine)
        .map(|c| c.channel_count())
        .sum();
    (
        Value::Object(message_stats),
        Value::Object(queue_totals),
        json!({
            "channels": channels,
            "connections": connections,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        }),
    )
}

async fn overview(caller: Caller) -> Response {
    let (message_stats, queue_totals, object_totals) = totals(&caller);
    let node = node_name();
    let listeners: Vec<Value> = caller
        .broker
        .listeners()
        .iter()
        .map(|l| {
            json!({ "node": node, "protocol": l.protocol,
                    "ip_address": l.addr.ip().to_string(), "port": l.addr.port() })
        })
        .collect();
    let contexts: Vec<Value> = caller
        .broker
        .listeners()
        .iter()
        .filter(|l| l.protocol == "http")
        .map(|l| {
            json!({ "node": node, "description": "RabbitMQ Management", "path": "/",
                    "port": l.addr.port().to_string() })
        })
        .collect();
    json(json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "exchange_types": [
            { "name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true },
            { "name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true },
            { "name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true },
            { "name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true },
            { "name": "x-consistent-hash", "description": "Consistent Hashing Exchange", "enabled": true },
            { "name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true },
        ],
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": node,
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (Warren is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": true,
        "message_stats": message_stats,
        "queue_totals": queue_totals,
        "object_totals": object_totals,
        "statistics_db_event_queue": 0,
        "node": node,
        "listeners": listeners,
        "contexts": contexts,
    }))
}

fn node_info(caller: &Caller) -> Value {
    let alarms = caller.broker.alarms().current();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "uptime": caller.broker.uptime_ms(),
        "mem_used": caller.broker.memory_in_use(),
        "mem_limit": caller.broker.config().memory_limit,
        "mem_alarm": alarms.memory,
        "disk_free_limit": caller.broker.config().disk_free_limit,
        "disk_free_alarm": alarms.disk,
        "partitions": [],
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map_or(1, usize::from),
    })
}

async fn nodes(caller: Caller) -> ApiResult {
    caller.require_monitor()?;
    Ok(json(json!([node_info(&caller)])))
}

async fn node(caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_monitor()?;
    if name != node_name() {
        return Err(ApiError::not_found());
    }
    Ok(json(node_info(&caller)))
}

/// The UI's plug-in list: none beyond what Warren serves itself.
async fn extensions(_caller: Caller) -> Response {
    json(json!([]))
}

/// Two tallies added field by field.
fn sum_tallies(a: &crate::stats::Tally, b: &crate::stats::Tally) -> crate::stats::Tally {
    crate::stats::Tally {
        publish: a.publish + b.publish,
        confirm: a.confirm + b.confirm,
        return_unroutable: a.return_unroutable + b.return_unroutable,
        drop_unroutable: a.drop_unroutable + b.drop_unroutable,
        deliver: a.deliver + b.deliver,
        deliver_no_ack: a.deliver_no_ack + b.deliver_no_ack,
        get: a.get + b.get,
        get_no_ack: a.get_no_ack + b.get_no_ack,
        get_empty: a.get_empty + b.get_empty,
        redeliver: a.redeliver + b.redeliver,
        ack: a.ack + b.ack,
        publish_confirm: a.publish_confirm + b.publish_confirm,
        routed: a.routed + b.routed,
    }
}
