//! `/api/exchanges`: exchanges listed, shown, declared (PUT), deleted, published to
//! (`/publish`), and their bindings as source or destination. Declare and delete need
//! configure on the exchange, publishing needs write, as over AMQP.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::bindings::binding_json;
use super::body::Body;
use super::listing::{ListQuery, list};
use super::messages;
use super::rates::Subject;
use super::reply::{ApiError, ApiResult, created_or_changed, json, no_content};
use crate::access::permissions::Perm;
use crate::access::rabbit_json::{table_from_json, table_to_json};
use crate::exchange::{DestinationKind, Exchange, ExchangeSettings, parse_declared_type};
use crate::stats::ExchangeCounters;
use crate::vhost::VHost;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/exchanges", get(all))
        .route("/api/exchanges/{vhost}", get(in_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(one).put(declare).delete(delete),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(as_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(as_destination),
        )
}

/// The API's name for the default exchange.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// An exchange as the API shows it; the default exchange is named `""`.
fn exchange_json(caller: &Caller, vhost: &str, exchange: &Exchange) -> Value {
    let settings = exchange.settings();
    let mut shown = json!({
        "name": exchange.name().to_string(),
        "vhost": vhost,
        "type": settings.type_name(),
        "durable": settings.durable,
        "auto_delete": settings.auto_delete,
        "internal": settings.internal,
        "arguments": table_to_json(&settings.arguments),
        "user_who_performed_action": "",
    });
    with_message_stats(
        caller,
        &mut shown,
        vhost,
        exchange.name(),
        exchange.counters(),
    );
    shown
}

/// Adds `message_stats` (`publish_in`, `publish_out` with their rates) to an exchange
/// that has had a message published to it; RabbitMQ shows none before.
fn with_message_stats(
    caller: &Caller,
    shown: &mut Value,
    vhost: &str,
    name: &str,
    counters: &ExchangeCounters,
) {
    let (publish_in, publish_out) = counters.read();
    if publish_in == 0 {
        return;
    }
    let subject = Subject::Exchange(vhost.to_owned(), name.to_owned());
    let stats = caller.rates.read().with_rates(
        &subject,
        &[("publish_in", publish_in), ("publish_out", publish_out)],
    );
    shown["message_stats"] = Value::Object(stats);
}

/// The default exchange, which RabbitMQ lists as `""`.
fn default_exchange_json(caller: &Caller, vhost: &VHost) -> Value {
    let mut shown = json!({
        "name": "",
        "vhost": vhost.name(),
        "type": "direct",
        "durable": true,
        "auto_delete": false,
        "internal": false,
        "arguments": {},
        "user_who_performed_action": "rmq-internal",
    });
    let counters = vhost.default_exchange_counters();
    with_message_stats(caller, &mut shown, vhost.name(), "", counters);
    shown
}

/// The exchanges of the vhosts the caller may see (of `only`, if given).
pub(crate) fn visible(caller: &Caller, only: Option<&str>) -> Vec<Value> {
    let mut shown = Vec::new();
    for vhost in caller.broker.all_vhosts() {
        let name = vhost.name();
        if only.is_some_and(|v| v != name) || !caller.sees_contents(name) {
            continue;
        }
        shown.push(default_exchange_json(caller, &vhost));
        for exchange in vhost.exchanges() {
            shown.push(exchange_json(caller, name, &exchange));
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

/// The vhost named in the path, if the caller may see it.
fn host(caller: &Caller, vhost: &str) -> ApiResult<Arc<VHost>> {
    caller.require_vhost(vhost)?;
    caller.broker.vhost(vhost).ok_or_else(ApiError::not_found)
}

async fn one(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let host = host(&caller, &vhost)?;
    if name == DEFAULT_EXCHANGE {
        return Ok(json(default_exchange_json(&caller, &host)));
    }
    let exchange = host.exchange(&name).map_err(|_| ApiError::not_found())?;
    Ok(json(exchange_json(&caller, &vhost, &exchange)))
}

async fn declare(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    if caller.broker.vhost(&vhost).is_none() {
        return Err(ApiError::vhost_not_found());
    }
    let host = host(&caller, &vhost)?;
    // The body's defaults are AMQP's: a direct exchange, not durable.
    let body = Body::parse(&raw)?;
    let kind_name = body.string("type")?.unwrap_or("direct").to_owned();
    let durable = body.boolean("durable", false)?;
    let auto_delete = body.boolean("auto_delete", false)?;
    let internal = body.boolean("internal", false)?;
    let arguments = table_from_json(&body.object("arguments")?);
    if name == DEFAULT_EXCHANGE || name.starts_with("amq.") {
        return Err(ApiError::not_authorised("Access refused."));
    }
    caller.permit(&vhost, Perm::Configure, &name)?;
    let Some((kind, delayed)) = parse_declared_type(&kind_name, &arguments)? else {
        return Err(ApiError::bad_request(format!(
            "unknown exchange type '{kind_name}'"
        )));
    };
    let created = host.declare_exchange(
        &name,
        false,
        ExchangeSettings {
            kind,
            durable,
            auto_delete,
            internal,
            delayed,
            arguments,
        },
    )?;
    Ok(created_or_changed(created))
}

/// `DELETE`'s query: `if-unused`.
#[derive(Deserialize, Default)]
struct DeleteQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn delete(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult {
    let host = host(&caller, &vhost)?;
    if name == DEFAULT_EXCHANGE || name.starts_with("amq.") {
        return Err(ApiError::not_authorised("Access refused."));
    }
    if host.exchange(&name).is_err() {
        return Err(ApiError::not_found());
    }
    caller.permit(&vhost, Perm::Configure, &name)?;
    host.delete_exchange(&name, query.if_unused.as_deref() == Some("true"))?;
    Ok(no_content())
}

async fn publish(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    // A vhost that does not exist refuses access, as RabbitMQ's direct channel does.
    if caller.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_authorised("Access refused."));
    }
    let host = host(&caller, &vhost)?;
    let exchange = if name == DEFAULT_EXCHANGE {
        ""
    } else {
        name.as_str()
    };
    caller.permit(&vhost, Perm::Write, exchange)?;
    let body = Body::parse(&raw)?;
    let impersonator = caller.tags.iter().any(|t| t == "impersonator");
    let routed = messages::publish(
        &caller.broker,
        &host,
        exchange,
        &caller.user,
        impersonator,
        &body,
    )
    .await?;
    Ok(json(json!({ "routed": routed })))
}

async fn as_source(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let host = host(&caller, &vhost)?;
    let exchange = host.exchange(&name).map_err(|_| ApiError::not_found())?;
    let shown = exchange
        .bindings()
        .iter()
        .map(|b| binding_json(&vhost, &name, b))
        .collect();
    Ok(json(Value::Array(shown)))
}

async fn as_destination(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let host = host(&caller, &vhost)?;
    host.exchange(&name).map_err(|_| ApiError::not_found())?;
    let mut shown = Vec::new();
    for exchange in host.exchanges() {
        for binding in exchange.bindings() {
            if binding.targets(DestinationKind::Exchange, &name) {
                shown.push(binding_json(&vhost, exchange.name(), &binding));
            }
        }
    }
    Ok(json(Value::Array(shown)))
}
