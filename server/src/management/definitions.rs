//! `/api/definitions`: the broker's definitions exported in RabbitMQ's JSON (GET) and
//! imported (POST), as `warren ctl` does; administrators only.

use axum::Router;
use axum::body::Bytes;
use axum::response::Response;
use axum::routing::get;

use super::Api;
use super::auth::Caller;
use super::reply::{ApiError, ApiResult, json, no_content};
use crate::access::rabbit_json::ImportError;
use crate::admin::AdminError;

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/api/definitions", get(export).post(import))
}

async fn export(caller: Caller) -> ApiResult {
    caller.require_admin()?;
    let defs = serde_json::to_value(caller.broker.export_definitions())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json(defs))
}

async fn import(caller: Caller, body: Bytes) -> ApiResult<Response> {
    caller.require_admin()?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("definitions must be UTF-8 JSON"))?;
    caller
        .broker
        .import_definitions(text)
        .map_err(|e| match e {
            // RabbitMQ escapes an entry's refusal.
            AdminError::Import(ImportError::Invalid(reason)) => {
                ApiError::invalid_parameter(&reason)
            }
            other => ApiError::bad_request(other.to_string()),
        })?;
    super::access::durable(&caller).await?;
    Ok(no_content())
}
