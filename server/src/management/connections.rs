//! `/api/connections`, `/api/channels` and `/api/consumers`: the open connections,
//! their channels and consumers, from the broker's registry. Monitors and
//! administrators see everyone's; other users their own. A connection can be closed
//! (`DELETE`, with an `X-Reason`), as RabbitMQ closes it: `320 CONNECTION_FORCED`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::listing::{ListQuery, list};
use super::overview::node_name;
use super::rates::{Subject, message_fields};
use super::reply::{ApiError, ApiResult, json, no_content};
use crate::registry::{ChannelEntry, ConnectionEntry, ConsumerEntry};
use std::sync::atomic::Ordering::Relaxed;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}", get(channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// A connection as the API shows it.
pub(crate) fn connection_json(caller: &Caller, c: &ConnectionEntry) -> Value {
    let f = &c.facts;
    let octets = caller.rates.read().with_rates(
        &Subject::Connection(c.id),
        &[
            ("recv_oct", c.recv_oct.load(Relaxed)),
            ("send_oct", c.send_oct.load(Relaxed)),
        ],
    );
    let mut shown = json!({
        "name": c.name(),
        "node": node_name(),
        "vhost": f.vhost,
        "user": f.user,
        "user_who_performed_action": f.user,
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": f.auth_mechanism,
        "host": f.local.ip().to_string(),
        "port": f.local.port(),
        "peer_host": f.peer.ip().to_string(),
        "peer_port": f.peer.port(),
        "ssl": f.tls,
        "ssl_protocol": Value::Null,
        "ssl_cipher": Value::Null,
        "ssl_hash": Value::Null,
        "ssl_key_exchange": Value::Null,
        "peer_cert_issuer": Value::Null,
        "peer_cert_subject": Value::Null,
        "peer_cert_validity": Value::Null,
        "state": if c.blocked.load(Relaxed) { "blocked" } else { "running" },
        "channels": c.channel_count(),
        "channel_max": f.channel_max,
        "frame_max": f.frame_max,
        "timeout": f.heartbeat,
        "connected_at": f.connected_at_ms,
        "client_properties": f.client_properties,
        "recv_cnt": c.recv_cnt.load(Relaxed),
        "send_cnt": c.send_cnt.load(Relaxed),
        "send_pend": 0,
    });
    if let Some(map) = shown.as_object_mut() {
        map.extend(octets);
        if let Some(name) = f.client_properties.get("connection_name") {
            map.insert("user_provided_name".into(), name.clone());
        }
    }
    shown
}

/// A channel as the API shows it.
fn channel_json(caller: &Caller, c: &ConnectionEntry, ch: &ChannelEntry) -> Value {
    let f = &c.facts;
    let message_stats = caller.rates.read().with_rates(
        &Subject::Channel(c.id, ch.number),
        &message_fields(&ch.messages.read()),
    );
    json!({
        "name": format!("{} ({})", c.name(), ch.number),
        "number": ch.number,
        "node": node_name(),
        "vhost": f.vhost,
        "user": f.user,
        "user_who_performed_action": f.user,
        "connection_details": {
            "name": c.name(),
            "peer_host": f.peer.ip().to_string(),
            "peer_port": f.peer.port(),
        },
        "state": "running",
        "confirm": ch.confirm.load(Relaxed),
        "transactional": ch.transactional.load(Relaxed),
        "consumer_count": ch.consumers().len(),
        "prefetch_count": ch.prefetch.load(Relaxed),
        "global_prefetch_count": ch.global_prefetch.load(Relaxed),
        "messages_unacknowledged": ch.unacked.load(Relaxed),
        "messages_unconfirmed": ch.unconfirmed.load(Relaxed),
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "pending_raft_commands": 0,
        "message_stats": message_stats,
    })
}

/// A consumer as the API shows it.
fn consumer_json(c: &ConnectionEntry, ch: &ChannelEntry, consumer: &ConsumerEntry) -> Value {
    let f = &c.facts;
    json!({
        "arguments": consumer.arguments,
        "ack_required": consumer.ack_required,
        "active": true,
        "activity_status": "up",
        "channel_details": {
            "connection_name": c.name(),
            "name": format!("{} ({})", c.name(), ch.number),
            "node": node_name(),
            "number": ch.number,
            "peer_host": f.peer.ip().to_string(),
            "peer_port": f.peer.port(),
            "user": f.user,
        },
        "consumer_tag": consumer.tag,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "queue": { "name": consumer.queue, "vhost": f.vhost },
    })
}

/// The connections the caller may see, of `vhost` if given.
pub(crate) fn visible(caller: &Caller, vhost: Option<&str>) -> Vec<Arc<ConnectionEntry>> {
    caller
        .broker
        .registry()
        .connections()
        .into_iter()
        .filter(|c| vhost.is_none_or(|v| c.facts.vhost == v))
        .filter(|c| caller.is_monitor() || c.facts.user == caller.user)
        .collect()
}

async fn connections(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    let shown = visible(&caller, None)
        .iter()
        .map(|c| connection_json(&caller, c))
        .collect();
    Ok(json(list(shown, &query)?))
}

async fn vhost_connections(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_vhost(&vhost)?;
    let shown = visible(&caller, Some(&vhost))
        .iter()
        .map(|c| connection_json(&caller, c))
        .collect();
    Ok(json(Value::Array(shown)))
}

/// The connection named in the path, if the caller may see it (a monitor, or its user).
fn named(caller: &Caller, name: &str) -> ApiResult<Arc<ConnectionEntry>> {
    let found = caller
        .broker
        .registry()
        .by_name(name)
        .ok_or_else(ApiError::not_found)?;
    if caller.is_monitor() || found.facts.user == caller.user {
        Ok(found)
    } else {
        Err(ApiError::not_authorised(
            "User not authorised to access object",
        ))
    }
}

async fn connection(caller: Caller, Path(name): Path<String>) -> ApiResult {
    let found = named(&caller, &name)?;
    Ok(json(connection_json(&caller, &found)))
}

async fn close_connection(
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let found = named(&caller, &name)?;
    if !caller.is_admin() && found.facts.user != caller.user {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    tracing::info!(connection = %name, by = %caller.user, %reason, "closing a connection for the management API");
    found.request_close(reason.to_owned());
    Ok(no_content())
}

async fn connection_channels(caller: Caller, Path(name): Path<String>) -> ApiResult {
    let found = named(&caller, &name)?;
    let shown = found
        .channels()
        .iter()
        .map(|ch| channel_json(&caller, &found, ch))
        .collect();
    Ok(json(Value::Array(shown)))
}

/// Every channel of the connections the caller may see.
pub(crate) fn visible_channels(caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    visible(caller, vhost)
        .iter()
        .flat_map(|c| {
            c.channels()
                .iter()
                .map(|ch| channel_json(caller, c, ch))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn channels(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    Ok(json(list(visible_channels(&caller, None), &query)?))
}

async fn vhost_channels(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_vhost(&vhost)?;
    Ok(json(Value::Array(visible_channels(&caller, Some(&vhost)))))
}

async fn channel(caller: Caller, Path(name): Path<String>) -> ApiResult {
    // "<connection name> (<number>)"
    let (connection, number) = name
        .rsplit_once(" (")
        .and_then(|(c, n)| Some((c, n.strip_suffix(')')?.parse::<u16>().ok()?)))
        .ok_or_else(ApiError::not_found)?;
    let found = named(&caller, connection)?;
    let ch = found
        .channels()
        .into_iter()
        .find(|ch| ch.number == number)
        .ok_or_else(ApiError::not_found)?;
    let mut shown = channel_json(&caller, &found, &ch);
    let consumers: Vec<Value> = ch
        .consumers()
        .iter()
        .map(|consumer| consumer_json(&found, &ch, consumer))
        .collect();
    if let Some(map) = shown.as_object_mut() {
        map.insert("consumer_details".into(), Value::Array(consumers));
        map.insert("publishes".into(), json!([]));
        map.insert("deliveries".into(), json!([]));
    }
    Ok(json(shown))
}

/// Every consumer on the channels the caller may see.
pub(crate) fn visible_consumers(caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let mut shown = Vec::new();
    for c in visible(caller, vhost) {
        for ch in c.channels() {
            for consumer in ch.consumers() {
                shown.push(consumer_json(&c, &ch, &consumer));
            }
        }
    }
    shown
}

async fn consumers(caller: Caller) -> ApiResult {
    Ok(json(Value::Array(visible_consumers(&caller, None))))
}

async fn vhost_consumers(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    if caller.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json(Value::Array(visible_consumers(&caller, Some(&vhost)))))
}
