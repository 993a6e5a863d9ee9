//! `/api/bindings`: bindings listed, made (POST) and removed (DELETE by their
//! `properties_key`), between exchanges and queues or exchanges. Binding needs write on
//! the destination and read on the source, as over AMQP.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

use super::Api;
use super::auth::Caller;
use super::body::Body;
use super::listing::{ListQuery, list};
use super::reply::{ApiError, ApiResult, json, no_content};
use crate::access::permissions::Perm;
use crate::access::rabbit_json::{table_from_json, table_to_json};
use crate::exchange::{Binding, DestinationKind};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/bindings", get(all))
        .route("/api/bindings/{vhost}", get(in_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(between).post(bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(one).delete(unbind),
        )
}

/// A path segment as RabbitMQ quotes it (`quote_plus`, with `~` quoted too).
fn quote(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The key naming one binding among those between the same two ends: the quoted
/// routing key, and with arguments a short hash of them (RabbitMQ hashes the Erlang
/// term; Warren hashes the JSON: the key is opaque to clients, who read it from a
/// listing).
pub(super) fn properties_key(routing_key: &str, arguments: &Map<String, Value>) -> String {
    if arguments.is_empty() {
        return if routing_key.is_empty() {
            "~".to_owned()
        } else {
            quote(routing_key)
        };
    }
    let digest = sha2::Sha256::digest(Value::Object(arguments.clone()).to_string().as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4]);
    format!("{}~{hash}", quote(routing_key))
}

/// A binding as the API shows it.
pub(super) fn binding_json(vhost: &str, source: &str, binding: &Binding) -> Value {
    let arguments = table_to_json(&binding.arguments);
    let kind = match binding.destination.kind() {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": binding.destination.name(),
        "destination_type": kind,
        "routing_key": binding.routing_key,
        "arguments": arguments,
        "properties_key": properties_key(&binding.routing_key, &arguments),
    })
}

/// The default exchange's binding of a queue, which RabbitMQ lists too.
pub(super) fn default_binding(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": properties_key(queue, &Map::new()),
    })
}

/// Every binding of the vhosts the caller may see (of `only`, if given).
pub(crate) fn visible(caller: &Caller, only: Option<&str>) -> Vec<Value> {
    let mut shown = Vec::new();
    for vhost in caller.broker.all_vhosts() {
        let name = vhost.name();
        if only.is_some_and(|v| v != name) || !caller.sees_contents(name) {
            continue;
        }
        for queue in vhost.queues() {
            shown.push(default_binding(name, queue.name()));
        }
        for exchange in vhost.exchanges() {
            for binding in exchange.bindings() {
                shown.push(binding_json(name, exchange.name(), &binding));
            }
        }
    }
    shown
}

async fn all(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    Ok(json(list(visible(&caller, None), &query)?))
}

async fn in_vhost(
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    caller.require_vhost(&vhost)?;
    Ok(json(list(visible(&caller, Some(&vhost)), &query)?))
}

/// The destination kind of a path's `q` or `e`.
fn kind_of(segment: &str) -> ApiResult<DestinationKind> {
    match segment {
        "q" => Ok(DestinationKind::Queue),
        "e" => Ok(DestinationKind::Exchange),
        _ => Err(ApiError::not_found()),
    }
}

/// `amq.default` in a path is the default exchange, `""`.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

/// The bindings from `source` to the destination; none if either does not exist.
fn between_ends(
    caller: &Caller,
    vhost: &str,
    source: &str,
    kind: DestinationKind,
    destination: &str,
) -> ApiResult<Vec<Value>> {
    caller.require_vhost(vhost)?;
    let Some(host) = caller.broker.vhost(vhost) else {
        return Ok(Vec::new());
    };
    let (source, destination) = (exchange_name(source), exchange_name(destination));
    let exists = match kind {
        DestinationKind::Queue => host.has_queue(destination),
        DestinationKind::Exchange => host.exchange(destination).is_ok(),
    };
    if !exists {
        return Ok(Vec::new());
    }
    if source.is_empty() {
        return Ok(if kind == DestinationKind::Queue {
            vec![default_binding(vhost, destination)]
        } else {
            Vec::new()
        });
    }
    let Ok(exchange) = host.exchange(source) else {
        return Ok(Vec::new());
    };
    Ok(exchange
        .bindings()
        .iter()
        .filter(|b| b.targets(kind, destination))
        .map(|b| binding_json(vhost, source, b))
        .collect())
}

async fn between(
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    Ok(json(Value::Array(between_ends(
        &caller,
        &vhost,
        &source,
        kind,
        &destination,
    )?)))
}

async fn one(
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    between_ends(&caller, &vhost, &source, kind, &destination)?
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .map(json)
        .ok_or_else(ApiError::not_found)
}

/// Refuses a binding the caller may not make: write on the destination, read on the
/// source.
fn permit_binding(caller: &Caller, vhost: &str, source: &str, destination: &str) -> ApiResult<()> {
    caller.permit(vhost, Perm::Write, destination)?;
    caller.permit(vhost, Perm::Read, source)
}

async fn bind(
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    raw: Bytes,
) -> ApiResult<Response> {
    let kind = kind_of(&kind)?;
    let Some(host) = caller.broker.vhost(&vhost) else {
        return Err(ApiError::vhost_not_found());
    };
    caller.require_vhost(&vhost)?;
    let body = Body::parse(&raw)?;
    let routing_key = body.string("routing_key")?.unwrap_or_default().to_owned();
    let arguments = body.object("arguments")?;
    let (source, destination) = (exchange_name(&source), exchange_name(&destination));
    if source.is_empty() {
        return Err(ApiError::not_authorised("Access refused."));
    }
    permit_binding(&caller, &vhost, source, destination)?;
    let table = table_from_json(&arguments);
    let bound = match kind {
        DestinationKind::Queue => host.bind(destination, source, &routing_key, table, 0),
        DestinationKind::Exchange => host.bind_exchange(destination, source, &routing_key, table),
    };
    bound.map_err(|e| match e.code {
        amqp_codec::ReplyCode::NotFound => ApiError::not_found_because(e.text),
        _ => ApiError::from(e),
    })?;
    // Relative to the POST's path, its last segment quoted again, as RabbitMQ's
    // (clients such as Terraform's provider read the key back from it).
    let key = properties_key(&routing_key, &arguments);
    let location = format!("{}/{}", quote(destination), quote(&key));
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn unbind(
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let found = between_ends(&caller, &vhost, &source, kind, &destination)?
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .ok_or_else(ApiError::not_found)?;
    let (source, destination) = (exchange_name(&source), exchange_name(&destination));
    permit_binding(&caller, &vhost, source, destination)?;
    let host = caller
        .broker
        .vhost(&vhost)
        .ok_or_else(ApiError::not_found)?;
    let routing_key = found["routing_key"].as_str().unwrap_or_default();
    let arguments = found["arguments"]
        .as_object()
        .map(table_from_json)
        .unwrap_or_default();
    match kind {
        DestinationKind::Queue => host.unbind(destination, source, routing_key, &arguments, 0)?,
        DestinationKind::Exchange => {
            host.unbind_exchange(destination, source, routing_key, &arguments)?;
        }
    }
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_are_rabbitmqs_without_arguments() {
        assert_eq!(properties_key("", &Map::new()), "~");
        assert_eq!(properties_key("a b", &Map::new()), "a+b");
        assert_eq!(properties_key("rk a/b~c", &Map::new()), "rk+a%2Fb%7Ec");
        assert_eq!(properties_key("a.#", &Map::new()), "a.%23");
        let mut args = Map::new();
        args.insert("foo".into(), Value::String("bar".into()));
        let key = properties_key("k2", &args);
        assert!(
            key.starts_with("k2~") && key.len() == "k2~".len() + 6,
            "{key}"
        );
        assert_eq!(key, properties_key("k2", &args), "stable");
    }
}
