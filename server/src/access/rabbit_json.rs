//! RabbitMQ's definitions file (`rabbitmqctl export_definitions`, the management API's
//! `/api/definitions`): virtual hosts, users, permissions, topic permissions, limits,
//! and the durable topology (exchanges, queues, bindings), read into Warren's
//! definitions and written back in RabbitMQ's shape, so that a file moves between the
//! two brokers unchanged. Arguments are plain JSON there (`{"x-max-length": 10}`),
//! converted as RabbitMQ converts them: integers are `long` (64-bit), other numbers
//! `double`, strings `longstr`, lists arrays, objects tables.
//!
//! Read leniently, as RabbitMQ reads it: unknown fields are ignored; user tags may be a
//! list or RabbitMQ 3.8's comma-separated string; a user may carry a clear-text
//! `password` instead of a `password_hash`; vhost limits come as `vhost-limits`
//! parameters.

use std::collections::BTreeMap;

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};

use super::limits::VHOST_LIMITS;
use super::password::Algorithm;
use super::{Access, AccessDefinitions};
use crate::store::definitions::{
    GlobalParameterDef, PermissionDef, PolicyDef, TopicPermissionDef, UserDef, VhostDef,
};

/// The file, as far as access goes; the other sections are kept as they came.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RabbitDefinitions {
    /// The version of the broker that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// The same, as 3.8+ writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_version: Option<String>,
    /// Users.
    #[serde(default)]
    pub users: Vec<RabbitUser>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<RabbitVhost>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// Runtime parameters (Warren reads `vhost-limits`).
    #[serde(default)]
    pub parameters: Vec<RabbitParameter>,
    /// Global runtime parameters.
    #[serde(default)]
    pub global_parameters: Vec<GlobalParameterDef>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<RabbitPolicy>,
    /// Durable exchanges.
    #[serde(default)]
    pub exchanges: Vec<RabbitExchange>,
    /// Durable queues.
    #[serde(default)]
    pub queues: Vec<RabbitQueue>,
    /// Bindings between durable ends.
    #[serde(default)]
    pub bindings: Vec<RabbitBinding>,
}

/// An exchange in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitExchange {
    /// Its name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// Its type (`direct`, `topic`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a restart.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted with its last binding.
    #[serde(default)]
    pub auto_delete: bool,
    /// Not publishable by clients.
    #[serde(default)]
    pub internal: bool,
    /// Its arguments, as plain JSON.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A queue in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitQueue {
    /// Its name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// Survives a restart.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Deleted with its last consumer.
    #[serde(default)]
    pub auto_delete: bool,
    /// Its arguments, as plain JSON.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A binding in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitBinding {
    /// The source exchange.
    pub source: String,
    /// Its vhost.
    pub vhost: String,
    /// The destination's name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Its arguments, as plain JSON.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// Arguments given as plain JSON, as an AMQP table (RabbitMQ's conversion).
pub fn table_from_json(map: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(key.as_str().into(), value_from_json(value));
    }
    table
}

fn value_from_json(value: &serde_json::Value) -> AMQPValue {
    use serde_json::Value;
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => {
            AMQPValue::FieldArray(items.iter().map(value_from_json).collect::<Vec<_>>().into())
        }
        Value::Object(map) => AMQPValue::FieldTable(table_from_json(map)),
    }
}

/// An AMQP table as the plain JSON RabbitMQ's definitions hold.
pub fn table_to_json(table: &FieldTable) -> serde_json::Map<String, serde_json::Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect()
}

fn value_to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::{Value, json};
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

/// A user in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitUser {
    /// Its name.
    pub name: String,
    /// Salt and hash, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// A clear-text password, hashed on import (never written).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// The algorithm of `password_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing_algorithm: Option<String>,
    /// Tags: a list, or a comma-separated string.
    #[serde(default)]
    pub tags: Tags,
    /// `max-connections`, `max-channels`.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

/// User tags as either form RabbitMQ has written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    /// `["administrator", "monitoring"]` (3.9 and later).
    List(Vec<String>),
    /// `"administrator,monitoring"` (3.8 and before).
    Joined(String),
}

impl Default for Tags {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Tags {
    /// The tags as a list.
    pub fn into_list(self) -> Vec<String> {
        match self {
            Self::List(list) => list,
            Self::Joined(joined) => joined
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// A vhost in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitVhost {
    /// Its name.
    pub name: String,
    /// Free text (3.8+; under `metadata` in 3.11+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free labels: a list, or a comma-separated string (3.10 writes `""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// `description` and `tags` as 3.11+ writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RabbitVhostMetadata>,
}

/// A vhost's metadata (RabbitMQ 3.11+).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RabbitVhostMetadata {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free labels.
    #[serde(default)]
    pub tags: Tags,
}

/// A runtime parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitParameter {
    /// Its vhost.
    pub vhost: String,
    /// Its component (`vhost-limits`, `federation-upstream` …).
    pub component: String,
    /// Its name (`limits` for vhost limits).
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
}

/// A policy in RabbitMQ's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitPolicy {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// The regular expression over names.
    pub pattern: String,
    /// What it applies to.
    #[serde(rename = "apply-to", default = "apply_to_all")]
    pub apply_to: String,
    /// What it sets.
    pub definition: serde_json::Value,
    /// Of the policies that match, the highest priority applies.
    #[serde(default)]
    pub priority: i64,
}

fn apply_to_all() -> String {
    "all".into()
}

/// A definition written as a list of `[key, value]` pairs, as `rabbitmqctl
/// export_definitions` writes an operator policy's (its Erlang proplist), as the object
/// it stands for; anything else as it is.
fn object_of_pairs(definition: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Array(items) = &definition else {
        return definition;
    };
    let pairs: Option<serde_json::Map<String, serde_json::Value>> = items
        .iter()
        .map(|item| match item.as_array().map(Vec::as_slice) {
            Some([serde_json::Value::String(key), value]) => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect();
    match pairs {
        Some(object) if !object.is_empty() => serde_json::Value::Object(object),
        _ => definition,
    }
}

/// The component RabbitMQ keeps operator policies under, as runtime parameters.
pub const OPERATOR_POLICY: &str = "operator_policy";

impl RabbitParameter {
    /// An operator policy, as RabbitMQ exports it: a runtime parameter whose value holds
    /// the policy's pattern, definition, priority and `apply-to`.
    pub fn operator_policy(def: PolicyDef) -> Self {
        Self {
            vhost: def.vhost,
            component: OPERATOR_POLICY.into(),
            name: def.name,
            value: serde_json::json!({
                "pattern": def.pattern,
                "definition": def.definition,
                "priority": def.priority,
                "apply-to": def.apply_to,
            }),
        }
    }
}

impl From<RabbitPolicy> for PolicyDef {
    fn from(p: RabbitPolicy) -> Self {
        Self {
            vhost: p.vhost,
            name: p.name,
            pattern: p.pattern,
            apply_to: p.apply_to,
            priority: p.priority,
            definition: p.definition,
        }
    }
}

impl From<PolicyDef> for RabbitPolicy {
    fn from(p: PolicyDef) -> Self {
        Self {
            vhost: p.vhost,
            name: p.name,
            pattern: p.pattern,
            apply_to: p.apply_to,
            definition: p.definition,
            priority: p.priority,
        }
    }
}

/// Why a definitions file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not JSON of the expected shape.
    #[error("not a RabbitMQ definitions file: {0}")]
    Json(#[from] serde_json::Error),
    /// An entry RabbitMQ would refuse, in its words: the reason, then which entry as
    /// ` (vhost/name)` or ` (vhost/component/name)`.
    #[error("{0}")]
    Invalid(String),
    /// A user has neither a password hash nor a password... nor may log in without one.
    #[error("user '{0}' has an unknown hashing_algorithm '{1}'")]
    Algorithm(String, String),
}

impl RabbitDefinitions {
    /// Reads a definitions file.
    ///
    /// # Errors
    /// Not JSON, or not of RabbitMQ's shape.
    pub fn parse(text: &str) -> Result<Self, ImportError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The operator policies it holds (runtime parameters of [`OPERATOR_POLICY`]).
    ///
    /// # Errors
    /// One whose value is not a policy's shape.
    pub fn operator_policies(&self) -> Result<Vec<PolicyDef>, ImportError> {
        self.parameters
            .iter()
            .filter(|p| p.component == OPERATOR_POLICY)
            .map(|p| {
                let mut shaped = match &p.value {
                    serde_json::Value::Object(value) => value.clone(),
                    _ => serde_json::Map::new(),
                };
                shaped.insert("vhost".into(), p.vhost.clone().into());
                shaped.insert("name".into(), p.name.clone().into());
                let mut policy: RabbitPolicy = serde_json::from_value(shaped.into())?;
                policy.definition = object_of_pairs(policy.definition);
                Ok(PolicyDef::from(policy))
            })
            .collect()
    }

    /// The vhosts, users, permissions and topic permissions it holds, as Warren's
    /// definitions (clear-text passwords hashed now). Its topology is left in place.
    ///
    /// # Errors
    /// A user's hashing algorithm is unknown.
    pub fn access(&self) -> Result<AccessDefinitions, ImportError> {
        let this = self.clone();
        this.into_access()
    }

    fn into_access(self) -> Result<AccessDefinitions, ImportError> {
        let mut limits: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for p in self.parameters {
            if p.component == "vhost-limits" {
                let read = VHOST_LIMITS.parse(&p.value).map_err(|reason| {
                    ImportError::Invalid(format!(
                        "{reason} ({}/{}/{})",
                        p.vhost, p.component, p.name
                    ))
                })?;
                limits.entry(p.vhost).or_default().extend(read);
            }
        }
        let vhosts = self
            .vhosts
            .into_iter()
            .map(|v| {
                let metadata = v.metadata.unwrap_or_default();
                VhostDef {
                    limits: limits.remove(&v.name).unwrap_or_default(),
                    description: v.description.unwrap_or(metadata.description),
                    tags: v.tags.unwrap_or(metadata.tags).into_list(),
                    name: v.name,
                }
            })
            .collect();
        let mut users = Vec::new();
        for u in self.users {
            let tags = u.tags.into_list();
            let def = match (u.password_hash, u.password) {
                (Some(hash), _) => {
                    let algorithm = u
                        .hashing_algorithm
                        .unwrap_or_else(|| Algorithm::default().name().to_owned());
                    if Algorithm::from_name(&algorithm).is_none() {
                        return Err(ImportError::Algorithm(u.name, algorithm));
                    }
                    UserDef {
                        name: u.name,
                        password_hash: hash,
                        hashing_algorithm: algorithm,
                        tags,
                        limits: u.limits,
                    }
                }
                (None, Some(password)) => {
                    let mut def = Access::new_user(&u.name, &password, tags);
                    def.limits = u.limits;
                    def
                }
                (None, None) => UserDef {
                    name: u.name,
                    password_hash: String::new(),
                    hashing_algorithm: Algorithm::default().name().to_owned(),
                    tags,
                    limits: u.limits,
                },
            };
            users.push(def);
        }
        Ok(AccessDefinitions {
            vhosts,
            users,
            permissions: self.permissions,
            topic_permissions: self.topic_permissions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_arguments_convert_as_rabbitmq_converts_them() {
        let json = serde_json::json!({
            "x-max-length": 10, "x-message-ttl": 1.5, "x-queue-type": "quorum",
            "flag": true, "list": [1, "a"], "nested": {"k": null}
        });
        let serde_json::Value::Object(map) = json else {
            unreachable!("an object")
        };
        let table = table_from_json(&map);
        let inner = table.inner();
        assert_eq!(inner.get("x-max-length"), Some(&AMQPValue::LongLongInt(10)));
        assert_eq!(inner.get("x-message-ttl"), Some(&AMQPValue::Double(1.5)));
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(table_to_json(&table), map);
    }

    #[test]
    fn a_rabbitmq_3_10_export_reads_with_tags_in_either_form_and_limits_as_parameters() {
        let text = r#"{
          "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
          "users": [
            {"name": "admin", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XI4qMCOj7B1VdnGr+1NpANJ8",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {}},
            {"name": "old", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XI4qMCOj7B1VdnGr+1NpANJ8",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management,monitoring"},
            {"name": "clear", "password": "s3cret", "tags": []}
          ],
          "vhosts": [{"name": "/", "description": "", "tags": ""},
                     {"name": "app", "metadata": {"description": "d", "tags": ["t"]}}],
          "permissions": [{"user": "admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
          "topic_permissions": [{"user": "admin", "vhost": "/", "exchange": "amq.topic", "write": "^a", "read": ".*"}],
          "parameters": [{"vhost": "app", "component": "vhost-limits", "name": "limits",
                          "value": {"max-connections": 10, "max-queues": 5}}],
          "global_parameters": [], "policies": [], "queues": [], "exchanges": [], "bindings": []
        }"#;
        let AccessDefinitions {
            vhosts,
            users,
            permissions,
            topic_permissions: topic,
        } = RabbitDefinitions::parse(text)
            .expect("parses")
            .access()
            .expect("usable");
        assert_eq!(vhosts.len(), 2);
        assert_eq!(vhosts[1].description, "d");
        assert_eq!(vhosts[1].limits.get("max-queues"), Some(&5));
        assert_eq!(users[1].tags, vec!["management", "monitoring"]);
        assert_eq!(permissions.len(), 1);
        assert_eq!(topic.len(), 1);
        let mut access = Access::default();
        for u in users {
            access.put_user(u).expect("a usable user");
        }
        assert!(access.authenticate("clear", "s3cret").is_ok());
    }

    #[test]
    fn operator_policies_are_runtime_parameters_both_ways() {
        // As the lab RabbitMQ 3.10 exports one.
        let text = r#"{"parameters": [
            {"value": {"pattern": "^capped", "definition": {"max-length": 5}, "priority": 1,
                       "apply-to": "queues"},
             "vhost": "/", "component": "operator_policy", "name": "cap"},
            {"value": {"pattern": "x", "definition": {"expires": 5}},
             "vhost": "v", "component": "operator_policy", "name": "defaults"},
            {"value": {"max-queues": 1}, "vhost": "v", "component": "vhost-limits", "name": "limits"}
        ]}"#;
        let file = RabbitDefinitions::parse(text).expect("parses");
        let read = file.operator_policies().expect("operator policies");
        let cap = PolicyDef {
            vhost: "/".into(),
            name: "cap".into(),
            pattern: "^capped".into(),
            apply_to: "queues".into(),
            priority: 1,
            definition: serde_json::json!({"max-length": 5}),
        };
        assert_eq!(read[0], cap);
        assert_eq!((read[1].apply_to.as_str(), read[1].priority), ("all", 0));
        assert_eq!(read.len(), 2);
        let written = RabbitParameter::operator_policy(cap.clone());
        let again = RabbitDefinitions {
            parameters: vec![written],
            ..RabbitDefinitions::default()
        };
        assert_eq!(again.operator_policies().expect("again"), vec![cap]);
        // As `rabbitmqctl export_definitions` (3.10) writes one: its definition a list of
        // pairs.
        let pairs = RabbitDefinitions::parse(
            r#"{"parameters": [{"component": "operator_policy", "name": "opz", "vhost": "/",
                "value": {"apply-to": "queues", "pattern": "^zz$", "priority": 0,
                          "definition": [["max-length", 2], ["message-ttl", 5]]}}]}"#,
        )
        .expect("parses");
        assert_eq!(
            pairs.operator_policies().expect("read")[0].definition,
            serde_json::json!({"max-length": 2, "message-ttl": 5})
        );
        let shapeless = RabbitDefinitions::parse(
            r#"{"parameters": [{"value": 5, "vhost": "/", "component": "operator_policy", "name": "x"}]}"#,
        )
        .expect("parses");
        assert!(shapeless.operator_policies().is_err());
    }
}
