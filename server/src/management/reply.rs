//! The API's replies: JSON with RabbitMQ's headers, and its error bodies
//! (`{"error": …, "reason": …}`) with their status codes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A refusal, as RabbitMQ's management plugin words it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `error` field (`not_found`, `bad_request`, `not_authorized` …).
    pub error: &'static str,
    /// The `reason` field.
    pub reason: String,
    /// A reason RabbitMQ gives as a JSON term (`["not_boolean","yes"]`) instead.
    pub reason_term: Option<Value>,
    /// Whether to ask for Basic credentials (a 401).
    pub challenge: bool,
    /// Whether the body is left empty (a 401 without credentials).
    pub empty: bool,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error,
            reason: reason.into(),
            reason_term: None,
            challenge: false,
            empty: false,
        }
    }

    /// 404 for an object that does not exist.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    /// 400 for a request RabbitMQ refuses, with its reason.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 400 for a policy or runtime parameter that fails validation: RabbitMQ
    /// HTML-escapes these reasons (`<<"x">>` reads `&lt;&lt;"x"&gt;&gt;`).
    pub fn invalid_parameter(reason: &str) -> Self {
        let mut escaped = String::with_capacity(reason.len());
        for c in reason.chars() {
            match c {
                '<' => escaped.push_str("&lt;"),
                '>' => escaped.push_str("&gt;"),
                '&' => escaped.push_str("&amp;"),
                c => escaped.push(c),
            }
        }
        Self::bad_request(escaped)
    }

    /// 400 with a reason RabbitMQ gives as a JSON term.
    pub fn bad_request_term(reason: Value) -> Self {
        Self {
            reason_term: Some(reason),
            ..Self::bad_request("")
        }
    }

    /// 404 for a PUT in a vhost that does not exist.
    pub fn vhost_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "vhost_not_found")
    }

    /// 404 naming what is missing, as errors raised inside RabbitMQ's handlers do.
    pub fn not_found_because(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    /// 400 for a channel error of an operation, as RabbitMQ words it:
    /// `"<code> <NAME> - <text>"`.
    pub fn channel_error(e: &crate::error::AmqpError) -> Self {
        Self::bad_request(format!("{} {}", e.code.code(), e.reply_text()))
    }

    /// 401 without credentials: an empty body and the Basic challenge.
    pub fn no_credentials() -> Self {
        Self {
            challenge: true,
            empty: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "not_authorized", "")
        }
    }

    /// 401 for credentials that do not log in, or a user the API refuses.
    pub fn not_authorized(reason: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
        }
    }

    /// 401 as RabbitMQ spells it for a user it knows but refuses (`not_authorised`),
    /// without a challenge.
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// 503 while the broker is shutting down.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the broker is shutting down",
        )
    }

    /// 500 for a change the broker made but could not make durable.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            reason,
        )
    }
}

impl From<crate::error::AmqpError> for ApiError {
    /// A refusal of the AMQP layer as the API words it: 404 for what does not exist,
    /// 401 `Access refused.` for a permission, 400 with the text for the rest.
    fn from(e: crate::error::AmqpError) -> Self {
        use amqp_codec::ReplyCode;
        match e.code {
            ReplyCode::NotFound => Self::not_found(),
            ReplyCode::AccessRefused => Self::not_authorised("Access refused."),
            _ => Self::bad_request(e.text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = if self.empty {
            self.status.into_response()
        } else {
            let reason = self.reason_term.unwrap_or(Value::String(self.reason));
            let body = json!({ "error": self.error, "reason": reason });
            (self.status, Json(body)).into_response()
        };
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        response
    }
}

/// What handlers return.
pub type ApiResult<T = Response> = Result<T, ApiError>;

/// A JSON reply, not to be cached (as RabbitMQ sends every one).
pub fn json(value: Value) -> Response {
    let mut response = Json(value).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// 201 for an object created by PUT or POST, 204 for one changed or deleted.
pub fn created_or_changed(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// 204, for a change or deletion.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The reply to a path the API does not have.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}
