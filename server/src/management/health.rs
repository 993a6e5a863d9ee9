//! Health checks for probes (docker-compose, Kubernetes): `/api/health/checks/*` and
//! `/api/aliveness-test/{vhost}`, answered 200 `{"status":"ok"}` or 503 with the reason,
//! as RabbitMQ answers them.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::reply::{ApiResult, json};
use crate::queue::QueueDeclare;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(ok),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(single_node),
        )
        .route("/api/health/checks/node-is-mirror-sync-critical", get(ok))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
}

fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn ok(_caller: Caller) -> Response {
    json(json!({ "status": "ok" }))
}

/// A one-node broker is never what keeps a quorum.
async fn single_node(_caller: Caller) -> Response {
    json(json!({ "status": "ok", "reason": "single node cluster" }))
}

async fn alarms(caller: Caller) -> Response {
    let state = caller.broker.alarms().current();
    if !state.any() {
        return json(json!({ "status": "ok" }));
    }
    let node = super::overview::node_name();
    let mut raised = Vec::new();
    if state.memory {
        raised.push(json!({ "node": node, "resource": "memory" }));
    }
    if state.disk {
        raised.push(json!({ "node": node, "resource": "disk" }));
    }
    failed(json!({ "status": "failed", "reason": "resource alarm(s) in effect", "alarms": raised }))
}

/// Every vhost runs while the broker does.
async fn virtual_hosts(_caller: Caller) -> Response {
    json(json!({ "status": "ok" }))
}

/// The ports the broker listens on, with their protocols.
fn ports(caller: &Caller) -> Vec<(u16, &'static str)> {
    caller
        .broker
        .listeners()
        .iter()
        .map(|l| (l.addr.port(), l.protocol))
        .collect()
}

async fn port_listener(caller: Caller, Path(port): Path<String>) -> ApiResult {
    let listening = ports(&caller);
    let Ok(port) = port.parse::<u16>() else {
        return Err(super::reply::ApiError::bad_request(format!(
            "Invalid port: {port}"
        )));
    };
    if listening.iter().any(|(p, _)| *p == port) {
        return Ok(json(json!({ "status": "ok", "port": port })));
    }
    let mut all: Vec<u16> = listening.iter().map(|(p, _)| *p).collect();
    all.sort_unstable();
    Ok(failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": all,
    })))
}

async fn protocol_listener(caller: Caller, Path(protocol): Path<String>) -> Response {
    let listening = ports(&caller);
    let wanted = protocol.to_ascii_lowercase();
    let wanted = match wanted.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
        "amqps" => "amqp/ssl",
        "https" => "https",
        other => other,
    };
    if listening.iter().any(|(_, p)| *p == wanted) {
        return json(json!({ "status": "ok", "protocol": wanted }));
    }
    let mut protocols: Vec<&str> = listening.iter().map(|(_, p)| *p).collect();
    protocols.sort_unstable();
    failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": wanted,
        "protocols": protocols,
    }))
}

/// Declares the queue `aliveness-test` in the vhost, as RabbitMQ's check does first.
async fn aliveness(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_vhost(&vhost)?;
    let Some(host) = caller.broker.vhost(&vhost) else {
        return Err(super::reply::ApiError::not_found());
    };
    let declare = QueueDeclare {
        name: "aliveness-test".into(),
        server_named: false,
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    Ok(match host.declare_queue(declare, 0) {
        Ok(_) => json(json!({ "status": "ok" })),
        Err(e) => failed(json!({ "status": "failed", "reason": e.reply_text() })),
    })
}
