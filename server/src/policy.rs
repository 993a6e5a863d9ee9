//! Policies: named definitions that set queue and exchange options by name pattern, as
//! RabbitMQ's do (`rabbit_policy`, `rabbit_policies`), loaded from a JSON file in the
//! shape of `rabbitmqctl export_definitions` so an export can be reused as is.
//!
//! At most one policy applies to a queue or exchange: among the policies of its vhost
//! whose `pattern` matches its name (anywhere: the pattern is not anchored), whose
//! `apply-to` covers it, and — for queues — whose definition holds no key the queue's
//! type refuses (`unsupported_policies`: `delivery-limit` never applies to a classic
//! queue, `queue-mode` never to a quorum queue), the highest `priority` wins. RabbitMQ
//! leaves ties to storage order; Warren picks the lexically smallest name.
//!
//! A queue's own `x-` arguments combine with its policy as RabbitMQ 4.2 combines them
//! (`rabbit_queue_type_util:args_policy_lookup/3` with the resolver each queue type
//! passes):
//!
//! | key | classic | quorum |
//! |---|---|---|
//! | `message-ttl`, `expires`, `max-length`, `max-length-bytes`, `consumer-timeout` | lower | lower |
//! | `dead-letter-exchange`, `dead-letter-routing-key` | argument | argument |
//! | `overflow` | argument | policy |
//! | `dead-letter-strategy` | — | argument |
//! | `delivery-limit` | — | lower; unlimited (negative) loses to a limit; neither: 20 |
//! | `partitions` | argument, else policy, at creation only | same |
//! | `alternate-exchange` (exchanges) | argument | |
//!
//! An operator policy ([`operator`]) may apply to a queue beside its policy and caps its
//! limits; the two definitions merged meet the queue's arguments as above.
//!
//! `partitions` (Warren's, issue 13) is read once, when a queue is made
//! ([`Policies::partitions_at_creation`]): the partitions' logs and every key's partition
//! depend on the count, so [`effective`] never changes it afterwards, and a policy that
//! later asks for another count only gets a log line ([`Policies::ignored_partitions`]).
//!
//! Validation and its texts follow RabbitMQ 4.2 (`rabbit_policies:validate_policy0/2`,
//! `rabbit_policy:validation/3`, `rabbit_parameter_validation`); values are printed as
//! the Erlang terms RabbitMQ prints (`<<"x">> is not a valid message TTL`). Patterns are
//! compiled by the `regex` crate, which lacks PCRE's look-around and back-references.
//! Keys RabbitMQ knows but Warren does not act on (`queue-mode`, `queue-version`,
//! `max-age`, …) are validated, then only decide which queue types a policy applies to.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use regex::Regex;
use serde_json::{Map, Value};

use crate::erlang;
use crate::queue::arguments::{
    self, DeadLetterStrategy, MAX_PARTITIONS, Overflow, QueueArguments, QueueType,
};
use crate::store::definitions::PolicyDef;

mod mirroring;
mod operator;

pub use operator::Applied;

const MESSAGE_TTL: &str = "message-ttl";
const EXPIRES: &str = "expires";
const MAX_LENGTH: &str = "max-length";
const MAX_LENGTH_BYTES: &str = "max-length-bytes";
const MAX_AGE: &str = "max-age";
const OVERFLOW: &str = "overflow";
const DLX: &str = "dead-letter-exchange";
const DLX_ROUTING_KEY: &str = "dead-letter-routing-key";
const DLX_STRATEGY: &str = "dead-letter-strategy";
const DELIVERY_LIMIT: &str = "delivery-limit";
const CONSUMER_TIMEOUT: &str = "consumer-timeout";
const ALTERNATE_EXCHANGE: &str = "alternate-exchange";
const PARTITIONS: &str = "partitions";

/// `rabbit_re`'s longest pattern, in bytes.
const MAX_PATTERN_LENGTH: usize = 1024;

/// How one definition key is validated.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// `is_binary(V)`.
    Str,
    /// `is_integer(V)`.
    Int,
    /// `is_integer(V), V >= 0`.
    NonNegInt,
    /// `is_integer(V), V >= 1`.
    PosInt,
    /// `is_integer(V)` within the bounds.
    IntRange(u64, u64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// One of these integers.
    OneOfInt(&'static [u64]),
    /// `rabbit_amqqueue:check_max_age/1`: digits, then `Y`, `M`, `D`, `h`, `m` or `s`.
    MaxAge,
}

/// A key RabbitMQ 4.2 registers as a `policy_validator`, and what it says of a bad value
/// (after the value).
struct Rule {
    key: &'static str,
    check: Check,
    complaint: &'static str,
}

const fn rule(key: &'static str, check: Check, complaint: &'static str) -> Rule {
    Rule {
        key,
        check,
        complaint,
    }
}

const LEADER_LOCATORS: &[&str] = &["client-local", "balanced", "random", "least-leaders"];

/// Every key Warren accepts in a definition but 3.x's mirroring keys ([`mirroring`]),
/// sorted; the keys of `rabbit_policies`, plus `target-group-size`
/// (`rabbit_quorum_queue`), `queue-master-locator` (`rabbit_classic_queue`) and
/// Warren's `partitions`. Plugin keys (`federation-upstream`, …) are refused as
/// RabbitMQ 4.2 without those plugins refuses them.
const RULES: &[Rule] = &[
    rule(
        ALTERNATE_EXCHANGE,
        Check::Str,
        "is not a valid alternate exchange name",
    ),
    rule(
        CONSUMER_TIMEOUT,
        Check::NonNegInt,
        "is not a valid consumer timeout",
    ),
    rule(DLX, Check::Str, "is not a valid dead letter exchange name"),
    rule(
        DLX_ROUTING_KEY,
        Check::Str,
        "is not a valid dead letter routing key",
    ),
    rule(
        DLX_STRATEGY,
        Check::OneOf(&["at-most-once", "at-least-once"]),
        "is not a valid dead letter strategy",
    ),
    rule(DELIVERY_LIMIT, Check::Int, "is not a valid delivery limit"),
    rule(EXPIRES, Check::PosInt, "is not a valid queue expiry"),
    rule(
        "initial-cluster-size",
        Check::NonNegInt,
        "is not a valid cluster size",
    ),
    rule(MAX_AGE, Check::MaxAge, "is not a valid max age"),
    rule(
        "max-in-memory-bytes",
        Check::NonNegInt,
        "is not a valid maximum memory in bytes",
    ),
    rule(
        "max-in-memory-length",
        Check::NonNegInt,
        "is not a valid maximum memory in bytes",
    ),
    rule(
        MAX_LENGTH,
        Check::NonNegInt,
        "is not a valid maximum length",
    ),
    rule(
        MAX_LENGTH_BYTES,
        Check::NonNegInt,
        "is not a valid maximum length in bytes",
    ),
    rule(MESSAGE_TTL, Check::NonNegInt, "is not a valid message TTL"),
    rule(
        OVERFLOW,
        Check::OneOf(&["drop-head", "reject-publish", "reject-publish-dlx"]),
        "is not a valid overflow value",
    ),
    rule(
        PARTITIONS,
        Check::IntRange(1, MAX_PARTITIONS as u64),
        "is not a valid partition count",
    ),
    rule(
        "queue-leader-locator",
        Check::OneOf(LEADER_LOCATORS),
        "is not a valid queue leader locator value",
    ),
    rule(
        "queue-master-locator",
        Check::OneOf(&[
            "client-local",
            "balanced",
            "random",
            "least-leaders",
            "min-masters",
        ]),
        "is not a valid master locator",
    ),
    rule(
        "queue-mode",
        Check::OneOf(&["default", "lazy"]),
        "is not a valid queue-mode value",
    ),
    rule(
        "queue-version",
        Check::OneOfInt(&[1, 2]),
        "is not a valid queue-version value",
    ),
    rule(
        "stream-filter-size-bytes",
        Check::IntRange(16, 255),
        "is not a valid filter size. Valid range is 16-255",
    ),
    rule(
        "stream-max-segment-size-bytes",
        Check::IntRange(0, 3_000_000_000),
        "is not a valid segment size",
    ),
    rule(
        "target-group-size",
        Check::PosInt,
        "is not a valid qq target count value",
    ),
];

/// Keys that keep a policy off a queue type (each type's `unsupported_policies`,
/// RabbitMQ 4.2), limited to keys a definition may hold; the mirroring keys keep one
/// off quorum queues and streams too (see [`PolicyDefinition::applies_to`]).
const CLASSIC_UNSUPPORTED: &[&str] = &[
    "max-age",
    "stream-max-segment-size-bytes",
    "initial-cluster-size",
    DELIVERY_LIMIT,
    DLX_STRATEGY,
    "max-in-memory-length",
    "max-in-memory-bytes",
    "target-group-size",
];
const QUORUM_UNSUPPORTED: &[&str] = &[
    "queue-mode",
    "queue-master-locator",
    "max-age",
    "stream-max-segment-size-bytes",
    "initial-cluster-size",
];
const STREAM_UNSUPPORTED: &[&str] = &[
    EXPIRES,
    MESSAGE_TTL,
    DLX,
    DLX_ROUTING_KEY,
    MAX_LENGTH,
    "max-in-memory-length",
    "max-in-memory-bytes",
    OVERFLOW,
    "queue-mode",
    DELIVERY_LIMIT,
    "queue-master-locator",
    PARTITIONS,
];

/// Why a policy file was refused. Every variant names the file; those about one policy
/// name it, its vhost and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not JSON.
    #[error("policy file {}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Where parsing stopped.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is not shaped like a definitions export.
    #[error("policy file {}: {reason}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A policy's field or definition key has a value RabbitMQ would refuse.
    #[error(
        "policy file {}: policy '{policy}' in vhost '{vhost}': invalid '{key}': {reason}",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The policy's vhost.
        vhost: String,
        /// The policy's name.
        policy: String,
        /// The field (`pattern`, `priority`, …) or definition key (`message-ttl`, …).
        key: String,
        /// RabbitMQ's text for it.
        reason: String,
    },
    /// Two policies share a vhost and a name.
    #[error(
        "policy file {}: policy '{policy}' in vhost '{vhost}' is defined more than once",
        path.display()
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The vhost.
        vhost: String,
        /// The name.
        policy: String,
    },
}

/// The result of loading policies.
pub type PolicyResult<T> = Result<T, PolicyError>;

/// Why one policy entry was refused, wherever it came from.
#[derive(Debug)]
enum EntryError {
    /// The entry is not shaped like a policy.
    Shape(String),
    /// A field or definition key has a value RabbitMQ would refuse.
    Invalid {
        vhost: String,
        policy: String,
        key: String,
        reason: String,
    },
}

impl EntryError {
    /// The error for an entry of the file `path`.
    fn in_file(self, path: &Path) -> PolicyError {
        let path = path.to_owned();
        match self {
            Self::Shape(reason) => PolicyError::Shape { path, reason },
            Self::Invalid {
                vhost,
                policy,
                key,
                reason,
            } => PolicyError::Invalid {
                path,
                vhost,
                policy,
                key,
                reason,
            },
        }
    }

    /// RabbitMQ's reason alone, as `rabbitmqctl set_policy` shows it.
    fn reason(self) -> String {
        match self {
            Self::Shape(reason) | Self::Invalid { reason, .. } => reason,
        }
    }
}

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ApplyTo {
    /// `all`: queues of every type and exchanges (the default).
    #[default]
    All,
    /// `queues`: queues of every type.
    Queues,
    /// `classic_queues`.
    ClassicQueues,
    /// `quorum_queues`.
    QuorumQueues,
    /// `streams`: accepted so exports load; Warren has no streams, so it matches nothing.
    Streams,
    /// `exchanges`.
    Exchanges,
}

impl ApplyTo {
    /// The `apply-to` value naming this scope.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Queues => "queues",
            Self::ClassicQueues => "classic_queues",
            Self::QuorumQueues => "quorum_queues",
            Self::Streams => "streams",
            Self::Exchanges => "exchanges",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "all" => Self::All,
            "queues" => Self::Queues,
            "classic_queues" => Self::ClassicQueues,
            "quorum_queues" => Self::QuorumQueues,
            "streams" => Self::Streams,
            "exchanges" => Self::Exchanges,
            _ => return None,
        })
    }

    /// `rabbit_policy:matches_queue_type/3`.
    fn covers_queue(self, queue_type: QueueType) -> bool {
        match self {
            Self::All | Self::Queues => true,
            Self::ClassicQueues => queue_type == QueueType::Classic,
            Self::QuorumQueues => queue_type == QueueType::Quorum,
            Self::Streams => queue_type == QueueType::Stream,
            Self::Exchanges => false,
        }
    }

    /// `rabbit_policy:matches_type/2`.
    fn covers_exchanges(self) -> bool {
        matches!(self, Self::All | Self::Exchanges)
    }
}

impl fmt::Display for ApplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy's validated definition: the keys Warren acts on, typed, and the names of the
/// others.
///
/// All fields are public so callers and tests can build one; [`Policies::load`] is the
/// way to get a validated one from users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDefinition {
    /// `message-ttl`, in milliseconds.
    pub message_ttl: Option<u64>,
    /// `expires`, in milliseconds (at least 1).
    pub expires: Option<u64>,
    /// `max-length`, in messages.
    pub max_length: Option<u64>,
    /// `max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `overflow`.
    pub overflow: Option<Overflow>,
    /// `dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `dead-letter-strategy` (quorum queues only).
    pub dead_letter_strategy: Option<DeadLetterStrategy>,
    /// `delivery-limit` (quorum queues only); negative means unlimited, as in RabbitMQ 4.
    pub delivery_limit: Option<i64>,
    /// `consumer-timeout`, in milliseconds.
    pub consumer_timeout: Option<u64>,
    /// `alternate-exchange` (exchanges).
    pub alternate_exchange: Option<String>,
    /// `max-age` (streams), in milliseconds.
    pub max_age_ms: Option<u64>,
    /// `partitions`: the partition count of queues made while the policy applies to them
    /// (1..=[`MAX_PARTITIONS`]), unless they declare `x-partitions`. Read only at
    /// creation: see [`Policies::partitions_at_creation`].
    pub partitions: Option<u16>,
    /// Keys RabbitMQ recognises that Warren accepts but does not act on (`queue-mode`,
    /// `queue-version`, `max-age`, …). Kept because they decide which queue types the
    /// policy applies to.
    pub ignored: Vec<String>,
}

impl PolicyDefinition {
    /// The keys this definition holds.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let typed = [
            (MESSAGE_TTL, self.message_ttl.is_some()),
            (EXPIRES, self.expires.is_some()),
            (MAX_LENGTH, self.max_length.is_some()),
            (MAX_LENGTH_BYTES, self.max_length_bytes.is_some()),
            (OVERFLOW, self.overflow.is_some()),
            (DLX, self.dead_letter_exchange.is_some()),
            (DLX_ROUTING_KEY, self.dead_letter_routing_key.is_some()),
            (DLX_STRATEGY, self.dead_letter_strategy.is_some()),
            (DELIVERY_LIMIT, self.delivery_limit.is_some()),
            (CONSUMER_TIMEOUT, self.consumer_timeout.is_some()),
            (ALTERNATE_EXCHANGE, self.alternate_exchange.is_some()),
            (PARTITIONS, self.partitions.is_some()),
            (MAX_AGE, self.max_age_ms.is_some()),
        ];
        typed
            .into_iter()
            .filter_map(|(key, present)| present.then_some(key))
            .chain(self.ignored.iter().map(String::as_str))
    }

    /// Whether a queue of this type takes the policy at all
    /// (`rabbit_queue_type:is_policy_applicable/2`): not when the definition holds a key
    /// the type refuses.
    pub fn applies_to(&self, queue_type: QueueType) -> bool {
        let refused = match queue_type {
            QueueType::Classic => CLASSIC_UNSUPPORTED,
            QueueType::Quorum => QUORUM_UNSUPPORTED,
            QueueType::Stream => STREAM_UNSUPPORTED,
        };
        // 3.x kept its mirroring keys off quorum queues and streams.
        let mirroring_refused = if queue_type == QueueType::Classic {
            &[][..]
        } else {
            mirroring::KEYS
        };
        self.keys()
            .all(|key| !refused.contains(&key) && !mirroring_refused.contains(&key))
    }

    /// Validates a definition as `rabbit_policy:validation/3` does: each known key's
    /// value in key order, then unknown keys. Errors are `(key, reason)`.
    fn parse(value: &Value) -> Result<Self, (String, String)> {
        let Value::Object(terms) = value else {
            return Err((
                "definition".to_owned(),
                format!("definition must be a dictionary: {}", erlang::json(value)),
            ));
        };
        if terms.is_empty() {
            return Err(("definition".to_owned(), "no policy provided".to_owned()));
        }
        // In key order, as RabbitMQ holds a decoded object, whatever serde_json's
        // map type.
        let mut terms: Vec<(&String, &Value)> = terms.iter().collect();
        terms.sort_by_key(|&(key, _)| key);
        let mut out = Self::default();
        let mut unknown = Vec::new();
        for &(key, value) in &terms {
            if mirroring::KEYS.contains(&key.as_str()) {
                out.ignored.push(key.clone());
                continue;
            }
            let Some(rule) = RULES.iter().find(|rule| rule.key == key) else {
                unknown.push((key, value));
                continue;
            };
            if !check(rule.check, value) {
                return Err((
                    key.clone(),
                    format!("{} {}", erlang::json(value), rule.complaint),
                ));
            }
            out.record(key, value);
        }
        mirroring::check(&terms)?;
        if let Some(&(first, _)) = unknown.first() {
            return Err((first.clone(), not_recognised(unknown)));
        }
        Ok(out)
    }

    /// Stores one validated key.
    fn record(&mut self, key: &str, value: &Value) {
        let text = || value.as_str().map(str::to_owned);
        match key {
            MESSAGE_TTL => self.message_ttl = value.as_u64(),
            EXPIRES => self.expires = value.as_u64(),
            MAX_LENGTH => self.max_length = value.as_u64(),
            MAX_LENGTH_BYTES => self.max_length_bytes = value.as_u64(),
            CONSUMER_TIMEOUT => self.consumer_timeout = value.as_u64(),
            DELIVERY_LIMIT => {
                // Integers past i64 are limits no queue reaches.
                self.delivery_limit = value.as_i64().or(value.as_u64().map(|_| i64::MAX));
            }
            OVERFLOW => {
                self.overflow = match value.as_str() {
                    Some("reject-publish") => Some(Overflow::RejectPublish),
                    Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
                    _ => Some(Overflow::DropHead),
                };
            }
            DLX => self.dead_letter_exchange = text(),
            DLX_ROUTING_KEY => self.dead_letter_routing_key = text(),
            DLX_STRATEGY => {
                self.dead_letter_strategy = match value.as_str() {
                    Some("at-least-once") => Some(DeadLetterStrategy::AtLeastOnce),
                    _ => Some(DeadLetterStrategy::AtMostOnce),
                };
            }
            ALTERNATE_EXCHANGE => self.alternate_exchange = text(),
            PARTITIONS => {
                self.partitions = value.as_u64().and_then(|n| u16::try_from(n).ok());
            }
            MAX_AGE => {
                self.max_age_ms = value
                    .as_str()
                    .and_then(|age| arguments::parse_max_age(age.as_bytes()));
            }
            other => self.ignored.push(other.to_owned()),
        }
    }
}

/// Whether a value passes a check.
fn check(check: Check, value: &Value) -> bool {
    let int = || value.as_u64();
    match check {
        Check::Str => value.is_string(),
        Check::Int => value.is_i64() || value.is_u64(),
        Check::NonNegInt => int().is_some(),
        Check::PosInt => int().is_some_and(|n| n >= 1),
        Check::IntRange(low, high) => int().is_some_and(|n| (low..=high).contains(&n)),
        Check::OneOf(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
        Check::OneOfInt(allowed) => int().is_some_and(|n| allowed.contains(&n)),
        Check::MaxAge => value
            .as_str()
            .is_some_and(|age| arguments::parse_max_age(age.as_bytes()).is_some()),
    }
}

/// One policy: which queues and exchanges it covers, and what it sets.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The vhost whose queues and exchanges it covers.
    pub vhost: String,
    /// Its name, unique within the vhost.
    pub name: String,
    /// Matched against names anywhere in them (`^` anchors it), as `re:run/3` matches.
    pub pattern: Regex,
    /// What kinds of entity it covers.
    pub apply_to: ApplyTo,
    /// Of the policies that match, the highest priority applies.
    pub priority: i64,
    /// What it sets.
    pub definition: PolicyDefinition,
    /// The definition as it was given, for exports and listings.
    pub definition_json: Value,
}

impl Policy {
    /// Validates a policy set at run time, as `rabbit_policy:set/7` does.
    ///
    /// # Errors
    /// RabbitMQ's reason, as `rabbitmqctl set_policy` shows it after "Validation failed".
    pub fn from_def(def: &PolicyDef) -> Result<Self, String> {
        let mut entry = Map::new();
        entry.insert("vhost".into(), Value::String(def.vhost.clone()));
        entry.insert("name".into(), Value::String(def.name.clone()));
        entry.insert("pattern".into(), Value::String(def.pattern.clone()));
        entry.insert("apply-to".into(), Value::String(def.apply_to.clone()));
        entry.insert("priority".into(), Value::from(def.priority));
        entry.insert("definition".into(), def.definition.clone());
        parse_policy(&entry, 0).map_err(EntryError::reason)
    }

    /// Validates an operator policy (see [`operator`]).
    ///
    /// # Errors
    /// RabbitMQ's reason, as `rabbitmqctl set_operator_policy` shows it after
    /// "Validation failed".
    pub fn from_operator_def(def: &PolicyDef) -> Result<Self, String> {
        operator::validate(def)
    }

    /// The policy as it is stored and exported.
    pub fn to_def(&self) -> PolicyDef {
        PolicyDef {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            pattern: self.pattern.as_str().to_owned(),
            apply_to: self.apply_to.name().to_owned(),
            priority: self.priority,
            definition: self.definition_json.clone(),
        }
    }

    /// Whether this policy may apply to a queue (`rabbit_policy:matches/3`): same vhost,
    /// `apply-to` covers the type, the type takes every key, and the pattern matches.
    pub fn matches_queue(&self, vhost: &str, name: &str, queue_type: QueueType) -> bool {
        self.vhost == vhost
            && self.apply_to.covers_queue(queue_type)
            && self.definition.applies_to(queue_type)
            && self.pattern.is_match(name)
    }

    /// Whether this policy may apply to an exchange.
    pub fn matches_exchange(&self, vhost: &str, name: &str) -> bool {
        self.vhost == vhost && self.apply_to.covers_exchanges() && self.pattern.is_match(name)
    }
}

/// Every policy of every vhost, best first, so a lookup returns the first that matches.
///
/// Policies come from two places: the `--policies` file (re-read on SIGHUP) and those
/// set at run time (`set_policy`, imports; stored). A run-time policy hides a file
/// policy of the same vhost and name.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Those of the `--policies` file.
    file: Vec<Policy>,
    /// Those set at run time.
    runtime: Vec<Policy>,
    /// Both, without the hidden file policies, sorted by priority, highest first, then
    /// by name and vhost.
    policies: Vec<Policy>,
    /// Operator policies (set at run time; see [`operator`]), sorted as `policies`.
    operator: Vec<Policy>,
    /// Counts changes, so that a queue put under the policies before it was in its
    /// vhost's registry can tell whether a change went past it meanwhile.
    generation: u64,
}

impl Policies {
    /// Reads the policies of a definitions file (the `policies` array of
    /// `rabbitmqctl export_definitions` output; other sections are ignored, and a file
    /// without `policies` holds none).
    ///
    /// # Errors
    ///
    /// [`PolicyError`] naming the file, and the policy and key at fault, when the file
    /// cannot be read, is not JSON, is not shaped like an export, or holds a policy that
    /// RabbitMQ would refuse.
    pub fn load(path: &Path) -> PolicyResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses definitions JSON; `origin` names its source in errors.
    ///
    /// Each entry takes `name` (required), `vhost` (default `/`, for exports of a single
    /// vhost), `pattern` (required), `apply-to` (default `all`), `priority` (an integer,
    /// default 0) and `definition` (required); other fields are ignored, as RabbitMQ's
    /// import ignores them.
    ///
    /// # Errors
    ///
    /// As [`Policies::load`].
    pub fn from_json(text: &str, origin: &Path) -> PolicyResult<Self> {
        let document: Value = serde_json::from_str(text).map_err(|source| PolicyError::Json {
            path: origin.to_owned(),
            source,
        })?;
        let shape = |reason: String| PolicyError::Shape {
            path: origin.to_owned(),
            reason,
        };
        let Value::Object(document) = document else {
            return Err(shape(
                "expected a JSON object, as `rabbitmqctl export_definitions` writes".to_owned(),
            ));
        };
        let entries = match document.get("policies") {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                return Err(shape(format!(
                    "\"policies\" must be an array, not {}",
                    erlang::json(other)
                )));
            }
        };
        let mut policies = Vec::with_capacity(entries.len());
        let mut seen = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(entry) = entry else {
                return Err(shape(format!(
                    "entry {index} of \"policies\" is not an object: {}",
                    erlang::json(entry)
                )));
            };
            let policy = parse_policy(entry, index).map_err(|e| e.in_file(origin))?;
            if !seen.insert((policy.vhost.clone(), policy.name.clone())) {
                return Err(PolicyError::Duplicate {
                    path: origin.to_owned(),
                    vhost: policy.vhost,
                    policy: policy.name,
                });
            }
            policies.push(policy);
        }
        let mut loaded = Self {
            file: policies,
            ..Self::default()
        };
        loaded.merge();
        Ok(loaded)
    }

    /// How many changes were made so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Rebuilds the lookup list from the file's and the run-time policies.
    fn merge(&mut self) {
        self.generation += 1;
        let runtime = &self.runtime;
        let hidden = |p: &Policy| {
            runtime
                .iter()
                .any(|r| r.vhost == p.vhost && r.name == p.name)
        };
        let mut policies: Vec<Policy> = runtime
            .iter()
            .chain(self.file.iter().filter(|p| !hidden(p)))
            .cloned()
            .collect();
        policies.sort_by(best_first);
        self.policies = policies;
    }

    /// Sets run-time policies, each replacing the one of its vhost and name.
    pub fn set(&mut self, policies: impl IntoIterator<Item = Policy>) {
        for policy in policies {
            self.runtime
                .retain(|p| !(p.vhost == policy.vhost && p.name == policy.name));
            self.runtime.push(policy);
        }
        self.merge();
    }

    /// Clears a run-time policy; false if there is none of that vhost and name.
    pub fn clear(&mut self, vhost: &str, name: &str) -> bool {
        let before = self.runtime.len();
        self.runtime
            .retain(|p| !(p.vhost == vhost && p.name == name));
        let cleared = self.runtime.len() != before;
        if cleared {
            self.merge();
        }
        cleared
    }

    /// Clears every run-time policy and operator policy of a vhost (it was deleted).
    pub fn clear_vhost(&mut self, vhost: &str) {
        self.runtime.retain(|p| p.vhost != vhost);
        self.operator.retain(|p| p.vhost != vhost);
        self.merge();
    }

    /// Sets operator policies (validated by [`Policy::from_operator_def`]), each
    /// replacing the one of its vhost and name.
    pub fn set_operator(&mut self, policies: impl IntoIterator<Item = Policy>) {
        for policy in policies {
            self.operator
                .retain(|p| !(p.vhost == policy.vhost && p.name == policy.name));
            self.operator.push(policy);
        }
        self.operator.sort_by(best_first);
        self.generation += 1;
    }

    /// Clears an operator policy; false if there is none of that vhost and name.
    pub fn clear_operator(&mut self, vhost: &str, name: &str) -> bool {
        let before = self.operator.len();
        self.operator
            .retain(|p| !(p.vhost == vhost && p.name == name));
        self.generation += 1;
        self.operator.len() != before
    }

    /// The operator policies, best first.
    pub fn operator(&self) -> impl Iterator<Item = &Policy> {
        self.operator.iter()
    }

    /// The policy and the operator policy that apply to a queue; pass
    /// [`Applied::definition`] to [`effective`] to get the settings it runs with.
    pub fn applied(&self, vhost: &str, name: &str, queue_type: QueueType) -> Applied<'_> {
        Applied {
            policy: self.for_queue(vhost, name, queue_type),
            // Its type's refused keys do not keep an operator policy off a queue (as in
            // RabbitMQ 3.x): it holds only limits, and one the type lacks (a classic
            // queue's delivery limit) goes unused rather than losing the others.
            operator: self.operator.iter().find(|policy| {
                policy.vhost == vhost
                    && policy.apply_to.covers_queue(queue_type)
                    && policy.pattern.is_match(name)
            }),
        }
    }

    /// The policies set at run time, as they are stored.
    pub fn runtime(&self) -> impl Iterator<Item = &Policy> {
        self.runtime.iter()
    }

    /// Replaces the file's policies with those now in `path`. A file that fails to load changes
    /// nothing: the current policies stay and the reason is logged, so a bad edit never
    /// strips queues of their limits.
    ///
    /// # Errors
    ///
    /// As [`Policies::load`].
    pub fn reload(&mut self, path: &Path) -> PolicyResult<()> {
        match Self::load(path) {
            Ok(loaded) => {
                tracing::info!(
                    file = %path.display(),
                    policies = loaded.len(),
                    "policies reloaded"
                );
                self.file = loaded.file;
                self.merge();
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "policy reload rejected; keeping the current policies");
                Err(error)
            }
        }
    }

    /// The policy that applies to a queue, if any (its operator policy aside: see
    /// [`Policies::applied`]).
    pub fn for_queue(&self, vhost: &str, name: &str, queue_type: QueueType) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|policy| policy.matches_queue(vhost, name, queue_type))
    }

    /// The partition count a queue made now gets from its policy: the `partitions` of the
    /// policy that applies to it, if any. Pass it to [`crate::queue::arguments::parse`],
    /// where an `x-partitions` argument wins over it; it is never read again for that
    /// queue (see [`effective`]).
    pub fn partitions_at_creation(
        &self,
        vhost: &str,
        name: &str,
        queue_type: QueueType,
    ) -> Option<u16> {
        self.for_queue(vhost, name, queue_type)
            .and_then(|policy| policy.definition.partitions)
    }

    /// The policy that applies to an existing queue and the partition count it asks
    /// for, when that differs from the queue's `current` count: the policy cannot have
    /// its way (the count is fixed at creation), so the caller says so in the log.
    pub fn ignored_partitions(
        &self,
        vhost: &str,
        name: &str,
        queue_type: QueueType,
        current: Option<u16>,
    ) -> Option<(&Policy, u16)> {
        let policy = self.for_queue(vhost, name, queue_type)?;
        let wanted = policy.definition.partitions?;
        (current != Some(wanted)).then_some((policy, wanted))
    }

    /// The policy that applies to an exchange, if any; see [`alternate_exchange`].
    pub fn for_exchange(&self, vhost: &str, name: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|policy| policy.matches_exchange(vhost, name))
    }

    /// All policies, best first.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter()
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// RabbitMQ's refusal of definition keys it does not know (or, in an operator policy,
/// does not take).
fn not_recognised<'a>(entries: impl IntoIterator<Item = (&'a String, &'a Value)>) -> String {
    format!(
        "{} are not recognised policy settings",
        erlang::proplist(entries)
    )
}

/// The order policies are looked through: highest priority first, then by name and
/// vhost.
fn best_first(a: &Policy, b: &Policy) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.vhost.cmp(&b.vhost))
}

/// Validates one entry of `policies`, in `rabbit_policy:policy_validation/0`'s order.
fn parse_policy(entry: &Map<String, Value>, index: usize) -> Result<Policy, EntryError> {
    let vhost = match entry.get("vhost") {
        None | Some(Value::Null) => "/".to_owned(),
        Some(Value::String(vhost)) => vhost.clone(),
        Some(other) => {
            return Err(EntryError::Shape(format!(
                "entry {index} of \"policies\" has an invalid vhost: {}",
                erlang::json(other)
            )));
        }
    };
    let name = match entry.get("name") {
        Some(Value::String(name)) => name.clone(),
        None | Some(Value::Null) => {
            return Err(EntryError::Shape(format!(
                "policy in virtual host '{vhost}' has undefined name \
                     (entry {index} of \"policies\")"
            )));
        }
        Some(other) => {
            return Err(EntryError::Shape(format!(
                "policy in virtual host '{vhost}' has an invalid name: {} \
                     (entry {index} of \"policies\")",
                erlang::json(other)
            )));
        }
    };
    let invalid = |key: &str, reason: String| EntryError::Invalid {
        vhost: vhost.clone(),
        policy: name.clone(),
        key: key.to_owned(),
        reason,
    };
    let priority = match entry.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => match value.as_i64() {
            Some(priority) => priority,
            // RabbitMQ takes any number; Warren keeps priorities integral.
            None if value.is_number() => {
                return Err(invalid(
                    "priority",
                    format!(
                        "priority should be an integer, actually was {}",
                        erlang::json(value)
                    ),
                ));
            }
            None => {
                return Err(invalid(
                    "priority",
                    format!(
                        "priority should be a number, actually was {}",
                        erlang::json(value)
                    ),
                ));
            }
        },
    };
    let pattern = match entry.get("pattern") {
        None | Some(Value::Null) => {
            return Err(invalid(
                "pattern",
                format!("Key \"pattern\" not found in {name}"),
            ));
        }
        Some(Value::String(pattern)) => compile(pattern).map_err(|r| invalid("pattern", r))?,
        Some(other) => {
            return Err(invalid(
                "pattern",
                format!("pattern should be a binary but was {}", erlang::json(other)),
            ));
        }
    };
    let apply_to = match entry.get("apply-to") {
        None | Some(Value::Null) => ApplyTo::All,
        Some(value) => match value.as_str().and_then(ApplyTo::parse) {
            Some(apply_to) => apply_to,
            None => {
                let shown = value
                    .as_str()
                    .map_or_else(|| erlang::json(value), str::to_owned);
                return Err(invalid(
                    "apply-to",
                    format!(
                        "apply-to '{shown}' unrecognised; should be one of: 'queues', \
                         'classic_queues',  'quorum_queues', 'streams', 'exchanges', or 'all'"
                    ),
                ));
            }
        },
    };
    let definition = match entry.get("definition") {
        None | Some(Value::Null) => {
            return Err(invalid(
                "definition",
                format!("Key \"definition\" not found in {name}"),
            ));
        }
        Some(value) => PolicyDefinition::parse(value).map_err(|(key, r)| invalid(&key, r))?,
    };
    Ok(Policy {
        vhost,
        name,
        pattern,
        apply_to,
        priority,
        definition,
        definition_json: entry.get("definition").cloned().unwrap_or_default(),
    })
}

/// `rabbit_parameter_validation:regex/2`.
fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_LENGTH {
        return Err(format!(
            "pattern must not exceed {MAX_PATTERN_LENGTH} bytes"
        ));
    }
    Regex::new(pattern).map_err(|e| {
        // A syntax error is a diagram ending in "error: <what>"; keep only the what, so
        // the log line stays whole.
        let shown = e.to_string();
        let what = shown.lines().map(str::trim).rfind(|line| !line.is_empty());
        let what = what.unwrap_or_default();
        format!(
            "pattern should be regular expression but is invalid: {}",
            what.strip_prefix("error: ").unwrap_or(what)
        )
    })
}

/// A queue's settings under its policy: `declared` (what [`crate::queue::arguments`]
/// made of its arguments) combined with `policy` as RabbitMQ combines them (see the
/// module docs).
///
/// `arguments` is the queue's declared argument table: [`QueueArguments`] holds values
/// with defaults applied, so it cannot say whether `x-overflow`, `x-delivery-limit` or
/// `x-dead-letter-strategy` was given, which decides precedence for those keys.
///
/// The partitioning settings (`partitions`, the hash key, consumers per partition) are
/// `declared`'s, whatever the policy says: `declared.partitions` already holds the count
/// fixed at creation, and re-partitioning a live queue would move keys between
/// partitions.
pub fn effective(
    declared: &QueueArguments,
    arguments: &FieldTable,
    policy: Option<&PolicyDefinition>,
) -> QueueArguments {
    // `partitions` is carried over from `declared` by this clone and never touched again.
    let mut out = declared.clone();
    let Some(policy) = policy else {
        return out;
    };
    let lower = |arg: Option<u64>, pol: Option<u64>| match (arg, pol) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    };
    out.message_ttl = lower(declared.message_ttl, policy.message_ttl);
    out.expires = lower(declared.expires, policy.expires);
    out.max_length = lower(declared.max_length, policy.max_length);
    out.max_length_bytes = if declared.queue_type == QueueType::Stream {
        // rabbit_stream_queue: for a stream's retention the policy wins.
        policy.max_length_bytes.or(declared.max_length_bytes)
    } else {
        lower(declared.max_length_bytes, policy.max_length_bytes)
    };
    out.consumer_timeout = lower(declared.consumer_timeout, policy.consumer_timeout);
    out.dead_letter_exchange = declared
        .dead_letter_exchange
        .clone()
        .or_else(|| policy.dead_letter_exchange.clone());
    out.dead_letter_routing_key = declared
        .dead_letter_routing_key
        .clone()
        .or_else(|| policy.dead_letter_routing_key.clone());
    match declared.queue_type {
        QueueType::Quorum => {
            // rabbit_quorum_queue: the policy's overflow wins; `reject-publish-dlx` is
            // refused in favour of the default, `drop-head`.
            if let Some(overflow) = policy.overflow {
                out.overflow = match overflow {
                    Overflow::RejectPublishDlx => Overflow::DropHead,
                    other => other,
                };
            }
            out.delivery_limit = match (
                table_int(arguments, "x-delivery-limit"),
                policy.delivery_limit,
            ) {
                (None, None) => declared.delivery_limit,
                (Some(limit), None) | (None, Some(limit)) => u64::try_from(limit).ok(),
                // resolve_delivery_limit/2: a limit beats unlimited, else the lower.
                (Some(a), Some(p)) if a < 0 || p < 0 => u64::try_from(a.max(p)).ok(),
                (Some(a), Some(p)) => u64::try_from(a.min(p)).ok(),
            };
            let strategy = match table_str(arguments, "x-dead-letter-strategy") {
                Some(b"at-least-once") => DeadLetterStrategy::AtLeastOnce,
                Some(_) => DeadLetterStrategy::AtMostOnce,
                None => policy.dead_letter_strategy.unwrap_or_default(),
            };
            // rabbit_quorum_queue:dlh/5: at-least-once needs an exchange and
            // reject-publish, or falls back to at-most-once.
            out.dead_letter_strategy = if strategy == DeadLetterStrategy::AtLeastOnce
                && out.dead_letter_exchange.is_some()
                && out.overflow == Overflow::RejectPublish
            {
                DeadLetterStrategy::AtLeastOnce
            } else {
                DeadLetterStrategy::AtMostOnce
            };
        }
        QueueType::Classic | QueueType::Stream => {
            // rabbit_amqqueue_process: the argument wins.
            if !arguments.contains_key("x-overflow") {
                if let Some(overflow) = policy.overflow {
                    out.overflow = overflow;
                }
            }
        }
    }
    out
}

/// An exchange's alternate exchange: its `alternate-exchange` argument, else its
/// policy's (`rabbit_policy:get_arg/3`).
pub fn alternate_exchange(
    arguments: &FieldTable,
    policy: Option<&PolicyDefinition>,
) -> Option<String> {
    match table_str(arguments, ALTERNATE_EXCHANGE) {
        Some(name) => Some(String::from_utf8_lossy(name).into_owned()),
        None => policy.and_then(|p| p.alternate_exchange.clone()),
    }
}

/// An integer argument, of the types RabbitMQ counts as integers.
fn table_int(arguments: &FieldTable, key: &str) -> Option<i64> {
    Some(match *arguments.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

/// A string argument's bytes.
fn table_str<'a>(arguments: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    match arguments.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use amqp_codec::amq_protocol::types::{AMQPValue as V, LongString};
    use serde_json::json;

    use super::*;
    use crate::queue::arguments;

    const FILE: &str = "policies.json";

    fn policies(entries: Value) -> Policies {
        match Policies::from_json(&json!({ "policies": entries }).to_string(), Path::new(FILE)) {
            Ok(policies) => policies,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn refused(entries: Value) -> PolicyError {
        match Policies::from_json(&json!({ "policies": entries }).to_string(), Path::new(FILE)) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e,
        }
    }

    /// The (key, reason) of a refused single policy `p` with this definition.
    fn refused_definition(definition: Value) -> (String, String) {
        match refused(json!([{ "name": "p", "pattern": ".*", "definition": definition }])) {
            PolicyError::Invalid {
                path,
                vhost,
                policy,
                key,
                reason,
            } => {
                assert_eq!((path.as_path(), vhost.as_str()), (Path::new(FILE), "/"));
                assert_eq!(policy, "p");
                (key, reason)
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    fn runtime(name: &str, pattern: &str, priority: i64, ttl: u64) -> Policy {
        let def = PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: "queues".into(),
            priority,
            definition: json!({ "message-ttl": ttl }),
        };
        match Policy::from_def(&def) {
            Ok(policy) => {
                assert_eq!(policy.to_def(), def, "stored as given");
                policy
            }
            Err(e) => panic!("refused: {e}"),
        }
    }

    #[test]
    fn a_runtime_policy_hides_the_files_of_its_name_until_it_is_cleared() {
        let mut set = policies(json!([
            { "name": "p", "pattern": "^a", "priority": 1, "definition": { "message-ttl": 1 } }
        ]));
        let ttl = |set: &Policies, name: &str| {
            set.for_queue("/", name, QueueType::Classic)
                .and_then(|p| p.definition.message_ttl)
        };
        set.set([runtime("p", "^a", 1, 2), runtime("q", "^ab", 5, 3)]);
        assert_eq!(set.len(), 2, "the file's p is hidden");
        assert_eq!((ttl(&set, "a"), ttl(&set, "ab")), (Some(2), Some(3)));
        assert!(set.clear("/", "q"));
        assert!(!set.clear("/", "q"), "cleared once");
        assert!(set.clear("/", "p"));
        assert_eq!(ttl(&set, "ab"), Some(1), "the file's p is back");
        set.set([runtime("r", "^a", 0, 4)]);
        set.clear_vhost("/");
        assert_eq!(set.runtime().count(), 0);
        assert_eq!(ttl(&set, "a"), Some(1));
    }

    #[test]
    fn a_runtime_policy_is_refused_with_rabbitmqs_reason_alone() {
        let def = PolicyDef {
            vhost: "/".into(),
            name: "p".into(),
            pattern: "^a".into(),
            apply_to: "everything".into(),
            priority: 0,
            definition: json!({ "message-ttl": 1 }),
        };
        let refused = Policy::from_def(&def).expect_err("bad apply-to");
        assert!(
            refused.starts_with("apply-to 'everything' unrecognised"),
            "{refused}"
        );
    }

    fn definition(definition: Value) -> PolicyDefinition {
        let set = policies(json!([{ "name": "p", "pattern": ".*", "definition": definition }]));
        match set.iter().next() {
            Some(policy) => policy.definition.clone(),
            None => panic!("no policy"),
        }
    }

    fn name_of(policy: Option<&Policy>) -> Option<&str> {
        policy.map(|p| p.name.as_str())
    }

    fn table(entries: &[(&str, V)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> V {
        V::LongString(LongString::from(text.as_bytes().to_vec()))
    }

    /// A queue declared with these arguments, under a policy with this definition.
    fn apply(entries: &[(&str, V)], policy: Option<Value>) -> QueueArguments {
        let args = table(entries);
        let declared = match arguments::parse_stored(&args, "q", "/", None) {
            Ok(declared) => declared,
            Err(e) => panic!("unexpected error: {}", e.reply_text()),
        };
        let policy = policy.map(definition);
        effective(&declared, &args, policy.as_ref())
    }

    fn quorum(mut entries: Vec<(&'static str, V)>) -> Vec<(&'static str, V)> {
        entries.push(("x-queue-type", s("quorum")));
        entries
    }

    #[test]
    fn loads_a_definitions_export_and_ignores_its_other_sections() {
        let export = json!({
            "rabbit_version": "4.2.9",
            "rabbitmq_version": "4.2.9",
            "product_name": "RabbitMQ",
            "users": [{"name": "guest", "password_hash": "x", "tags": ["administrator"]}],
            "vhosts": [{"name": "/"}, {"name": "other"}],
            "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*",
                             "read": ".*"}],
            "topic_permissions": [],
            "parameters": [],
            "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"}],
            "policies": [
                {"vhost": "/", "name": "ttl", "pattern": "^ttl\\.", "apply-to": "queues",
                 "definition": {"message-ttl": 1000}, "priority": 0},
                {"vhost": "other", "name": "limits", "pattern": ".*", "apply-to": "all",
                 "definition": {"max-length": 10, "overflow": "reject-publish"}, "priority": 5}
            ],
            "queues": [{"name": "ttl.a", "vhost": "/", "durable": true, "auto_delete": false,
                        "arguments": {"x-queue-type": "classic"}}],
            "exchanges": [{"name": "x", "vhost": "/", "type": "topic", "durable": true,
                           "auto_delete": false, "internal": false, "arguments": {}}],
            "bindings": [{"source": "x", "vhost": "/", "destination": "ttl.a",
                          "destination_type": "queue", "routing_key": "#", "arguments": {}}]
        });
        let set = match Policies::from_json(&export.to_string(), Path::new(FILE)) {
            Ok(set) => set,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(set.len(), 2);
        let ttl = set.for_queue("/", "ttl.a", QueueType::Classic);
        assert_eq!(name_of(ttl), Some("ttl"));
        assert_eq!(ttl.map(|p| p.definition.message_ttl), Some(Some(1000)));
        let limits = set.for_queue("other", "anything", QueueType::Quorum);
        assert_eq!(name_of(limits), Some("limits"));
        assert_eq!(
            limits.map(|p| (p.definition.max_length, p.definition.overflow)),
            Some((Some(10), Some(Overflow::RejectPublish)))
        );
        assert_eq!(limits.map(|p| p.apply_to), Some(ApplyTo::All));
        assert_eq!(limits.map(|p| p.priority), Some(5));
        // Vhosts do not mix.
        assert!(set.for_queue("/", "anything", QueueType::Classic).is_none());
        assert!(
            set.for_queue("other", "ttl.a", QueueType::Classic)
                .is_some()
        );
        assert!(
            set.for_queue("nowhere", "ttl.a", QueueType::Classic)
                .is_none()
        );
    }

    #[test]
    fn a_document_without_policies_holds_none() {
        for text in [r#"{}"#, r#"{"policies": null}"#, r#"{"policies": []}"#] {
            match Policies::from_json(text, Path::new(FILE)) {
                Ok(set) => assert!(set.is_empty(), "{text}"),
                Err(e) => panic!("{text}: {e}"),
            }
        }
    }

    #[test]
    fn defaults_follow_rabbitmq_import() {
        // vhost "/" (a single-vhost export), apply-to "all", priority 0.
        let set = policies(json!([{ "name": "p", "pattern": "^a", "definition": {"expires": 5} }]));
        let policy = set.for_exchange("/", "abc");
        assert_eq!(
            policy.map(|p| (p.vhost.as_str(), p.apply_to, p.priority)),
            Some(("/", ApplyTo::All, 0))
        );
        assert!(set.for_queue("/", "abc", QueueType::Classic).is_some());
    }

    #[test]
    fn patterns_match_anywhere_unless_anchored() {
        let set = policies(json!([
            {"name": "anchored", "pattern": "^ttl\\.", "definition": {"message-ttl": 1},
             "priority": 2},
            {"name": "inner", "pattern": "orders", "definition": {"message-ttl": 2}, "priority": 1},
            {"name": "whole", "pattern": "^exact$", "definition": {"message-ttl": 3}}
        ]));
        let find = |name| name_of(set.for_queue("/", name, QueueType::Classic));
        assert_eq!(find("ttl.a"), Some("anchored"));
        assert_eq!(find("ttl."), Some("anchored"));
        assert_eq!(find("x.ttl.a"), None);
        assert_eq!(find("ttlxa"), None);
        assert_eq!(find("my.orders.queue"), Some("inner"));
        assert_eq!(find("exact"), Some("whole"));
        assert_eq!(find("exactly"), None);
        assert_eq!(find(""), None);
        let all =
            policies(json!([{ "name": "all", "pattern": ".*", "definition": {"max-length": 1} }]));
        assert!(all.for_queue("/", "", QueueType::Classic).is_some());
        // An empty pattern matches everything too.
        let empty =
            policies(json!([{ "name": "e", "pattern": "", "definition": {"max-length": 1} }]));
        assert!(empty.for_queue("/", "q", QueueType::Classic).is_some());
    }

    #[test]
    fn the_highest_priority_wins_and_ties_go_to_the_smaller_name() {
        let set = policies(json!([
            {"name": "low", "pattern": ".*", "definition": {"message-ttl": 1}, "priority": -5},
            {"name": "b", "pattern": "^q", "definition": {"message-ttl": 2}, "priority": 3},
            {"name": "a", "pattern": "^q", "definition": {"message-ttl": 3}, "priority": 3},
            {"name": "top", "pattern": "^q\\.top", "definition": {"message-ttl": 4}, "priority": 10}
        ]));
        let find = |name| name_of(set.for_queue("/", name, QueueType::Classic));
        assert_eq!(find("q.top"), Some("top"));
        assert_eq!(find("q.other"), Some("a"));
        assert_eq!(find("x"), Some("low"));
        let order: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(order, ["top", "a", "b", "low"]);
        // Only one policy applies: the winner's keys, not a merge.
        let winner = set.for_queue("/", "q.top", QueueType::Classic);
        assert_eq!(winner.map(|p| p.definition.message_ttl), Some(Some(4)));
    }

    #[test]
    fn apply_to_selects_entity_kinds_and_queue_types() {
        let entry = |apply_to: &str| {
            json!({"name": apply_to, "pattern": ".*", "apply-to": apply_to,
                   "definition": {"max-length": 1}})
        };
        let cases = [
            ("all", true, true, true),
            ("queues", true, true, false),
            ("classic_queues", true, false, false),
            ("quorum_queues", false, true, false),
            ("streams", false, false, false),
            ("exchanges", false, false, true),
        ];
        for (apply_to, classic, quorum, exchange) in cases {
            let set = policies(json!([entry(apply_to)]));
            assert_eq!(
                set.for_queue("/", "q", QueueType::Classic).is_some(),
                classic,
                "{apply_to}"
            );
            assert_eq!(
                set.for_queue("/", "q", QueueType::Quorum).is_some(),
                quorum,
                "{apply_to}"
            );
            assert_eq!(set.for_exchange("/", "x").is_some(), exchange, "{apply_to}");
            assert_eq!(set.iter().next().map(|p| p.apply_to.name()), Some(apply_to));
        }
        let streams = policies(json!([{"name": "s", "pattern": ".*", "apply-to": "streams",
                                       "definition": {"max-age": "7D"}}]));
        assert!(streams.for_queue("/", "s", QueueType::Stream).is_some());
    }

    #[test]
    fn a_policy_with_a_key_the_queue_type_refuses_does_not_apply() {
        // rabbit_queue_type:is_policy_applicable/2: the next policy down applies instead.
        let set = policies(json!([
            {"name": "qq", "pattern": ".*", "priority": 2,
             "definition": {"delivery-limit": 5, "message-ttl": 1}},
            {"name": "cq", "pattern": ".*", "priority": 1,
             "definition": {"queue-mode": "lazy", "message-ttl": 2}},
            {"name": "fallback", "pattern": ".*", "definition": {"message-ttl": 3}}
        ]));
        assert_eq!(
            name_of(set.for_queue("/", "q", QueueType::Quorum)),
            Some("qq")
        );
        assert_eq!(
            name_of(set.for_queue("/", "q", QueueType::Classic)),
            Some("cq")
        );
        let only_typed = policies(json!([
            {"name": "dls", "pattern": ".*",
             "definition": {"dead-letter-strategy": "at-least-once"}},
        ]));
        assert!(only_typed.for_queue("/", "q", QueueType::Classic).is_none());
        assert!(only_typed.for_queue("/", "q", QueueType::Quorum).is_some());
        for key in [
            "max-in-memory-length",
            "max-in-memory-bytes",
            "target-group-size",
            "initial-cluster-size",
        ] {
            let def = definition(json!({ key: 3 }));
            assert!(!def.applies_to(QueueType::Classic), "{key}");
        }
        let master = definition(json!({"queue-master-locator": "balanced"}));
        assert!(master.applies_to(QueueType::Classic));
        assert!(!master.applies_to(QueueType::Quorum));
        let age = definition(json!({"max-age": "1h"}));
        assert!(!age.applies_to(QueueType::Classic));
        assert!(!age.applies_to(QueueType::Quorum));
        assert!(age.applies_to(QueueType::Stream));
        let ttl = definition(json!({"message-ttl": 1}));
        assert!(!ttl.applies_to(QueueType::Stream));
        // Keys both types take.
        let shared = definition(
            json!({"queue-version": 2, "consumer-timeout": 5, "overflow": "drop-head",
                                       "stream-filter-size-bytes": 16}),
        );
        assert!(shared.applies_to(QueueType::Classic));
        assert!(shared.applies_to(QueueType::Quorum));
    }

    #[test]
    fn exchanges_take_policies_whatever_their_keys() {
        let set = policies(json!([
            {"name": "ae", "pattern": "^x", "apply-to": "exchanges",
             "definition": {"alternate-exchange": "unroutable"}},
        ]));
        let policy = set.for_exchange("/", "x.orders");
        assert_eq!(
            policy.and_then(|p| p.definition.alternate_exchange.as_deref()),
            Some("unroutable")
        );
        assert!(set.for_exchange("/", "y").is_none());
        assert!(set.for_exchange("other", "x").is_none());
        let def = policy.map(|p| &p.definition);
        assert_eq!(
            alternate_exchange(&table(&[]), def).as_deref(),
            Some("unroutable")
        );
        // The exchange's own argument wins.
        let own = table(&[("alternate-exchange", s("mine"))]);
        assert_eq!(alternate_exchange(&own, def).as_deref(), Some("mine"));
        assert_eq!(alternate_exchange(&own, None).as_deref(), Some("mine"));
        assert_eq!(alternate_exchange(&table(&[]), None), None);
    }

    #[test]
    fn a_streams_retention_policy_wins_over_its_arguments() {
        let stream = [
            ("x-queue-type", s("stream")),
            ("x-max-length-bytes", V::LongInt(100)),
        ];
        let applied = apply(&stream, Some(json!({"max-length-bytes": 5000})));
        assert_eq!(applied.max_length_bytes, Some(5000));
        assert_eq!(apply(&stream, None).max_length_bytes, Some(100));
        // A classic queue keeps the lower of the two.
        let classic = [("x-max-length-bytes", V::LongInt(100))];
        let applied = apply(&classic, Some(json!({"max-length-bytes": 5000})));
        assert_eq!(applied.max_length_bytes, Some(100));
        assert_eq!(
            definition(json!({"max-age": "2h"})).max_age_ms,
            Some(2 * 3_600_000)
        );
    }

    #[test]
    fn definitions_are_typed() {
        let def = definition(json!({
            "message-ttl": 0, "expires": 1, "max-length": 2, "max-length-bytes": 3,
            "overflow": "reject-publish-dlx", "dead-letter-exchange": "",
            "dead-letter-routing-key": "rk", "consumer-timeout": 4,
            "alternate-exchange": "ae", "queue-mode": "lazy", "queue-version": 1,
            "queue-leader-locator": "client-local"
        }));
        assert_eq!(
            def,
            PolicyDefinition {
                message_ttl: Some(0),
                expires: Some(1),
                max_length: Some(2),
                max_length_bytes: Some(3),
                overflow: Some(Overflow::RejectPublishDlx),
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some("rk".to_owned()),
                dead_letter_strategy: None,
                delivery_limit: None,
                consumer_timeout: Some(4),
                alternate_exchange: Some("ae".to_owned()),
                max_age_ms: None,
                partitions: None,
                ignored: vec![
                    "queue-leader-locator".to_owned(),
                    "queue-mode".to_owned(),
                    "queue-version".to_owned()
                ],
            }
        );
        let quorum = definition(
            json!({"delivery-limit": -1, "dead-letter-strategy": "at-least-once",
                                       "overflow": "drop-head"}),
        );
        assert_eq!(quorum.delivery_limit, Some(-1));
        assert_eq!(
            quorum.dead_letter_strategy,
            Some(DeadLetterStrategy::AtLeastOnce)
        );
        assert_eq!(quorum.overflow, Some(Overflow::DropHead));
        let huge = definition(json!({"delivery-limit": u64::MAX}));
        assert_eq!(huge.delivery_limit, Some(i64::MAX));
        let at_most = definition(
            json!({"dead-letter-strategy": "at-most-once", "overflow": "reject-publish"}),
        );
        assert_eq!(
            at_most.dead_letter_strategy,
            Some(DeadLetterStrategy::AtMostOnce)
        );
        assert_eq!(at_most.overflow, Some(Overflow::RejectPublish));
    }

    #[test]
    fn lower_of_argument_and_policy_for_limits_and_ttls() {
        let cases = [
            ("x-message-ttl", "message-ttl"),
            ("x-expires", "expires"),
            ("x-max-length", "max-length"),
            ("x-max-length-bytes", "max-length-bytes"),
            ("x-consumer-timeout", "consumer-timeout"),
        ];
        let field = |q: &QueueArguments, key: &str| match key {
            "message-ttl" => q.message_ttl,
            "expires" => q.expires,
            "max-length" => q.max_length,
            "max-length-bytes" => q.max_length_bytes,
            _ => q.consumer_timeout,
        };
        for (arg, key) in cases {
            for queue_type in ["classic", "quorum"] {
                let with = |value: Option<i32>, policy: Option<u64>| {
                    let mut entries = vec![("x-queue-type", s(queue_type))];
                    if let Some(v) = value {
                        entries.push((arg, V::LongInt(v)));
                    }
                    let q = apply(&entries, policy.map(|p| json!({ key: p })));
                    field(&q, key)
                };
                assert_eq!(with(Some(500), Some(1000)), Some(500), "{key} {queue_type}");
                assert_eq!(
                    with(Some(5000), Some(1000)),
                    Some(1000),
                    "{key} {queue_type}"
                );
                assert_eq!(with(None, Some(1000)), Some(1000), "{key} {queue_type}");
                assert_eq!(with(Some(700), None), Some(700), "{key} {queue_type}");
                assert_eq!(with(None, None), None, "{key} {queue_type}");
            }
        }
        // A zero TTL from either side wins.
        let q = apply(
            &[("x-message-ttl", V::LongInt(0))],
            Some(json!({"message-ttl": 10})),
        );
        assert_eq!(q.message_ttl, Some(0));
    }

    #[test]
    fn the_queue_argument_wins_for_dead_lettering() {
        for queue_type in ["classic", "quorum"] {
            let policy = json!({"dead-letter-exchange": "pdlx", "dead-letter-routing-key": "prk"});
            let q = apply(
                &[
                    ("x-queue-type", s(queue_type)),
                    ("x-dead-letter-exchange", s("adlx")),
                    ("x-dead-letter-routing-key", s("ark")),
                ],
                Some(policy.clone()),
            );
            assert_eq!(q.dead_letter_exchange.as_deref(), Some("adlx"));
            assert_eq!(q.dead_letter_routing_key.as_deref(), Some("ark"));
            // Each key on its own: an argument exchange, the policy's routing key.
            let q = apply(
                &[
                    ("x-queue-type", s(queue_type)),
                    ("x-dead-letter-exchange", s("")),
                ],
                Some(policy.clone()),
            );
            assert_eq!(q.dead_letter_exchange.as_deref(), Some(""));
            assert_eq!(q.dead_letter_routing_key.as_deref(), Some("prk"));
            let q = apply(&[("x-queue-type", s(queue_type))], Some(policy));
            assert_eq!(q.dead_letter_exchange.as_deref(), Some("pdlx"));
            assert_eq!(q.dead_letter_routing_key.as_deref(), Some("prk"));
        }
    }

    #[test]
    fn classic_overflow_the_argument_wins_even_when_it_is_the_default() {
        let policy = || Some(json!({"overflow": "reject-publish"}));
        assert_eq!(apply(&[], policy()).overflow, Overflow::RejectPublish);
        assert_eq!(
            apply(&[("x-overflow", s("drop-head"))], policy()).overflow,
            Overflow::DropHead
        );
        assert_eq!(
            apply(&[("x-overflow", s("reject-publish-dlx"))], policy()).overflow,
            Overflow::RejectPublishDlx
        );
        assert_eq!(
            apply(&[], Some(json!({"overflow": "reject-publish-dlx"}))).overflow,
            Overflow::RejectPublishDlx
        );
        assert_eq!(
            apply(&[], Some(json!({"max-length": 1}))).overflow,
            Overflow::DropHead
        );
    }

    #[test]
    fn quorum_overflow_the_policy_wins() {
        let q = apply(
            &quorum(vec![("x-overflow", s("drop-head"))]),
            Some(json!({"overflow": "reject-publish"})),
        );
        assert_eq!(q.overflow, Overflow::RejectPublish);
        let q = apply(
            &quorum(vec![("x-overflow", s("reject-publish"))]),
            Some(json!({"overflow": "drop-head"})),
        );
        assert_eq!(q.overflow, Overflow::DropHead);
        // reject-publish-dlx is refused for the default, not for the argument.
        let q = apply(
            &quorum(vec![("x-overflow", s("reject-publish"))]),
            Some(json!({"overflow": "reject-publish-dlx"})),
        );
        assert_eq!(q.overflow, Overflow::DropHead);
        let q = apply(
            &quorum(vec![("x-overflow", s("reject-publish"))]),
            Some(json!({"max-length": 1})),
        );
        assert_eq!(q.overflow, Overflow::RejectPublish);
    }

    #[test]
    fn quorum_delivery_limit_resolution() {
        let limit = |arg: Option<i64>, policy: Option<i64>| {
            let mut entries = quorum(vec![]);
            if let Some(a) = arg {
                entries.push(("x-delivery-limit", V::LongLongInt(a)));
            }
            apply(&entries, policy.map(|p| json!({ "delivery-limit": p }))).delivery_limit
        };
        // Neither: RabbitMQ 4's default of 20.
        assert_eq!(limit(None, None), Some(20));
        assert_eq!(limit(None, Some(100)), Some(100));
        assert_eq!(limit(Some(100), None), Some(100));
        assert_eq!(limit(Some(20), Some(100)), Some(20));
        assert_eq!(limit(Some(100), Some(5)), Some(5));
        assert_eq!(limit(Some(0), Some(5)), Some(0));
        // Negative is unlimited, and a limit beats it.
        assert_eq!(limit(None, Some(-1)), None);
        assert_eq!(limit(Some(-1), None), None);
        assert_eq!(limit(Some(-1), Some(7)), Some(7));
        assert_eq!(limit(Some(7), Some(-1)), Some(7));
        assert_eq!(limit(Some(-1), Some(-5)), None);
        // A non-integer argument counts as absent.
        let q = apply(
            &quorum(vec![("x-delivery-limit", s("5"))]),
            Some(json!({"delivery-limit": 9})),
        );
        assert_eq!(q.delivery_limit, Some(9));
        // Classic queues take no delivery limit, even from a definition built by hand.
        let def = PolicyDefinition {
            delivery_limit: Some(3),
            ..PolicyDefinition::default()
        };
        let args = table(&[]);
        let declared = QueueArguments::default();
        assert_eq!(effective(&declared, &args, Some(&def)).delivery_limit, None);
    }

    #[test]
    fn quorum_dead_letter_strategy_argument_wins_and_needs_an_exchange_and_reject_publish() {
        let strategy = |entries: Vec<(&'static str, V)>, policy: Value| {
            apply(&quorum(entries), Some(policy)).dead_letter_strategy
        };
        // Declared at-least-once without an exchange: the policy's exchange completes it.
        assert_eq!(
            strategy(
                vec![
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-overflow", s("reject-publish"))
                ],
                json!({"dead-letter-exchange": "dlx"})
            ),
            DeadLetterStrategy::AtLeastOnce
        );
        // The policy's strategy, with the policy's overflow.
        assert_eq!(
            strategy(
                vec![("x-dead-letter-exchange", s("dlx"))],
                json!({"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"})
            ),
            DeadLetterStrategy::AtLeastOnce
        );
        // The argument's at-most-once wins over the policy's at-least-once.
        assert_eq!(
            strategy(
                vec![
                    ("x-dead-letter-exchange", s("dlx")),
                    ("x-dead-letter-strategy", s("at-most-once"))
                ],
                json!({"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"})
            ),
            DeadLetterStrategy::AtMostOnce
        );
        // The policy's drop-head overflow breaks a declared at-least-once.
        assert_eq!(
            strategy(
                vec![
                    ("x-dead-letter-exchange", s("dlx")),
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-overflow", s("reject-publish"))
                ],
                json!({"overflow": "drop-head"})
            ),
            DeadLetterStrategy::AtMostOnce
        );
        // No exchange anywhere.
        assert_eq!(
            strategy(
                vec![("x-overflow", s("reject-publish"))],
                json!({"dead-letter-strategy": "at-least-once"})
            ),
            DeadLetterStrategy::AtMostOnce
        );
    }

    #[test]
    fn no_policy_leaves_the_declared_settings() {
        for entries in [
            vec![],
            quorum(vec![]),
            quorum(vec![("x-overflow", s("reject-publish-dlx"))]),
            vec![
                ("x-overflow", s("reject-publish")),
                ("x-message-ttl", V::LongInt(5)),
            ],
        ] {
            let args = table(&entries);
            let declared = match arguments::parse_stored(&args, "q", "/", None) {
                Ok(d) => d,
                Err(e) => panic!("{}", e.reply_text()),
            };
            assert_eq!(effective(&declared, &args, None), declared);
        }
    }

    #[test]
    fn partitions_is_a_count_from_1_to_4096_for_classic_and_quorum_queues() {
        assert_eq!(definition(json!({"partitions": 1})).partitions, Some(1));
        let most = definition(json!({"partitions": 4096}));
        assert_eq!(most.partitions, Some(4096));
        assert_eq!(most.keys().collect::<Vec<_>>(), ["partitions"]);
        assert!(most.applies_to(QueueType::Classic));
        assert!(most.applies_to(QueueType::Quorum));
        assert!(!most.applies_to(QueueType::Stream));
        for (value, shown) in [
            (json!(0), "0"),
            (json!(4097), "4097"),
            (json!(-1), "-1"),
            (json!("4"), "<<\"4\">>"),
            (json!(4.0), "4.0"),
        ] {
            assert_eq!(
                refused_definition(json!({ "partitions": value })),
                (
                    "partitions".to_owned(),
                    format!("{shown} is not a valid partition count")
                )
            );
        }
    }

    #[test]
    fn partitions_are_read_at_creation_only_and_the_argument_wins() {
        let set = policies(json!([
            {"name": "four", "pattern": "^orders$", "definition": {"partitions": 4}},
        ]));
        // At creation: the policy's count, unless the queue declares its own.
        let at_creation = set.partitions_at_creation("/", "orders", QueueType::Classic);
        assert_eq!(at_creation, Some(4));
        assert_eq!(
            set.partitions_at_creation("/", "orders", QueueType::Quorum),
            Some(4)
        );
        assert_eq!(
            set.partitions_at_creation("/", "other", QueueType::Classic),
            None
        );
        let declared = |entries: &[(&str, V)]| {
            let args = table(entries);
            let declare = crate::queue::QueueDeclare {
                name: "orders".into(),
                server_named: false,
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: args.clone(),
            };
            match arguments::parse(&args, &declare, "/", at_creation) {
                Ok(parsed) => (parsed, args),
                Err(e) => panic!("unexpected error: {}", e.reply_text()),
            }
        };
        let (by_policy, args) = declared(&[]);
        assert_eq!(by_policy.partitions, Some(4));
        let (by_argument, _) = declared(&[("x-partitions", V::LongInt(8))]);
        assert_eq!(by_argument.partitions, Some(8));
        // Afterwards a policy never re-partitions, whatever it says, and its other keys
        // still apply.
        for later in [
            json!({"partitions": 16}),
            json!({"partitions": 16, "max-length": 5}),
        ] {
            let later = definition(later);
            let applied = effective(&by_policy, &args, Some(&later));
            assert_eq!(applied.partitions, Some(4));
            assert_eq!(applied.max_length, later.max_length);
            assert_eq!(
                effective(&by_argument, &args, Some(&later)).partitions,
                Some(8)
            );
        }
        // Nor does losing the policy un-partition it.
        assert_eq!(effective(&by_policy, &args, None).partitions, Some(4));
        let plain = QueueArguments::default();
        let later = definition(json!({"partitions": 16}));
        assert_eq!(effective(&plain, &args, Some(&later)).partitions, None);
    }

    #[test]
    fn a_later_policy_asking_for_other_partitions_is_reported() {
        let set = policies(json!([
            {"name": "four", "pattern": "^orders$", "definition": {"partitions": 4}},
            {"name": "ttl", "pattern": "^plain$", "definition": {"message-ttl": 5}},
        ]));
        let ignored = |name, current| {
            set.ignored_partitions("/", name, QueueType::Classic, current)
                .map(|(policy, wanted)| (policy.name.as_str(), wanted))
        };
        assert_eq!(ignored("orders", None), Some(("four", 4)));
        assert_eq!(ignored("orders", Some(8)), Some(("four", 4)));
        assert_eq!(ignored("orders", Some(4)), None);
        // A policy without `partitions` asks for nothing.
        assert_eq!(ignored("plain", Some(4)), None);
        assert_eq!(ignored("nothing", Some(4)), None);
    }

    #[test]
    fn invalid_values_are_refused_with_rabbitmq_texts() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"message-ttl": -1}),
                "message-ttl",
                "-1 is not a valid message TTL",
            ),
            (
                json!({"message-ttl": "1000"}),
                "message-ttl",
                "<<\"1000\">> is not a valid message TTL",
            ),
            (
                json!({"message-ttl": 1000.0}),
                "message-ttl",
                "1.0e3 is not a valid message TTL",
            ),
            (
                json!({"message-ttl": 1.5}),
                "message-ttl",
                "1.5 is not a valid message TTL",
            ),
            (
                json!({"expires": 0}),
                "expires",
                "0 is not a valid queue expiry",
            ),
            (
                json!({"max-length": -2}),
                "max-length",
                "-2 is not a valid maximum length",
            ),
            (
                json!({"max-length-bytes": true}),
                "max-length-bytes",
                "true is not a valid maximum length in bytes",
            ),
            (
                json!({"overflow": "drop-tail"}),
                "overflow",
                "<<\"drop-tail\">> is not a valid overflow value",
            ),
            (
                json!({"dead-letter-exchange": 1}),
                "dead-letter-exchange",
                "1 is not a valid dead letter exchange name",
            ),
            (
                json!({"dead-letter-routing-key": null}),
                "dead-letter-routing-key",
                "null is not a valid dead letter routing key",
            ),
            (
                json!({"dead-letter-strategy": "once"}),
                "dead-letter-strategy",
                "<<\"once\">> is not a valid dead letter strategy",
            ),
            (
                json!({"delivery-limit": "5"}),
                "delivery-limit",
                "<<\"5\">> is not a valid delivery limit",
            ),
            (
                json!({"consumer-timeout": -1}),
                "consumer-timeout",
                "-1 is not a valid consumer timeout",
            ),
            (
                json!({"alternate-exchange": ["a"]}),
                "alternate-exchange",
                "[<<\"a\">>] is not a valid alternate exchange name",
            ),
            (
                json!({"queue-mode": "fast"}),
                "queue-mode",
                "<<\"fast\">> is not a valid queue-mode value",
            ),
            (
                json!({"queue-version": 3}),
                "queue-version",
                "3 is not a valid queue-version value",
            ),
            (
                json!({"max-in-memory-length": -1}),
                "max-in-memory-length",
                "-1 is not a valid maximum memory in bytes",
            ),
            (
                json!({"max-age": "0D"}),
                "max-age",
                "<<\"0D\">> is not a valid max age",
            ),
            (
                json!({"max-age": "10"}),
                "max-age",
                "<<\"10\">> is not a valid max age",
            ),
            (
                json!({"max-age": 10}),
                "max-age",
                "10 is not a valid max age",
            ),
            (
                json!({"queue-leader-locator": "min-masters"}),
                "queue-leader-locator",
                "<<\"min-masters\">> is not a valid queue leader locator value",
            ),
            (
                json!({"queue-master-locator": "x"}),
                "queue-master-locator",
                "<<\"x\">> is not a valid master locator",
            ),
            (
                json!({"initial-cluster-size": -1}),
                "initial-cluster-size",
                "-1 is not a valid cluster size",
            ),
            (
                json!({"stream-filter-size-bytes": 15}),
                "stream-filter-size-bytes",
                "15 is not a valid filter size. Valid range is 16-255",
            ),
            (
                json!({"stream-max-segment-size-bytes": 3_000_000_001_u64}),
                "stream-max-segment-size-bytes",
                "3000000001 is not a valid segment size",
            ),
            (
                json!({"target-group-size": 0}),
                "target-group-size",
                "0 is not a valid qq target count value",
            ),
            (
                json!({"message-ttl": {"a": 1, "b": "é"}}),
                "message-ttl",
                "#{<<\"a\">> => 1,<<\"b\">> => <<\"é\"/utf8>>} is not a valid message TTL",
            ),
        ];
        for (def, key, reason) in cases {
            assert_eq!(
                refused_definition(def.clone()),
                (key.to_owned(), reason.to_owned()),
                "{def}"
            );
        }
        // Boundaries that pass.
        let ok = definition(
            json!({"expires": 1, "max-age": "1Y", "stream-filter-size-bytes": 255,
                                   "stream-max-segment-size-bytes": 3_000_000_000_u64,
                                   "queue-master-locator": "min-masters",
                                   "queue-leader-locator": "least-leaders",
                                   "delivery-limit": -10, "target-group-size": 1}),
        );
        assert_eq!(ok.expires, Some(1));
    }

    #[test]
    fn the_first_invalid_key_in_key_order_is_reported() {
        assert_eq!(
            refused_definition(json!({"message-ttl": -1, "expires": 0})),
            (
                "expires".to_owned(),
                "0 is not a valid queue expiry".to_owned()
            )
        );
        // Unknown keys are reported only once the known ones pass.
        assert_eq!(
            refused_definition(json!({"ha-mode": "all", "max-length": -1})).0,
            "max-length"
        );
    }

    #[test]
    fn unknown_keys_are_refused_together() {
        assert_eq!(
            refused_definition(json!({"max-priority": 10})),
            (
                "max-priority".to_owned(),
                "[{<<\"max-priority\">>,10}] are not recognised policy settings".to_owned()
            )
        );
        assert_eq!(
            refused_definition(json!({"federation-upstream": "u", "federation-upstream-set": "all",
                                      "message-ttl": 5})),
            (
                "federation-upstream".to_owned(),
                "[{<<\"federation-upstream\">>,<<\"u\">>},{<<\"federation-upstream-set\">>,<<\"all\">>}] \
                 are not recognised policy settings"
                    .to_owned()
            )
        );
        assert_eq!(
            refused_definition(json!({"x-message-ttl": 5})).1,
            "[{<<\"x-message-ttl\">>,5}] are not recognised policy settings"
        );
    }

    #[test]
    fn malformed_definitions_are_refused() {
        assert_eq!(
            refused_definition(json!({})),
            ("definition".to_owned(), "no policy provided".to_owned())
        );
        assert_eq!(
            refused_definition(json!("message-ttl")),
            (
                "definition".to_owned(),
                "definition must be a dictionary: <<\"message-ttl\">>".to_owned()
            )
        );
        assert_eq!(
            refused_definition(json!([["message-ttl", 1]])).1,
            "definition must be a dictionary: [[<<\"message-ttl\">>,1]]"
        );
    }

    fn field_error(entry: Value) -> (String, String) {
        match refused(json!([entry])) {
            PolicyError::Invalid { key, reason, .. } => (key, reason),
            other => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn fields_are_validated() {
        let def = json!({"max-length": 1});
        assert_eq!(
            field_error(json!({"name": "p", "definition": def})),
            (
                "pattern".to_owned(),
                "Key \"pattern\" not found in p".to_owned()
            )
        );
        assert_eq!(
            field_error(json!({"name": "p", "pattern": 5, "definition": def})),
            (
                "pattern".to_owned(),
                "pattern should be a binary but was 5".to_owned()
            )
        );
        let (key, reason) = field_error(json!({"name": "p", "pattern": "^(a", "definition": def}));
        assert_eq!(key, "pattern");
        assert_eq!(
            reason,
            "pattern should be regular expression but is invalid: unclosed group"
        );
        let long = "a".repeat(1025);
        assert_eq!(
            field_error(json!({"name": "p", "pattern": long, "definition": def})),
            (
                "pattern".to_owned(),
                "pattern must not exceed 1024 bytes".to_owned()
            )
        );
        let longest = "a".repeat(1024);
        assert_eq!(
            policies(json!([{"name": "p", "pattern": longest, "definition": def}])).len(),
            1
        );
        assert_eq!(
            field_error(
                json!({"name": "p", "pattern": ".*", "apply-to": "both", "definition": def})
            ),
            (
                "apply-to".to_owned(),
                "apply-to 'both' unrecognised; should be one of: 'queues', 'classic_queues',  \
                 'quorum_queues', 'streams', 'exchanges', or 'all'"
                    .to_owned()
            )
        );
        assert_eq!(
            field_error(json!({"name": "p", "pattern": ".*", "priority": "1", "definition": def})),
            (
                "priority".to_owned(),
                "priority should be a number, actually was <<\"1\">>".to_owned()
            )
        );
        assert_eq!(
            field_error(json!({"name": "p", "pattern": ".*", "priority": 1.5, "definition": def})),
            (
                "priority".to_owned(),
                "priority should be an integer, actually was 1.5".to_owned()
            )
        );
        assert_eq!(
            field_error(json!({"name": "p", "pattern": ".*"})),
            (
                "definition".to_owned(),
                "Key \"definition\" not found in p".to_owned()
            )
        );
    }

    #[test]
    fn errors_name_the_file_the_policy_and_the_key() {
        let error = refused(json!([
            {"vhost": "v", "name": "ttl", "pattern": ".*", "definition": {"message-ttl": -1}}
        ]));
        assert_eq!(
            error.to_string(),
            "policy file policies.json: policy 'ttl' in vhost 'v': invalid 'message-ttl': \
             -1 is not a valid message TTL"
        );
        let error = refused(json!([{"pattern": ".*", "definition": {"message-ttl": 1}}]));
        assert_eq!(
            error.to_string(),
            "policy file policies.json: policy in virtual host '/' has undefined name \
             (entry 0 of \"policies\")"
        );
        let error = refused(json!([
            {"name": "a", "pattern": ".*", "definition": {"message-ttl": 1}},
            {"name": "a", "vhost": "other", "pattern": ".*", "definition": {"message-ttl": 1}},
            {"name": "a", "vhost": "/", "pattern": "^b", "definition": {"message-ttl": 2}}
        ]));
        assert_eq!(
            error.to_string(),
            "policy file policies.json: policy 'a' in vhost '/' is defined more than once"
        );
        let error = refused(json!(["p"]));
        assert_eq!(
            error.to_string(),
            "policy file policies.json: entry 0 of \"policies\" is not an object: <<\"p\">>"
        );
        let error = refused(json!([{"name": "a", "vhost": 1, "pattern": ".*", "definition": {}}]));
        assert!(error.to_string().contains("invalid vhost: 1"), "{error}");
        for (text, expected) in [
            ("[]", "policy file policies.json: expected a JSON object"),
            (
                r#"{"policies": {}}"#,
                "policy file policies.json: \"policies\" must be an array, not #{}",
            ),
            ("{", "policy file policies.json: not valid JSON: "),
        ] {
            match Policies::from_json(text, Path::new(FILE)) {
                Ok(_) => panic!("accepted {text}"),
                Err(e) => assert!(e.to_string().starts_with(expected), "{e}"),
            }
        }
    }

    /// A file under the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "warren-policy-{}-{}.json",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(e) = std::fs::write(&path, contents) {
                panic!("cannot write {}: {e}", path.display());
            }
            Self(path)
        }

        fn write(&self, contents: &str) {
            if let Err(e) = std::fs::write(&self.0, contents) {
                panic!("cannot write {}: {e}", self.0.display());
            }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let file = TempFile::new(
            &json!({"policies": [{"name": "p", "pattern": ".*", "definition": {"max-length": 3}}]})
                .to_string(),
        );
        match Policies::load(&file.0) {
            Ok(set) => assert_eq!(set.len(), 1),
            Err(e) => panic!("{e}"),
        }
        file.write(
            r#"{"policies": [{"name": "p", "pattern": ".*", "definition": {"expires": 0}}]}"#,
        );
        match Policies::load(&file.0) {
            Ok(_) => panic!("accepted"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(&file.0.display().to_string()), "{text}");
                assert!(text.contains("'expires'"), "{text}");
            }
        }
        let missing = file.0.with_extension("missing");
        match Policies::load(&missing) {
            Err(PolicyError::Read { path, .. }) => assert_eq!(path, missing),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn a_rejected_reload_keeps_the_current_policies() {
        let file = TempFile::new(
            &json!({"policies": [{"name": "old", "pattern": ".*", "definition": {"max-length": 3}}]})
                .to_string(),
        );
        let mut set = match Policies::load(&file.0) {
            Ok(set) => set,
            Err(e) => panic!("{e}"),
        };
        file.write(
            r#"{"policies": [{"name": "new", "pattern": "(", "definition": {"max-length": 1}}]}"#,
        );
        assert!(set.reload(&file.0).is_err());
        assert_eq!(
            name_of(set.for_queue("/", "q", QueueType::Classic)),
            Some("old")
        );
        file.write(
            r#"{"policies": [{"name": "new", "pattern": ".*", "definition": {"max-length": 1}}]}"#,
        );
        assert!(set.reload(&file.0).is_ok());
        assert_eq!(
            name_of(set.for_queue("/", "q", QueueType::Classic)),
            Some("new")
        );
        file.write("{}");
        assert!(set.reload(&file.0).is_ok());
        assert!(set.is_empty());
    }

    #[test]
    fn values_print_as_erlang_terms() {
        assert_eq!(erlang::json(&json!("a\"b\\c\n")), r#"<<"a\"b\\c\n">>"#);
        assert_eq!(erlang::json(&json!("")), "<<>>");
        assert_eq!(erlang::json(&json!("\u{1}")), "<<1>>");
        assert_eq!(erlang::json(&json!("日")), "<<230,151,165>>");
        assert_eq!(erlang::json(&json!("é")), "<<\"é\"/utf8>>");
        assert_eq!(erlang::json(&json!(null)), "null");
        assert_eq!(erlang::json(&json!([1, false, {}])), "[1,false,#{}]");
        assert_eq!(erlang::json(&json!(u64::MAX)), u64::MAX.to_string());
        for (x, shown) in [
            (0.5, "0.5"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (0.00012, "1.2e-4"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(erlang::float(x), shown);
        }
    }
}
