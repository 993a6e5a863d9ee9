//! Request bodies as RabbitMQ's API reads them (`rabbit_mgmt_util:decode/1`): an empty
//! body or `null` is `{}`, unknown keys are ignored, booleans and integers may come as
//! strings (`rabbitmqadmin` sends `"true"` and `"1"`), and each refusal is worded as
//! RabbitMQ words it.

use serde_json::{Map, Value, json};

use super::reply::{ApiError, ApiResult};

/// A request body, as a JSON object.
#[derive(Debug)]
pub struct Body(pub Map<String, Value>);

impl Body {
    /// Reads a body.
    ///
    /// # Errors
    /// 400 `not_json` for what is not JSON, and a JSON string (a doubly encoded body).
    pub fn parse(raw: &[u8]) -> ApiResult<Self> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(Value::String(_)) => Err(ApiError::bad_request(
                "invalid payload: the request body JSON-decoded to a string. Is the input \
                 doubly-JSON-encoded?",
            )),
            Ok(_) => Ok(Self(Map::new())),
            Err(_) => Err(ApiError::bad_request("not_json")),
        }
    }

    /// Refuses a body without all of `keys`, naming the missing ones in order.
    ///
    /// # Errors
    /// 400 `[{key_missing,k},…]`.
    pub fn require(&self, keys: &[&str]) -> ApiResult<()> {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !self.0.contains_key(**k))
            .map(|k| format!("{{key_missing,{k}}}"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!("[{}]", missing.join(","))))
        }
    }

    /// A boolean: `true`, `false`, `"true"` or `"false"`; `default` when absent.
    ///
    /// # Errors
    /// 400 `["not_boolean", value]`.
    pub fn boolean(&self, key: &str, default: bool) -> ApiResult<bool> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" => Ok(true),
            Some(Value::String(s)) if s == "false" => Ok(false),
            Some(other) => Err(ApiError::bad_request_term(json!([
                "not_boolean",
                shown(other)
            ]))),
        }
    }

    /// A non-negative integer, given as a number or a numeric string; `None` when absent.
    ///
    /// # Errors
    /// 400 `["not_integer", value]`.
    pub fn integer(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(Value::String(s)) if s.parse::<u64>().is_ok() => Ok(s.parse().ok()),
            Some(other) => Err(ApiError::bad_request_term(json!([
                "not_integer",
                shown(other)
            ]))),
        }
    }

    /// A string; `None` when absent.
    ///
    /// # Errors
    /// 400 when it is not a string.
    pub fn string(&self, key: &str) -> ApiResult<Option<&str>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key} should be a string, not {other}"
            ))),
        }
    }

    /// An object (`arguments`, `properties`); empty when absent. RabbitMQ's empty
    /// proplists come as `[]`, which counts as empty too.
    ///
    /// # Errors
    /// 400 when it is something else, or holds a `null` (`null_not_allowed`).
    pub fn object(&self, key: &str) -> ApiResult<Map<String, Value>> {
        let map = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(Map::new()),
            Some(Value::Array(items)) if items.is_empty() => return Ok(Map::new()),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{key} should be an object, not {other}"
                )));
            }
        };
        if has_null(&Value::Object(map.clone())) {
            return Err(ApiError::bad_request("null_not_allowed"));
        }
        Ok(map)
    }

    /// Any value.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

/// A value as RabbitMQ echoes it in a refusal: strings bare, the rest as JSON.
fn shown(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

/// Whether a `null` hides anywhere in `value` (AMQP tables have no null).
fn has_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(has_null),
        Value::Object(map) => map.values().any(has_null),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_as_rabbitmq_reads_them() {
        assert!(Body::parse(b"").expect("empty").0.is_empty());
        assert!(Body::parse(b"null").expect("null").0.is_empty());
        let bad = Body::parse(b"{not json").expect_err("refused");
        assert_eq!(bad.reason, "not_json");
        let body = Body::parse(br#"{"durable":"true","count":"3","x":"yes","n":-1}"#).expect("ok");
        assert!(body.boolean("durable", false).expect("string true"));
        assert!(!body.boolean("absent", false).expect("default"));
        assert_eq!(body.integer("count").expect("numeric string"), Some(3));
        assert!(body.boolean("x", false).is_err());
        assert!(body.integer("n").is_err());
        let missing = body
            .require(&["count", "ackmode", "encoding"])
            .expect_err("missing");
        assert_eq!(
            missing.reason,
            "[{key_missing,ackmode},{key_missing,encoding}]"
        );
        let nulls = Body::parse(br#"{"arguments":{"a":null}}"#).expect("ok");
        assert_eq!(
            nulls.object("arguments").expect_err("null").reason,
            "null_not_allowed"
        );
    }
}
