//! The broker's administration operations, as `rabbitmqctl` and the management API have
//! them: users, virtual hosts, permissions, topic permissions and definitions. `warren
//! ctl` ([`crate::ctl`]) and, later, the HTTP API call these; each change is stored in
//! the definitions and applies to open connections at their next method.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::access::limits::{LimitKind, USER_LIMITS, VHOST_LIMITS};
use crate::access::password::{Algorithm, PasswordHash};
use crate::access::rabbit_json::{
    ImportError, OPERATOR_POLICY, RabbitBinding, RabbitDefinitions, RabbitExchange,
    RabbitParameter, RabbitPolicy, RabbitQueue, RabbitUser, RabbitVhost, Tags, table_from_json,
    table_to_json,
};
use crate::access::{Access, AccessDefinitions, AccessError};
use crate::broker::Broker;
use crate::exchange::{ExchangeSettings, parse_declared_type};
use crate::policy::Policy;
use crate::queue::QueueDeclare;
use crate::store::definitions::{
    Change, GlobalParameterDef, PermissionDef, PolicyDef, TopicPermissionDef, VhostDef,
};
use crate::vhost::VHost;

/// Why an administration operation was refused, worded as `rabbitmqctl` words it.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `add_user` of a user that exists.
    #[error("user_already_exists: {0}")]
    UserExists(String),
    /// A user that does not exist.
    #[error("no_such_user: {0}")]
    NoSuchUser(String),
    /// `add_vhost` of a vhost that exists.
    #[error("vhost_already_exists: {0}")]
    VhostExists(String),
    /// A vhost that does not exist.
    #[error("no_such_vhost: {0}")]
    NoSuchVhost(String),
    /// A permission pattern or stored hash is unusable.
    #[error(transparent)]
    Access(AccessError),
    /// A definitions file could not be read.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Limits that are not numbers, or name an unknown limit, in RabbitMQ's words.
    #[error("{0}")]
    Limits(String),
    /// Limits given as text that is not JSON.
    #[error("cannot read the limits as JSON: {0}")]
    LimitsNotJson(String),
    /// A policy RabbitMQ would refuse; its reason.
    #[error("Validation failed\n\n{0}")]
    InvalidPolicy(String),
    /// `clear_policy` of a policy that is not set (or of an operator policy or global
    /// parameter).
    #[error("Parameter does not exist")]
    NoSuchPolicy,
    /// Exchanges, queues or bindings that could not be declared (the rest were).
    #[error("{}", .0.join("; "))]
    Topology(Vec<String>),
}

impl From<AccessError> for AdminError {
    /// Missing users and vhosts in `rabbitmqctl`'s words; the rest as the registry says.
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NoSuchUser(name) => Self::NoSuchUser(name),
            AccessError::NoSuchVhost(name) => Self::NoSuchVhost(name),
            other => Self::Access(other),
        }
    }
}

/// Reads limits given as JSON text (`warren ctl set_vhost_limits`) of `kind`.
fn parse_limits(json: &str, kind: &LimitKind) -> Result<BTreeMap<String, i64>, AdminError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| AdminError::LimitsNotJson(e.to_string()))?;
    kind.parse(&value).map_err(AdminError::Limits)
}

/// Sets `name` in `limits` to `value`, or removes it.
fn set_limit(limits: &mut BTreeMap<String, i64>, name: &str, value: Option<i64>) {
    match value {
        Some(value) => {
            limits.insert(name.to_owned(), value);
        }
        None => {
            limits.remove(name);
        }
    }
}

/// The password of a user made or changed by the management API.
#[derive(Debug, Clone)]
pub enum UserPassword {
    /// A clear password, hashed with SHA-256.
    Clear(String),
    /// A hash as RabbitMQ stores one (salt and digest, base64).
    Hash {
        /// The hash.
        hash: String,
        /// Its algorithm (`rabbit_password_hashing_sha256` …); SHA-256 when absent.
        hashing_algorithm: Option<String>,
    },
    /// None: the user cannot log in with a password (certificates only).
    None,
}

/// A user as `list_users` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// Its name.
    pub user: String,
    /// Its tags.
    pub tags: Vec<String>,
}

impl Broker {
    /// Creates a user with `password` (hashed with SHA-256) and `tags`.
    ///
    /// # Errors
    /// The user exists.
    pub fn add_user(
        &self,
        name: &str,
        password: &str,
        tags: Vec<String>,
    ) -> Result<(), AdminError> {
        self.change_access(|access| {
            if access.user(name).is_some() {
                return Err(AdminError::UserExists(name.to_owned()));
            }
            Ok(vec![
                access.put_user(Access::new_user(name, password, tags))?,
            ])
        })
    }

    /// Deletes a user and its permissions; its connections are closed (320).
    ///
    /// # Errors
    /// No such user.
    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        self.change_access(|access| Ok::<_, AdminError>(vec![access.delete_user(name)?]))?;
        self.user_deleted();
        Ok(())
    }

    /// Creates or replaces a user (the management API's `PUT /api/users/{name}`): its
    /// password as given, and its tags; true if it was created.
    ///
    /// # Errors
    /// A stored hash that cannot be read, or an algorithm Warren does not know.
    pub fn put_user(
        &self,
        name: &str,
        password: UserPassword,
        tags: Vec<String>,
    ) -> Result<bool, AdminError> {
        let mut created = false;
        self.change_access(|access| {
            let existing = access.user(name).map(|u| u.def().clone());
            created = existing.is_none();
            let mut def = existing.unwrap_or_else(|| Access::new_user(name, "", Vec::new()));
            match password {
                UserPassword::Clear(password) => {
                    let hash = PasswordHash::new(Algorithm::default(), &password);
                    def.password_hash = hash.to_base64();
                    def.hashing_algorithm = hash.algorithm().name().to_owned();
                }
                UserPassword::Hash {
                    hash,
                    hashing_algorithm,
                } => {
                    def.password_hash = hash;
                    if let Some(algorithm) = hashing_algorithm {
                        def.hashing_algorithm = algorithm;
                    }
                }
                UserPassword::None => def.password_hash.clear(),
            }
            def.tags = tags;
            Ok::<_, AdminError>(vec![access.put_user(def)?])
        })?;
        Ok(created)
    }

    /// Creates a vhost or changes its description and tags; true if it was created.
    ///
    /// # Errors
    /// Never, today; typed for the store's failures to come.
    pub fn put_vhost(
        &self,
        name: &str,
        description: Option<&str>,
        tags: Option<Vec<String>>,
    ) -> Result<bool, AdminError> {
        let vhost = self.vhost(name).is_none().then(|| self.new_vhost(name));
        let mut created = false;
        self.change_access(|access| {
            let existing = access.vhost(name).cloned();
            created = existing.is_none();
            let mut def = existing.unwrap_or_else(|| VhostDef {
                name: name.to_owned(),
                description: String::new(),
                tags: Vec::new(),
                limits: BTreeMap::new(),
            });
            if let Some(description) = description {
                description.clone_into(&mut def.description);
            }
            if let Some(tags) = tags {
                def.tags = tags;
            }
            Ok::<_, AdminError>(vec![access.put_vhost(def)])
        })?;
        if created && let Some(vhost) = vhost {
            self.register_vhost(vhost);
        }
        Ok(created)
    }

    /// Gives a user a new password.
    ///
    /// # Errors
    /// No such user.
    pub fn change_password(&self, name: &str, password: &str) -> Result<(), AdminError> {
        self.change_access(|access| {
            let mut def = access
                .user(name)
                .map(|u| u.def().clone())
                .ok_or_else(|| AdminError::NoSuchUser(name.to_owned()))?;
            let hash = PasswordHash::new(Algorithm::default(), password);
            def.password_hash = hash.to_base64();
            def.hashing_algorithm = hash.algorithm().name().to_owned();
            Ok(vec![access.put_user(def)?])
        })
    }

    /// Replaces a user's tags.
    ///
    /// # Errors
    /// No such user.
    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        self.change_access(|access| {
            let mut def = access
                .user(name)
                .map(|u| u.def().clone())
                .ok_or_else(|| AdminError::NoSuchUser(name.to_owned()))?;
            def.tags = tags;
            Ok(vec![access.put_user(def)?])
        })
    }

    /// Every user with its tags, by name.
    pub fn list_users(&self) -> Vec<UserInfo> {
        self.access()
            .export()
            .users
            .into_iter()
            .map(|u| UserInfo {
                user: u.name,
                tags: u.tags,
            })
            .collect()
    }

    /// Creates a vhost.
    ///
    /// # Errors
    /// It exists.
    pub fn add_vhost(&self, name: &str, description: &str) -> Result<(), AdminError> {
        let vhost = self.new_vhost(name);
        self.change_access(|access| {
            if access.vhost(name).is_some() {
                return Err(AdminError::VhostExists(name.to_owned()));
            }
            Ok(vec![access.put_vhost(VhostDef {
                name: name.to_owned(),
                description: description.to_owned(),
                tags: Vec::new(),
                limits: BTreeMap::new(),
            })])
        })?;
        self.register_vhost(vhost);
        Ok(())
    }

    /// Deletes a vhost: its connections are closed (320), its queues deleted with
    /// their messages, its exchanges, bindings and permissions removed.
    ///
    /// # Errors
    /// No such vhost.
    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        self.change_access(|access| {
            let deleted = access.delete_vhost(name)?;
            self.forget_policies(name);
            Ok::<_, AdminError>(vec![deleted])
        })?;
        if let Some(vhost) = self.unregister_vhost(name) {
            vhost.delete_contents();
        }
        Ok(())
    }

    /// Replaces a vhost's limits (`max-connections`, `max-queues`; negative: none).
    ///
    /// # Errors
    /// No such vhost, or limits that cannot be read.
    pub fn set_vhost_limits(&self, vhost: &str, json: &str) -> Result<(), AdminError> {
        let limits = parse_limits(json, &VHOST_LIMITS)?;
        self.change_access(|access| {
            let mut def = access
                .vhost(vhost)
                .cloned()
                .ok_or_else(|| AdminError::NoSuchVhost(vhost.to_owned()))?;
            def.limits = limits;
            Ok(vec![access.put_vhost(def)])
        })
    }

    /// Replaces a user's limits (`max-connections`, `max-channels`; negative: none).
    ///
    /// # Errors
    /// No such user, or limits that cannot be read.
    pub fn set_user_limits(&self, user: &str, json: &str) -> Result<(), AdminError> {
        let limits = parse_limits(json, &USER_LIMITS)?;
        self.change_access(|access| {
            let mut def = access
                .user(user)
                .map(|u| u.def().clone())
                .ok_or_else(|| AdminError::NoSuchUser(user.to_owned()))?;
            def.limits = limits;
            Ok(vec![access.put_user(def)?])
        })
    }

    /// Sets one of a user's limits (`Some`, a JSON number) or clears it (`None`), keeping the others
    /// (one change, so that two callers changing different limits both keep theirs).
    ///
    /// # Errors
    /// No such user, an unknown limit or a value that is not a number.
    pub fn change_user_limit(
        &self,
        user: &str,
        name: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), AdminError> {
        let value = value
            .map(|v| USER_LIMITS.one(name, v).map_err(AdminError::Limits))
            .transpose()?;
        self.change_access(|access| {
            let mut def = access
                .user(user)
                .map(|u| u.def().clone())
                .ok_or_else(|| AdminError::NoSuchUser(user.to_owned()))?;
            set_limit(&mut def.limits, name, value);
            Ok(vec![access.put_user(def)?])
        })
    }

    /// Sets one of a vhost's limits (`Some`, a JSON number) or clears it (`None`), keeping the others.
    ///
    /// # Errors
    /// No such vhost, an unknown limit or a value that is not a number.
    pub fn change_vhost_limit(
        &self,
        vhost: &str,
        name: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), AdminError> {
        let value = value
            .map(|v| VHOST_LIMITS.one(name, v).map_err(AdminError::Limits))
            .transpose()?;
        self.change_access(|access| {
            let mut def = access
                .vhost(vhost)
                .cloned()
                .ok_or_else(|| AdminError::NoSuchVhost(vhost.to_owned()))?;
            set_limit(&mut def.limits, name, value);
            Ok(vec![access.put_vhost(def)])
        })
    }

    /// Every vhost's limits, or only `vhost`'s.
    pub fn list_vhost_limits(&self, vhost: Option<&str>) -> Vec<serde_json::Value> {
        self.access()
            .export()
            .vhosts
            .into_iter()
            .filter(|v| vhost.is_none_or(|name| v.name == name) && !v.limits.is_empty())
            .map(|v| serde_json::json!({ "vhost": v.name, "limits": v.limits }))
            .collect()
    }

    /// Every user's limits.
    pub fn list_user_limits(&self) -> Vec<serde_json::Value> {
        self.access()
            .export()
            .users
            .into_iter()
            .filter(|u| !u.limits.is_empty())
            .map(|u| serde_json::json!({ "user": u.name, "limits": u.limits }))
            .collect()
    }

    /// The vhosts' names.
    pub fn list_vhosts(&self) -> Vec<String> {
        self.access().vhost_names().map(str::to_owned).collect()
    }

    /// Sets a user's permissions in a vhost.
    ///
    /// # Errors
    /// No such user or vhost, or a pattern that is not a regular expression.
    pub fn set_permissions(&self, def: PermissionDef) -> Result<(), AdminError> {
        self.change_access(|access| Ok(vec![access.set_permissions(def)?]))
    }

    /// Clears a user's permissions in a vhost.
    ///
    /// # Errors
    /// No such user or vhost.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), AdminError> {
        self.change_access(|access| Ok(vec![access.clear_permissions(user, vhost)?]))
    }

    /// Every permission, optionally only in `vhost`.
    pub fn list_permissions(&self, vhost: Option<&str>) -> Vec<PermissionDef> {
        let mut all = self.access().export().permissions;
        all.retain(|p| vhost.is_none_or(|v| p.vhost == v));
        all
    }

    /// Sets a user's topic permissions on an exchange of a vhost.
    ///
    /// # Errors
    /// No such user or vhost, or a pattern that is not a regular expression.
    pub fn set_topic_permissions(&self, def: TopicPermissionDef) -> Result<(), AdminError> {
        self.change_access(|access| Ok(vec![access.set_topic_permissions(def)?]))
    }

    /// Clears a user's topic permissions in a vhost: on `exchange`, or on all.
    ///
    /// # Errors
    /// No such user or vhost.
    pub fn clear_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), AdminError> {
        self.change_access(|access| {
            Ok(vec![access.clear_topic_permissions(user, vhost, exchange)?])
        })
    }

    /// Every topic permission, optionally only in `vhost`.
    pub fn list_topic_permissions(&self, vhost: Option<&str>) -> Vec<TopicPermissionDef> {
        let mut all = self.access().export().topic_permissions;
        all.retain(|p| vhost.is_none_or(|v| p.vhost == v));
        all
    }

    /// Sets (or replaces) a policy.
    ///
    /// # Errors
    /// No such vhost, or a policy RabbitMQ would refuse.
    pub fn set_policy(&self, def: PolicyDef) -> Result<(), AdminError> {
        let policy = Policy::from_def(&def).map_err(AdminError::InvalidPolicy)?;
        self.change_policies(&def.vhost.clone(), |policies| {
            policies.set([policy]);
            Ok(Change::SetPolicy(def))
        })
    }

    /// Clears a policy set at run time.
    ///
    /// # Errors
    /// No such vhost, or no such policy in it.
    pub fn clear_policy(&self, vhost: &str, name: &str) -> Result<(), AdminError> {
        self.change_policies(vhost, |policies| {
            if !policies.clear(vhost, name) {
                return Err(AdminError::NoSuchPolicy);
            }
            Ok(Change::ClearPolicy {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            })
        })
    }

    /// Sets (or replaces) an operator policy.
    ///
    /// # Errors
    /// No such vhost, or an operator policy RabbitMQ would refuse.
    pub fn set_operator_policy(&self, def: PolicyDef) -> Result<(), AdminError> {
        let policy = Policy::from_operator_def(&def).map_err(AdminError::InvalidPolicy)?;
        self.change_policies(&def.vhost.clone(), |policies| {
            policies.set_operator([policy]);
            Ok(Change::SetOperatorPolicy(def))
        })
    }

    /// Clears an operator policy.
    ///
    /// # Errors
    /// No such vhost, or no such operator policy in it.
    pub fn clear_operator_policy(&self, vhost: &str, name: &str) -> Result<(), AdminError> {
        self.change_policies(vhost, |policies| {
            if !policies.clear_operator(vhost, name) {
                return Err(AdminError::NoSuchPolicy);
            }
            Ok(Change::ClearOperatorPolicy {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            })
        })
    }

    /// The operator policies, optionally only those of `vhost`, best first.
    pub fn list_operator_policies(&self, vhost: Option<&str>) -> Vec<PolicyDef> {
        self.policies()
            .operator()
            .filter(|p| vhost.is_none_or(|v| p.vhost == v))
            .map(Policy::to_def)
            .collect()
    }

    /// Sets (or replaces) a global parameter; whether it replaced one.
    pub fn set_global_parameter(&self, name: &str, value: serde_json::Value) -> bool {
        let def = GlobalParameterDef {
            name: name.to_owned(),
            value,
        };
        let mut replaced = false;
        let Ok(()) = self.change_global_parameters(|parameters| {
            replaced = parameters
                .insert(def.name.clone(), def.value.clone())
                .is_some();
            Ok::<_, std::convert::Infallible>(Change::SetGlobalParameter(def))
        });
        replaced
    }

    /// Clears a global parameter.
    ///
    /// # Errors
    /// There is none of that name (`Parameter does not exist`).
    pub fn clear_global_parameter(&self, name: &str) -> Result<(), AdminError> {
        self.change_global_parameters(|parameters| match parameters.remove(name) {
            Some(_) => Ok(Change::ClearGlobalParameter {
                name: name.to_owned(),
            }),
            None => Err(AdminError::NoSuchPolicy),
        })
    }

    /// The global parameters, by name.
    pub fn list_global_parameters(&self) -> Vec<GlobalParameterDef> {
        self.global_parameters()
            .into_iter()
            .map(|(name, value)| GlobalParameterDef { name, value })
            .collect()
    }

    /// The policies in force, optionally only those of `vhost`, best first.
    pub fn list_policies(&self, vhost: Option<&str>) -> Vec<PolicyDef> {
        self.policies()
            .iter()
            .filter(|p| vhost.is_none_or(|v| p.vhost == v))
            .map(Policy::to_def)
            .collect()
    }

    /// Declares a definitions file's exchanges, queues and bindings, in that order. As
    /// RabbitMQ's import, what exists already is left as it is. Returns what could not
    /// be declared, each with RabbitMQ's reason.
    pub fn apply_topology(&self, defs: &RabbitDefinitions) -> Vec<String> {
        let mut failed = Vec::new();
        let vhost_of = |name: &str, failed: &mut Vec<String>| {
            let vhost = self.vhost(name);
            if vhost.is_none() {
                failed.push(format!("vhost {name} not found"));
            }
            vhost
        };
        for x in &defs.exchanges {
            let Some(vhost) = vhost_of(&x.vhost, &mut failed) else {
                continue;
            };
            if vhost.exchange(&x.name).is_ok() {
                continue;
            }
            let arguments = table_from_json(&x.arguments);
            let declared = match parse_declared_type(&x.kind, &arguments) {
                Ok(Some((kind, delayed))) => vhost.declare_exchange(
                    &x.name,
                    false,
                    ExchangeSettings {
                        kind,
                        durable: x.durable,
                        auto_delete: x.auto_delete,
                        internal: x.internal,
                        delayed,
                        arguments,
                    },
                ),
                Ok(None) => Err(crate::error::command_invalid(format!(
                    "unknown exchange type '{}'",
                    x.kind
                ))),
                Err(e) => Err(e),
            };
            if let Err(e) = declared {
                failed.push(format!("exchange '{}': {}", x.name, e.reply_text()));
            }
        }
        for q in &defs.queues {
            let Some(vhost) = vhost_of(&q.vhost, &mut failed) else {
                continue;
            };
            if vhost.has_queue(&q.name) {
                continue;
            }
            let declare = QueueDeclare {
                name: q.name.as_str().into(),
                server_named: false,
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: table_from_json(&q.arguments),
            };
            if let Err(e) = vhost.declare_queue(declare, 0) {
                failed.push(format!("queue '{}': {}", q.name, e.reply_text()));
            }
        }
        for b in &defs.bindings {
            let Some(vhost) = vhost_of(&b.vhost, &mut failed) else {
                continue;
            };
            let arguments = table_from_json(&b.arguments);
            let bound = if b.destination_type == "exchange" {
                vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, arguments)
            } else {
                vhost.bind(&b.destination, &b.source, &b.routing_key, arguments, 0)
            };
            if let Err(e) = bound {
                failed.push(format!(
                    "binding '{}' → '{}': {}",
                    b.source,
                    b.destination,
                    e.reply_text()
                ));
            }
        }
        failed
    }

    /// The definitions in RabbitMQ's shape (vhosts, users with their hashes,
    /// permissions, topic permissions, vhost limits and operator policies as runtime
    /// parameters, global parameters, policies, durable exchanges, queues and
    /// bindings).
    pub fn export_definitions(&self) -> RabbitDefinitions {
        let stored = self.stored_definitions().unwrap_or_default();
        let AccessDefinitions {
            vhosts,
            users,
            permissions,
            topic_permissions,
        } = self.access().export();
        let parameters = vhosts
            .iter()
            .filter(|v| !v.limits.is_empty())
            .map(|v| RabbitParameter {
                vhost: v.name.clone(),
                component: "vhost-limits".into(),
                name: "limits".into(),
                value: serde_json::json!(v.limits),
            })
            .chain(
                self.list_operator_policies(None)
                    .into_iter()
                    .map(RabbitParameter::operator_policy),
            )
            .collect();
        RabbitDefinitions {
            rabbit_version: Some(RABBIT_VERSION.into()),
            rabbitmq_version: Some(RABBIT_VERSION.into()),
            users: users
                .into_iter()
                .map(|u| RabbitUser {
                    name: u.name,
                    password_hash: Some(u.password_hash),
                    password: None,
                    hashing_algorithm: Some(u.hashing_algorithm),
                    tags: Tags::List(u.tags),
                    limits: u.limits,
                })
                .collect(),
            vhosts: vhosts
                .into_iter()
                .map(|v| RabbitVhost {
                    name: v.name,
                    description: Some(v.description),
                    tags: Some(Tags::List(v.tags)),
                    metadata: None,
                })
                .collect(),
            permissions,
            topic_permissions,
            parameters,
            global_parameters: self.list_global_parameters(),
            policies: self
                .list_policies(None)
                .into_iter()
                .map(RabbitPolicy::from)
                .collect(),
            exchanges: stored
                .exchanges
                .into_iter()
                .map(|x| RabbitExchange {
                    name: x.name,
                    vhost: x.vhost,
                    kind: x.kind,
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: table_to_json(&x.arguments),
                })
                .collect(),
            queues: stored
                .queues
                .into_iter()
                .map(|q| RabbitQueue {
                    name: q.name,
                    vhost: q.vhost,
                    durable: true,
                    auto_delete: q.auto_delete,
                    arguments: table_to_json(&q.arguments),
                })
                .collect(),
            bindings: stored
                .bindings
                .into_iter()
                .map(|b| RabbitBinding {
                    source: b.source,
                    vhost: b.vhost,
                    destination: b.destination,
                    destination_type: if b.to_exchange { "exchange" } else { "queue" }.into(),
                    routing_key: b.routing_key,
                    arguments: table_to_json(&b.arguments),
                })
                .collect(),
        }
    }

    /// Applies a RabbitMQ definitions file: its vhosts are created (if new), users,
    /// permissions, topic permissions, policies, operator policies and global
    /// parameters created or replaced.
    ///
    /// # Errors
    /// Not a definitions file, or an unusable entry (nothing is applied then).
    pub fn import_definitions(&self, text: &str) -> Result<(), AdminError> {
        let file = RabbitDefinitions::parse(text)?;
        let defs = file.access()?;
        let policies: Vec<PolicyDef> = file.policies.iter().cloned().map(PolicyDef::from).collect();
        let operator_policies = file.operator_policies()?;
        let known = |vhost: &str| {
            self.access().vhost(vhost).is_some() || defs.vhosts.iter().any(|v| v.name == vhost)
        };
        // Refused as RabbitMQ's import refuses them: the reason, then the entry.
        let invalid = |reason: String, at: String| {
            ImportError::Invalid(format!("Validation failed\n\n{reason}\n ({at})"))
        };
        for def in &policies {
            Policy::from_def(def)
                .map_err(|reason| invalid(reason, format!("{}/{}", def.vhost, def.name)))?;
            if !known(&def.vhost) {
                return Err(AdminError::NoSuchVhost(def.vhost.clone()));
            }
        }
        for def in &operator_policies {
            Policy::from_operator_def(def).map_err(|reason| {
                invalid(
                    reason,
                    format!("{}/{OPERATOR_POLICY}/{}", def.vhost, def.name),
                )
            })?;
            if !known(&def.vhost) {
                return Err(AdminError::NoSuchVhost(def.vhost.clone()));
            }
        }
        let new: Vec<Arc<VHost>> = defs
            .vhosts
            .iter()
            .filter(|v| self.vhost(&v.name).is_none())
            .map(|v| self.new_vhost(&v.name))
            .collect();
        self.change_access(|access| {
            // Applied to a copy first, so that a bad entry changes nothing.
            let mut trial = access.clone();
            let changes = trial.apply(defs)?;
            *access = trial;
            Ok::<_, AdminError>(changes)
        })?;
        for vhost in new {
            self.register_vhost(vhost);
        }
        for def in policies {
            self.set_policy(def)?;
        }
        for def in operator_policies {
            self.set_operator_policy(def)?;
        }
        for def in file.global_parameters.iter().cloned() {
            self.set_global_parameter(&def.name, def.value);
        }
        let failed = self.apply_topology(&file);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(AdminError::Topology(failed))
        }
    }
}

/// The RabbitMQ version Warren's exports claim, so that RabbitMQ imports them.
const RABBIT_VERSION: &str = "3.13.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_given_as_text_are_json_first() {
        assert!(matches!(
            parse_limits("{", &VHOST_LIMITS),
            Err(AdminError::LimitsNotJson(_))
        ));
        assert!(matches!(
            parse_limits(r#"{"max-foo": 1}"#, &USER_LIMITS),
            Err(AdminError::Limits(_))
        ));
        assert_eq!(
            parse_limits(r#"{"max-channels": 2}"#, &USER_LIMITS).ok(),
            Some(BTreeMap::from([("max-channels".to_owned(), 2)]))
        );
    }
}
