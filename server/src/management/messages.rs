//! Messages over HTTP: `POST /api/exchanges/{vhost}/{name}/publish` and
//! `POST /api/queues/{vhost}/{name}/get`, with message properties as the API writes
//! them in JSON, and payloads as strings or base64.

use std::sync::Arc;

use amqp_codec::amq_protocol::protocol::BasicProperties;
use amqp_codec::amq_protocol::types::ShortString;
use amqp_codec::properties::{decode_properties, encode_properties};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::body::Body;
use super::reply::{ApiError, ApiResult};
use crate::access::rabbit_json::{table_from_json, table_to_json};
use crate::broker::Broker;
use crate::exchange::Routed;
use crate::message::{Handling, Message, QueuedMessage};
use crate::queue::effects::Effects;
use crate::queue::{Enqueued, Queue};
use crate::vhost::VHost;

/// A string property, if given as one.
fn short(properties: &Map<String, Value>, key: &str) -> ApiResult<Option<ShortString>> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(ApiError::bad_request_term(json!(["not_string", key]))),
    }
}

/// An integer property in range, if given (as a number or a numeric string).
fn integer(properties: &Map<String, Value>, key: &str, max: u64) -> ApiResult<Option<u64>> {
    let n = match properties.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    n.filter(|n| *n <= max)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request_term(json!(["not_int", key])))
}

/// AMQP properties from the API's JSON (unknown keys ignored, as RabbitMQ ignores
/// them).
///
/// # Errors
/// 400 for a property of the wrong type or out of range.
pub fn properties_from_json(properties: &Map<String, Value>) -> ApiResult<BasicProperties> {
    let mut p = BasicProperties::default();
    if let Some(v) = short(properties, "content_type")? {
        p = p.with_content_type(v);
    }
    if let Some(v) = short(properties, "content_encoding")? {
        p = p.with_content_encoding(v);
    }
    match properties.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(headers)) => p = p.with_headers(table_from_json(headers)),
        Some(_) => return Err(ApiError::bad_request_term(json!(["not_table", "headers"]))),
    }
    if let Some(v) = integer(properties, "delivery_mode", 2)? {
        p = p.with_delivery_mode(v as u8);
    }
    if let Some(v) = integer(properties, "priority", 255)? {
        p = p.with_priority(v as u8);
    }
    for (key, set) in [
        (
            "correlation_id",
            BasicProperties::with_correlation_id as fn(_, _) -> _,
        ),
        ("reply_to", BasicProperties::with_reply_to),
        ("expiration", BasicProperties::with_expiration),
        ("message_id", BasicProperties::with_message_id),
        ("type", BasicProperties::with_type),
        ("user_id", BasicProperties::with_user_id),
        ("app_id", BasicProperties::with_app_id),
        ("cluster_id", BasicProperties::with_cluster_id),
    ] {
        if let Some(v) = short(properties, key)? {
            p = set(p, v);
        }
    }
    if let Some(v) = integer(properties, "timestamp", u64::MAX)? {
        p = p.with_timestamp(v);
    }
    Ok(p)
}

/// The API's JSON for AMQP properties: the ones set; none is `[]`, as RabbitMQ
/// renders an empty list.
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut text = |key: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            out.insert(key.to_owned(), Value::String(v.to_string()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(headers) = p.headers() {
        out.insert("headers".into(), Value::Object(table_to_json(headers)));
    }
    if let Some(mode) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = p.priority() {
        out.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = p.timestamp() {
        out.insert("timestamp".into(), json!(timestamp));
    }
    if out.is_empty() {
        return json!([]);
    }
    Value::Object(out)
}

/// Publishes one message as a client with publisher confirms and `mandatory` would:
/// routed through `exchange` (the default exchange for `""`), put on every queue it
/// reaches, and made durable before this returns. True if any queue took it.
///
/// # Errors
/// 400 for a bad body or properties, a missing exchange or a queue that refused the
/// message (RabbitMQ's texts); 500 when it could not be stored or made durable.
pub async fn publish(
    broker: &Broker,
    vhost: &Arc<VHost>,
    exchange: &str,
    user: &str,
    impersonator: bool,
    body: &Body,
) -> ApiResult<bool> {
    body.require(&["routing_key", "properties", "payload", "payload_encoding"])?;
    let routing_key = body.string("routing_key")?.unwrap_or_default();
    let properties = properties_from_json(&body.object("properties")?)?;
    let Some(Value::String(payload)) = body.value("payload") else {
        return Err(ApiError::bad_request("payload_not_string"));
    };
    if let Some(claimed) = properties.user_id()
        && claimed.as_str() != user
        && !impersonator
    {
        return Err(ApiError::channel_error(&crate::error::precondition(
            format!("user_id property set to '{claimed}' but authenticated user was '{user}'"),
        )));
    }
    let body = match body.value("payload_encoding") {
        Some(Value::String(e)) if e == "string" => Bytes::from(payload.clone().into_bytes()),
        Some(Value::String(e)) if e == "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .map(Bytes::from)
            .map_err(|_| ApiError::bad_request_term(json!(["not_base64", payload])))?,
        other => {
            let shown = other.map_or_else(String::new, |v| match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            });
            return Err(ApiError::bad_request_term(json!([
                "unsupported_encoding",
                shown
            ])));
        }
    };
    let message = Message::new(exchange, routing_key, &encode_properties(&properties), body);
    let handling = Handling::of(&message);
    let mut routed = Routed::default();
    vhost
        .route(&message, &[], &mut routed)
        .map_err(|e| ApiError::channel_error(&e))?;
    vhost.count_exchange(exchange, 1, routed.queues.len() as u64);
    let mut effects = Effects::default();
    let mut targets = Vec::new();
    let (mut refused, mut rejected) = (None, false);
    for queue in &routed.queues {
        let enqueued = queue.publish(message.clone(), handling, &mut effects);
        if matches!(enqueued, Ok(Enqueued::Logged(_) | Enqueued::Memory)) {
            crate::stats::QueueCounters::count(&queue.counters().publish, 1);
        }
        match enqueued {
            Ok(Enqueued::Logged(partition)) => targets.push(queue.sync_target(partition)),
            Ok(Enqueued::Memory) => {}
            Ok(Enqueued::Rejected) => rejected = true,
            Err(e) => refused = Some(e.to_string()),
        }
    }
    vhost.apply(effects);
    if let Some(reason) = refused {
        return Err(ApiError::internal(format!(
            "cannot store the message: {reason}"
        )));
    }
    if !targets.is_empty() {
        let (done, durable) = tokio::sync::oneshot::channel();
        broker.commit(targets, Some(done));
        if !durable.await.unwrap_or(false) {
            return Err(ApiError::internal("the message could not be made durable"));
        }
    }
    if rejected {
        return Err(ApiError::bad_request(
            "rejected Unable to publish message. Check queue limits.",
        ));
    }
    Ok(!routed.queues.is_empty())
}

/// One gotten message as the API shows it.
fn gotten_json(taken: &QueuedMessage, left: u32, encoding: &str, truncate: Option<usize>) -> Value {
    let message = &taken.message;
    let body = message.body();
    let shown = &body[..truncate.map_or(body.len(), |n| n.min(body.len()))];
    let (payload, payload_encoding) = match std::str::from_utf8(shown) {
        Ok(text) if encoding == "auto" => (text.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    let properties = decode_properties(message.raw_properties())
        .map_or_else(|| json!({}), |p| properties_to_json(&p));
    json!({
        "payload_bytes": body.len(),
        "redelivered": taken.redelivered,
        "exchange": message.exchange(),
        "routing_key": message.routing_key(),
        "message_count": left,
        "properties": properties,
        "payload": payload,
        "payload_encoding": payload_encoding,
    })
}

/// Takes up to `count` messages from `queue` and settles them as `ackmode` says, once
/// all are taken (so a requeued message is not taken twice).
///
/// # Errors
/// 400 for a missing key, an unknown ack mode or encoding, or a stream.
pub fn get(vhost: &VHost, queue: &Arc<Queue>, body: &Body) -> ApiResult<Vec<Value>> {
    body.require(&["count", "ackmode", "encoding"])?;
    let count = body.integer("count")?.unwrap_or(0);
    let truncate = body
        .integer("truncate")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let encoding = body.string("encoding")?.unwrap_or_default();
    if !matches!(encoding, "auto" | "base64") {
        return Err(ApiError::bad_request(
            "Unsupported encoding. Please use auto or base64.",
        ));
    }
    let ackmode = body.string("ackmode")?.unwrap_or_default();
    // (no_ack, then requeue, then reject)
    let (no_ack, requeue, reject) = match ackmode {
        "ack_requeue_true" => (false, true, false),
        "ack_requeue_false" => (true, false, false),
        "reject_requeue_true" => (false, true, true),
        "reject_requeue_false" => (false, false, true),
        other => {
            return Err(ApiError::bad_request_term(json!([
                "unknown_ackmode",
                other
            ])));
        }
    };
    if queue.is_stream() {
        let e = crate::error::stream::get(queue.name(), vhost.name());
        return Err(ApiError::bad_request(format!(
            "{} {}",
            e.code.code(),
            e.text
        )));
    }
    let mut effects = Effects::default();
    let mut taken = Vec::new();
    let mut shown = Vec::new();
    for _ in 0..count {
        let Some((message, left)) = queue.get(no_ack, &mut effects) else {
            break;
        };
        shown.push(gotten_json(&message, left, encoding, truncate));
        taken.push(message);
    }
    if !no_ack {
        match (requeue, reject) {
            (true, _) => queue.requeue(taken, &mut effects),
            (false, true) => queue.reject(taken, &mut effects),
            (false, false) => queue.settle(taken),
        }
    }
    vhost.apply(effects);
    Ok(shown)
}
