//! `/api/queues`: queues listed, shown, declared (PUT), deleted, purged, peeked at
//! (`/get`) and their bindings, with the caller's AMQP permissions checked as RabbitMQ
//! checks them (declare and delete: configure; get and purge: read).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::bindings::{binding_json, default_binding};
use super::body::Body;
use super::listing::{ListQuery, Listed, list};
use super::messages;
use super::rates::{Subject, queue_lengths, queue_message_fields};
use super::reply::{ApiError, ApiResult, created_or_changed, json, no_content};
use crate::access::permissions::Perm;
use crate::access::rabbit_json::{table_from_json, table_to_json};
use crate::queue::{Queue, QueueDeclare};
use crate::vhost::VHost;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/queues", get(all))
        .route("/api/queues/{vhost}", get(in_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(one).put(declare).delete(delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge),
        )
        .route("/api/queues/{vhost}/{name}/get", post(peek))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
        .route("/api/queues/{vhost}/{name}/groups", get(groups))
}

/// A queue as the API shows it.
pub(super) fn queue_json(caller: &Caller, vhost: &str, queue: &Queue) -> Value {
    let settings = queue.settings();
    let queue_type = settings.parsed.queue_type;
    let consumers = queue.consumer_count();
    let subject = Subject::Queue(vhost.to_owned(), queue.name().to_string());
    let rates = caller.rates.read();
    let mut counted = rates.with_rates(&subject, &queue_lengths(queue));
    counted.insert(
        "message_stats".into(),
        Value::Object(rates.with_rates(&subject, &queue_message_fields(queue))),
    );
    drop(rates);
    let policies = caller.broker.policies();
    let applied = policies.applied(vhost, queue.name(), queue_type);
    let mut shown = json!({
        "name": queue.name().to_string(),
        "vhost": vhost,
        "durable": settings.durable,
        "auto_delete": settings.auto_delete,
        "exclusive": settings.exclusive_owner.is_some(),
        "arguments": table_to_json(&settings.arguments),
        "node": super::overview::node_name(),
        "type": queue_type.name(),
        "state": "running",
        "consumers": consumers,
        "consumer_capacity": if consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": Value::Null,
        "memory": queue.memory_bytes(),
        "policy": applied.policy.map(|p| p.name.clone()),
        "effective_policy_definition": applied.definition_json(),
        "operator_policy": applied.operator.map(|p| p.name.clone()),
    });
    if let Value::Object(map) = &mut shown {
        map.extend(counted);
    }
    shown
}

/// A queue to list: filtered and sorted on its name, vhost and depths, shown as JSON
/// only if it is on the page asked for.
pub(crate) struct QueueRow<'a> {
    caller: &'a Caller,
    vhost: Arc<VHost>,
    queue: Arc<Queue>,
}

impl Listed for QueueRow<'_> {
    fn name(&self) -> Option<&str> {
        Some(self.queue.name())
    }

    fn key(&self, path: &str) -> Option<Option<Value>> {
        let value = match path {
            "name" => json!(&**self.queue.name()),
            "vhost" => json!(self.vhost.name()),
            "consumers" => json!(self.queue.consumer_count()),
            _ => return self.stat_key(path),
        };
        Some(Some(value))
    }

    fn into_json(self) -> Value {
        self.to_json()
    }

    fn to_json(&self) -> Value {
        queue_json(self.caller, self.vhost.name(), &self.queue)
    }
}

impl QueueRow<'_> {
    /// A length (`messages`, …), a `message_stats` counter, or the rate of either
    /// (`…_details.rate`), read without building the queue's JSON; `None` for any
    /// other path.
    fn stat_key(&self, path: &str) -> Option<Option<Value>> {
        let (field, rate) = match path.strip_suffix("_details.rate") {
            Some(field) => (field, true),
            None => (path, false),
        };
        let (field, fields) = match field.strip_prefix("message_stats.") {
            Some(field) => (field, queue_message_fields(&self.queue)),
            None => (field, queue_lengths(&self.queue).to_vec()),
        };
        let (name, value) = fields.into_iter().find(|(name, _)| *name == field)?;
        if !rate {
            return Some(Some(json!(value)));
        }
        let subject = Subject::Queue(self.vhost.name().to_owned(), self.queue.name().to_string());
        Some(Some(json!(self.caller.rates.read().rate(&subject, name))))
    }
}

/// The queues of the vhosts the caller may see (of `only`, if given).
fn rows<'a>(caller: &'a Caller, only: Option<&str>) -> Vec<QueueRow<'a>> {
    let mut rows = Vec::new();
    for vhost in caller.broker.all_vhosts() {
        if only.is_some_and(|v| v != vhost.name()) || !caller.sees_contents(vhost.name()) {
            continue;
        }
        for queue in vhost.queues() {
            rows.push(QueueRow {
                caller,
                vhost: vhost.clone(),
                queue,
            });
        }
    }
    rows
}

/// The queues of the vhosts the caller may see (of `only`, if given), as JSON.
pub(crate) fn visible(caller: &Caller, only: Option<&str>) -> Vec<Value> {
    rows(caller, only)
        .into_iter()
        .map(Listed::into_json)
        .collect()
}

async fn all(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    Ok(json(list(rows(&caller, None), &query)?))
}

async fn in_vhost(
    caller: Caller,
    Path(vhost): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    caller.require_vhost(&vhost)?;
    Ok(json(list(rows(&caller, Some(&vhost)), &query)?))
}

/// The vhost and the queue named in the path, if the caller may see them.
fn find(caller: &Caller, vhost: &str, name: &str) -> ApiResult<(Arc<VHost>, Arc<Queue>)> {
    caller.require_vhost(vhost)?;
    let host = caller.broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    let queue = host.find_queue(name).ok_or_else(ApiError::not_found)?;
    Ok((host, queue))
}

async fn one(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let (_, queue) = find(&caller, &vhost, &name)?;
    Ok(json(queue_json(&caller, &vhost, &queue)))
}

async fn declare(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    // The body's defaults are AMQP's: not durable, not auto-delete.
    let host = caller
        .broker
        .vhost(&vhost)
        .ok_or_else(ApiError::vhost_not_found)?;
    caller.require_vhost(&vhost)?;
    let body = Body::parse(&raw)?;
    let durable = body.boolean("durable", false)?;
    let auto_delete = body.boolean("auto_delete", false)?;
    let arguments = table_from_json(&body.object("arguments")?);
    caller.permit(&vhost, Perm::Configure, &name)?;
    let declare = QueueDeclare {
        name: name.as_str().into(),
        server_named: false,
        passive: false,
        durable,
        exclusive: false,
        auto_delete,
        arguments,
    };
    let (_, created) = host.declare_queue(declare, 0)?;
    Ok(created_or_changed(created))
}

/// `DELETE`'s query: `if-empty`, `if-unused`.
#[derive(Deserialize, Default)]
struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn delete(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult {
    let (host, _) = find(&caller, &vhost, &name)?;
    caller.permit(&vhost, Perm::Configure, &name)?;
    host.delete_queue(
        &name,
        0,
        query.if_unused.as_deref() == Some("true"),
        query.if_empty.as_deref() == Some("true"),
    )?;
    Ok(no_content())
}

async fn purge(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let (_, queue) = find(&caller, &vhost, &name)?;
    caller.permit(&vhost, Perm::Read, &name)?;
    if queue.is_stream() {
        return Err(crate::error::stream::purge(&name, &vhost).into());
    }
    queue.purge();
    Ok(no_content())
}

async fn peek(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let (host, queue) = find(&caller, &vhost, &name).map_err(|e| {
        if e.status == axum::http::StatusCode::NOT_FOUND {
            ApiError::not_found_because(format!("NOT_FOUND - no queue '{name}' in vhost '{vhost}'"))
        } else {
            e
        }
    })?;
    caller.permit(&vhost, Perm::Read, &name)?;
    let body = Body::parse(&raw)?;
    Ok(json(Value::Array(messages::get(&host, &queue, &body)?)))
}

async fn bindings(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let (host, _) = find(&caller, &vhost, &name)?;
    let mut shown = vec![default_binding(&vhost, &name)];
    for exchange in host.exchanges() {
        for binding in exchange.bindings() {
            if binding.targets(crate::exchange::DestinationKind::Queue, &name) {
                shown.push(binding_json(&vhost, exchange.name(), &binding));
            }
        }
    }
    Ok(json(Value::Array(shown)))
}

/// Each consumer's tag and channel name, by consumer id, from the registry.
fn consumer_names(caller: &Caller) -> std::collections::HashMap<u64, Value> {
    let mut names = std::collections::HashMap::new();
    for c in caller.broker.registry().connections() {
        for ch in c.channels() {
            for consumer in ch.consumers() {
                names.insert(
                    consumer.id,
                    json!({
                        "consumer_tag": consumer.tag,
                        "channel": format!("{} ({})", c.name(), ch.number),
                    }),
                );
            }
        }
    }
    names
}

/// A queue's consumer groups: members, the partitions each owns or drains, and per
/// partition its depth, unacked deliveries and lag (Warren's own; RabbitMQ has none).
async fn groups(caller: Caller, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let (_, queue) = find(&caller, &vhost, &name)?;
    let names = consumer_names(&caller);
    let member = |id: u64| names.get(&id).cloned().unwrap_or(Value::Null);
    if let Some(group) = queue.group_snapshot() {
        let members: Vec<Value> = group
            .members
            .iter()
            .map(|m| {
                json!({
                    "consumer": m.consumer,
                    "details": member(m.consumer),
                    "channel": m.channel,
                    "priority": m.priority,
                    "assigned": m.assigned,
                    "standby": m.standby,
                })
            })
            .collect();
        let partitions: Vec<Value> = group
            .partition_states
            .iter()
            .map(|p| {
                json!({
                    "index": p.index,
                    "owners": p.owners,
                    "depth": p.depth,
                    "lag": p.depth,
                    "unacked": p.unacked,
                    "draining_to": p.draining_to.as_ref().map(|(to, since)| json!({ "consumers": to, "since": since })),
                    "manual": p.manual,
                })
            })
            .collect();
        return Ok(json(json!({
            "vhost": vhost,
            "queue": name,
            "type": "partitioned",
            "groups": [{
                "group": group.group.unwrap_or_default(),
                "partitions": group.partitions,
                "consumers_per_partition": group.consumers_per_partition,
                "members": members,
                "partition_states": partitions,
                "rebalances": group.rebalances,
            }],
        })));
    }
    let groups: Vec<Value> = queue
        .stream_groups()
        .into_iter()
        .map(|g| {
            let members: Vec<Value> = g
                .members
                .iter()
                .map(|&id| json!({ "consumer": id, "details": member(id) }))
                .collect();
            json!({
                "group": g.group,
                "members": members,
                "partition_states": g.partitions,
                "rebalances": g.rebalances,
            })
        })
        .collect();
    let kind = if queue.is_stream() { "stream" } else { "plain" };
    Ok(json(
        json!({ "vhost": vhost, "queue": name, "type": kind, "groups": groups }),
    ))
}
