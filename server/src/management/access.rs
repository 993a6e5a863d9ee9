//! Users, vhosts, permissions, topic permissions, policies, limits and runtime
//! parameters (vhost limits, as RabbitMQ keeps them) over HTTP, on
//! the same operations as `warren ctl` ([`crate::admin`]). A change is answered once it
//! is durable.

use axum::Router;
use axum::extract::{Path, Query};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::auth::Caller;
use super::body::Body;
use super::listing::{ListQuery, list};
use super::reply::{ApiError, ApiResult, created_or_changed, json, no_content};
use crate::access::rabbit_json::{OPERATOR_POLICY, RabbitParameter, Tags};
use crate::admin::{AdminError, UserPassword};
use crate::store::definitions::{PermissionDef, PolicyDef, TopicPermissionDef};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/users", get(users))
        .route(
            "/api/users/without-permissions",
            get(users_without_permissions),
        )
        .route(
            "/api/users/bulk-delete",
            axum::routing::post(bulk_delete_users),
        )
        .route(
            "/api/users/{user}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route(
            "/api/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/topic-permissions", get(topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(topic_permission)
                .put(put_topic_permission)
                .delete(delete_topic_permission),
        )
        .merge(policy_routes("/api/policies", PolicySet::Policies))
        .merge(policy_routes("/api/operator-policies", PolicySet::Operator))
        .route("/api/vhost-limits", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(one_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/global-parameters", get(global_parameters))
        .route(
            "/api/global-parameters/{name}",
            get(global_parameter)
                .put(put_global_parameter)
                .delete(delete_global_parameter),
        )
        .route("/api/parameters", get(parameters))
        .route("/api/parameters/{component}", get(component_parameters))
        .route("/api/parameters/{component}/{vhost}", get(vhost_parameters))
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(parameter).put(put_parameter).delete(delete_parameter),
        )
        .route("/api/user-limits", get(user_limits))
        .route("/api/user-limits/{user}", get(one_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            axum::routing::put(put_user_limit).delete(delete_user_limit),
        )
}

/// Waits for the change just made to be durable.
///
/// # Errors
/// 500 when it could not be made durable.
pub(super) async fn durable(caller: &Caller) -> ApiResult<()> {
    if caller.broker.commit_definitions().await {
        Ok(())
    } else {
        Err(ApiError::internal(
            "the change was made but could not be made durable",
        ))
    }
}

/// An administration refusal as the API words it: a missing object is 404, the rest
/// a bad request with the operation's reason.
fn refused(e: AdminError) -> ApiError {
    match e {
        AdminError::NoSuchUser(_) | AdminError::NoSuchVhost(_) | AdminError::NoSuchPolicy => {
            ApiError::not_found()
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

/// Parses a JSON body, refusing one that is not JSON or not of the shape.
fn body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn user_json(def: &crate::store::definitions::UserDef) -> Value {
    json!({
        "name": def.name,
        "password_hash": def.password_hash,
        "hashing_algorithm": def.hashing_algorithm,
        "tags": def.tags,
        "limits": def.limits,
    })
}

async fn users(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    caller.require_admin()?;
    let users = caller.broker.access().export().users;
    Ok(json(list(users.iter().map(user_json).collect(), &query)?))
}

async fn users_without_permissions(caller: Caller) -> ApiResult {
    caller.require_admin()?;
    let exported = caller.broker.access().export();
    let lonely = exported
        .users
        .iter()
        .filter(|u| !exported.permissions.iter().any(|p| p.user == u.name))
        .map(user_json)
        .collect();
    Ok(json(Value::Array(lonely)))
}

#[derive(Deserialize)]
struct BulkDelete {
    users: Vec<String>,
}

async fn bulk_delete_users(caller: Caller, raw: axum::body::Bytes) -> ApiResult {
    caller.require_admin()?;
    let BulkDelete { users } = body(&raw)?;
    for user in users {
        // Missing users are skipped, as RabbitMQ skips them.
        let _ = caller.broker.delete_user(&user);
    }
    durable(&caller).await?;
    Ok(no_content())
}

async fn user(caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_admin()?;
    let def = caller
        .broker
        .access()
        .user(&name)
        .map(|u| u.def().clone())
        .ok_or_else(ApiError::not_found)?;
    Ok(json(user_json(&def)))
}

/// `PUT /api/users/{name}`'s body.
#[derive(Deserialize)]
struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Option<Tags>,
}

async fn put_user(caller: Caller, Path(name): Path<String>, raw: axum::body::Bytes) -> ApiResult {
    caller.require_admin()?;
    let PutUser {
        password,
        password_hash,
        hashing_algorithm,
        tags,
    } = body(&raw)?;
    let password = match (password, password_hash) {
        (Some(password), _) => UserPassword::Clear(password),
        (None, Some(hash)) => UserPassword::Hash {
            hash,
            hashing_algorithm,
        },
        (None, None) if caller.broker.access().user(&name).is_some() => {
            return Err(ApiError::bad_request(
                "password or password_hash must be set",
            ));
        }
        (None, None) => UserPassword::None,
    };
    let tags = tags.map(Tags::into_list).unwrap_or_default();
    let created = caller
        .broker
        .put_user(&name, password, tags)
        .map_err(refused)?;
    durable(&caller).await?;
    Ok(created_or_changed(created))
}

async fn delete_user(caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_admin()?;
    caller.broker.delete_user(&name).map_err(refused)?;
    durable(&caller).await?;
    Ok(no_content())
}

fn permissions_where(caller: &Caller, keep: impl Fn(&PermissionDef) -> bool) -> Value {
    let all = caller.broker.list_permissions(None);
    Value::Array(
        all.iter()
            .filter(|p| keep(p))
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
    )
}

fn topic_permissions_where(caller: &Caller, keep: impl Fn(&TopicPermissionDef) -> bool) -> Value {
    let all = caller.broker.list_topic_permissions(None);
    Value::Array(
        all.iter()
            .filter(|p| keep(p))
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
    )
}

async fn user_permissions(caller: Caller, Path(user): Path<String>) -> ApiResult {
    caller.require_admin()?;
    if !caller.broker.user_exists(&user) {
        return Err(ApiError::not_found());
    }
    Ok(json(permissions_where(&caller, |p| p.user == user)))
}

async fn user_topic_permissions(caller: Caller, Path(user): Path<String>) -> ApiResult {
    caller.require_admin()?;
    if !caller.broker.user_exists(&user) {
        return Err(ApiError::not_found());
    }
    Ok(json(topic_permissions_where(&caller, |p| p.user == user)))
}

/// A vhost as the API shows it: its name, description, tags, message counts and rates.
fn vhost_json(caller: &Caller, def: &crate::store::definitions::VhostDef) -> Value {
    use super::rates::{Subject, message_fields, queue_lengths};
    let (mut lengths, mut tally) = ([0u64; 3], crate::stats::Tally::default());
    let mut octets = (0u64, 0u64);
    if let Some(vhost) = caller.broker.vhost(&def.name) {
        for queue in vhost.queues() {
            for (i, (_, value)) in queue_lengths(&queue).into_iter().enumerate() {
                lengths[i] += value;
            }
        }
        tally = vhost.message_counters().read();
    }
    for connection in caller.broker.registry().connections() {
        if connection.facts.vhost == def.name {
            octets.0 += connection
                .recv_oct
                .load(std::sync::atomic::Ordering::Relaxed);
            octets.1 += connection
                .send_oct
                .load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    let node = super::overview::node_name();
    let subject = Subject::Vhost(def.name.clone());
    let rates = caller.rates.read();
    let mut shown = rates.with_rates(
        &subject,
        &[
            ("messages", lengths[0]),
            ("messages_ready", lengths[1]),
            ("messages_unacknowledged", lengths[2]),
            ("recv_oct", octets.0),
            ("send_oct", octets.1),
        ],
    );
    shown.insert(
        "message_stats".into(),
        Value::Object(rates.with_rates(&subject, &message_fields(&tally))),
    );
    drop(rates);
    let fixed = json!({
        "name": def.name,
        "description": def.description,
        "tags": def.tags,
        "metadata": { "description": def.description, "tags": def.tags },
        "default_queue_type": "undefined",
        "tracing": false,
        "cluster_state": { node: "running" },
    });
    if let Value::Object(fixed) = fixed {
        shown.extend(fixed);
    }
    Value::Object(shown)
}

async fn vhosts(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    let defs = caller.broker.access().export().vhosts;
    let shown = defs
        .iter()
        .filter(|v| caller.sees_vhost(&v.name))
        .map(|v| vhost_json(&caller, v))
        .collect();
    Ok(json(list(shown, &query)?))
}

async fn vhost(caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_admin()?;
    let def = caller
        .broker
        .access()
        .vhost(&name)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok(json(vhost_json(&caller, &def)))
}

/// `PUT /api/vhosts/{name}`'s body (all optional).
#[derive(Deserialize, Default)]
struct PutVhost {
    description: Option<String>,
    tags: Option<Tags>,
}

async fn put_vhost(caller: Caller, Path(name): Path<String>, raw: axum::body::Bytes) -> ApiResult {
    caller.require_admin()?;
    let PutVhost { description, tags } = if raw.is_empty() {
        PutVhost::default()
    } else {
        body(&raw)?
    };
    // A PUT replaces: what it leaves out is cleared, as in RabbitMQ.
    let created = caller
        .broker
        .put_vhost(
            &name,
            Some(description.as_deref().unwrap_or_default()),
            Some(tags.map(Tags::into_list).unwrap_or_default()),
        )
        .map_err(refused)?;
    durable(&caller).await?;
    Ok(created_or_changed(created))
}

async fn delete_vhost(caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_admin()?;
    caller.broker.delete_vhost(&name).map_err(refused)?;
    durable(&caller).await?;
    Ok(no_content())
}

async fn vhost_permissions(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_admin()?;
    if caller.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json(permissions_where(&caller, |p| p.vhost == vhost)))
}

async fn vhost_topic_permissions(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_admin()?;
    if caller.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json(topic_permissions_where(&caller, |p| p.vhost == vhost)))
}

async fn permissions(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    caller.require_admin()?;
    let all = permissions_where(&caller, |_| true);
    let items = all.as_array().cloned().unwrap_or_default();
    Ok(json(list(items, &query)?))
}

async fn permission(caller: Caller, Path((vhost, user)): Path<(String, String)>) -> ApiResult {
    caller.require_admin()?;
    let found = caller
        .broker
        .list_permissions(Some(&vhost))
        .into_iter()
        .find(|p| p.user == user)
        .ok_or_else(ApiError::not_found)?;
    Ok(json(serde_json::to_value(found).unwrap_or_default()))
}

/// The three patterns of `PUT /api/permissions/{vhost}/{user}`.
#[derive(Deserialize)]
struct Patterns {
    configure: String,
    write: String,
    read: String,
}

async fn put_permission(
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let Patterns {
        configure,
        write,
        read,
    } = body(&raw)?;
    let existed = caller
        .broker
        .list_permissions(Some(&vhost))
        .iter()
        .any(|p| p.user == user);
    caller
        .broker
        .set_permissions(PermissionDef {
            user,
            vhost,
            configure,
            write,
            read,
        })
        .map_err(|e| match e {
            AdminError::NoSuchUser(_) | AdminError::NoSuchVhost(_) => {
                ApiError::bad_request(e.to_string())
            }
            other => refused(other),
        })?;
    durable(&caller).await?;
    Ok(created_or_changed(!existed))
}

async fn delete_permission(
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    let existed = caller
        .broker
        .list_permissions(Some(&vhost))
        .iter()
        .any(|p| p.user == user);
    if !existed {
        return Err(ApiError::not_found());
    }
    caller
        .broker
        .clear_permissions(&user, &vhost)
        .map_err(refused)?;
    durable(&caller).await?;
    Ok(no_content())
}

async fn topic_permissions(caller: Caller, Query(query): Query<ListQuery>) -> ApiResult {
    caller.require_admin()?;
    let all = topic_permissions_where(&caller, |_| true);
    let items = all.as_array().cloned().unwrap_or_default();
    Ok(json(list(items, &query)?))
}

async fn topic_permission(
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    let found = topic_permissions_where(&caller, |p| p.vhost == vhost && p.user == user);
    if found.as_array().is_none_or(Vec::is_empty) {
        return Err(ApiError::not_found());
    }
    Ok(json(found))
}

/// `PUT /api/topic-permissions/{vhost}/{user}`'s body.
#[derive(Deserialize)]
struct TopicPatterns {
    exchange: String,
    write: String,
    read: String,
}

async fn put_topic_permission(
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let TopicPatterns {
        exchange,
        write,
        read,
    } = body(&raw)?;
    let existed = caller
        .broker
        .list_topic_permissions(Some(&vhost))
        .iter()
        .any(|p| p.user == user && p.exchange == exchange);
    caller
        .broker
        .set_topic_permissions(TopicPermissionDef {
            user,
            vhost,
            exchange,
            write,
            read,
        })
        .map_err(|e| match e {
            AdminError::NoSuchUser(_) | AdminError::NoSuchVhost(_) => {
                ApiError::bad_request(e.to_string())
            }
            other => refused(other),
        })?;
    durable(&caller).await?;
    Ok(created_or_changed(!existed))
}

async fn delete_topic_permission(
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    caller
        .broker
        .clear_topic_permissions(&user, &vhost, None)
        .map_err(refused)?;
    durable(&caller).await?;
    Ok(no_content())
}

/// The routes of one set of policies under `base`.
fn policy_routes(base: &str, set: PolicySet) -> Router<Api> {
    Router::new()
        .route(base, get(move |caller, query| policies(caller, query, set)))
        .route(
            &format!("{base}/{{vhost}}"),
            get(move |caller, path| vhost_policies(caller, path, set)),
        )
        .route(
            &format!("{base}/{{vhost}}/{{name}}"),
            get(move |caller, path| policy(caller, path, set))
                .put(move |caller, path, raw| put_policy(caller, path, raw, set))
                .delete(move |caller, path| delete_policy(caller, path, set)),
        )
}

fn policy_json(def: &PolicyDef) -> Value {
    json!({
        "vhost": def.vhost,
        "name": def.name,
        "pattern": def.pattern,
        "apply-to": def.apply_to,
        "definition": def.definition,
        "priority": def.priority,
    })
}

/// Which set of policies a request is about: users' policies (`/api/policies`) or
/// operator policies (`/api/operator-policies`), kept apart (a name may be in both).
#[derive(Debug, Clone, Copy)]
enum PolicySet {
    Policies,
    Operator,
}

impl PolicySet {
    fn list(self, caller: &Caller, vhost: Option<&str>) -> Vec<PolicyDef> {
        match self {
            Self::Policies => caller.broker.list_policies(vhost),
            Self::Operator => caller.broker.list_operator_policies(vhost),
        }
    }

    /// Refuses a caller who may not see or change one of the set in `vhost`: a
    /// policymaker of the vhost for policies, an administrator for operator policies.
    fn require_maker(self, caller: &Caller, vhost: &str) -> ApiResult<()> {
        match self {
            Self::Policies => caller.require_policymaker(vhost),
            Self::Operator => {
                caller.require_admin()?;
                caller.require_vhost(vhost)
            }
        }
    }

    fn set(self, caller: &Caller, def: PolicyDef) -> ApiResult<()> {
        let set = match self {
            Self::Policies => caller.broker.set_policy(def),
            Self::Operator => caller.broker.set_operator_policy(def),
        };
        set.map_err(|e| match e {
            AdminError::InvalidPolicy(reason) => {
                let reason = format!("Validation failed\n\n{reason}\n");
                match self {
                    // RabbitMQ escapes a policy's reason, not an operator policy's.
                    Self::Policies => ApiError::invalid_parameter(&reason),
                    Self::Operator => ApiError::bad_request(reason),
                }
            }
            other => refused(other),
        })
    }

    fn clear(self, caller: &Caller, vhost: &str, name: &str) -> ApiResult<()> {
        match self {
            Self::Policies => caller.broker.clear_policy(vhost, name),
            Self::Operator => caller.broker.clear_operator_policy(vhost, name),
        }
        .map_err(refused)
    }
}

async fn policies(caller: Caller, Query(query): Query<ListQuery>, set: PolicySet) -> ApiResult {
    let shown = set
        .list(&caller, None)
        .iter()
        .filter(|p| caller.sees_contents(&p.vhost))
        .map(policy_json)
        .collect();
    Ok(json(list(shown, &query)?))
}

async fn vhost_policies(caller: Caller, Path(vhost): Path<String>, set: PolicySet) -> ApiResult {
    caller.require_vhost(&vhost)?;
    let shown = set
        .list(&caller, Some(&vhost))
        .iter()
        .map(policy_json)
        .collect();
    Ok(json(Value::Array(shown)))
}

async fn policy(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    set: PolicySet,
) -> ApiResult {
    match set {
        PolicySet::Policies => caller.require_vhost(&vhost)?,
        PolicySet::Operator => set.require_maker(&caller, &vhost)?,
    }
    let found = set
        .list(&caller, Some(&vhost))
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(json(policy_json(&found)))
}

/// `PUT /api/policies/{vhost}/{name}`'s body (and an operator policy's).
#[derive(Deserialize)]
struct PutPolicy {
    pattern: String,
    definition: Value,
    #[serde(default)]
    priority: i64,
    #[serde(rename = "apply-to", default)]
    apply_to: Option<String>,
}

async fn put_policy(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: axum::body::Bytes,
    set: PolicySet,
) -> ApiResult {
    if caller.broker.access().vhost(&vhost).is_none() {
        return Err(ApiError::vhost_not_found());
    }
    set.require_maker(&caller, &vhost)?;
    let PutPolicy {
        pattern,
        definition,
        priority,
        apply_to,
    } = body(&raw)?;
    let existed = set
        .list(&caller, Some(&vhost))
        .iter()
        .any(|p| p.name == name);
    set.set(
        &caller,
        PolicyDef {
            vhost,
            name,
            pattern,
            apply_to: apply_to.unwrap_or_else(|| "all".to_owned()),
            priority,
            definition,
        },
    )?;
    durable(&caller).await?;
    Ok(created_or_changed(!existed))
}

async fn delete_policy(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    set: PolicySet,
) -> ApiResult {
    set.require_maker(&caller, &vhost)?;
    set.clear(&caller, &vhost, &name)?;
    durable(&caller).await?;
    Ok(no_content())
}

/// A vhost's or user's limits as the API shows them: `{"vhost"|"user": …, "value": {…}}`
/// (`warren ctl`'s rows name the object `limits`).
fn limits_json(mut row: Value) -> Value {
    if let Some(fields) = row.as_object_mut()
        && let Some(limits) = fields.remove("limits")
    {
        fields.insert("value".to_owned(), limits);
    }
    row
}

async fn vhost_limits(caller: Caller) -> ApiResult {
    let shown = caller
        .broker
        .list_vhost_limits(None)
        .into_iter()
        .filter(|l| l["vhost"].as_str().is_some_and(|v| caller.sees_vhost(v)))
        .map(limits_json)
        .collect();
    Ok(json(Value::Array(shown)))
}

async fn one_vhost_limits(caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_vhost(&vhost)?;
    let shown = caller.broker.list_vhost_limits(Some(&vhost));
    Ok(json(shown.into_iter().map(limits_json).collect()))
}

/// Sets (with the `PUT` body `raw`) or clears one vhost or user limit, as an
/// administrator; answered once the change is durable. A `PUT` for a missing user is
/// refused with 400, as RabbitMQ refuses it.
async fn change_limit(
    caller: &Caller,
    raw: Option<&[u8]>,
    change: impl FnOnce(&crate::broker::Broker, Option<&Value>) -> Result<(), AdminError>,
) -> ApiResult {
    caller.require_admin()?;
    let value = raw.map(limit_value).transpose()?;
    change(&caller.broker, value.as_ref()).map_err(|e| match (e, &value) {
        (AdminError::NoSuchVhost(_), Some(_)) => ApiError::vhost_not_found(),
        (AdminError::NoSuchUser(user), Some(_)) => {
            ApiError::bad_request_term(json!(["no_such_user", user]))
        }
        (other, _) => refused(other),
    })?;
    durable(caller).await?;
    Ok(no_content())
}

/// The `value` of a `PUT /api/…-limits/{…}/{name}` body.
fn limit_value(raw: &[u8]) -> ApiResult<Value> {
    let body = Body::parse(raw)?;
    body.require(&["value"])?;
    let Body(mut fields) = body;
    Ok(fields.remove("value").unwrap_or_default())
}

async fn put_vhost_limit(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult {
    // RabbitMQ looks for the vhost before it reads the body.
    caller.require_admin()?;
    if caller.broker.access().vhost(&vhost).is_none() {
        return Err(ApiError::vhost_not_found());
    }
    change_limit(&caller, Some(&raw), |broker, value| {
        broker.change_vhost_limit(&vhost, &name, value)
    })
    .await
}

async fn delete_vhost_limit(
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    change_limit(&caller, None, |broker, value| {
        broker.change_vhost_limit(&vhost, &name, value)
    })
    .await
}

async fn user_limits(caller: Caller) -> ApiResult {
    caller.require_admin()?;
    let shown = caller.broker.list_user_limits();
    Ok(json(shown.into_iter().map(limits_json).collect()))
}

async fn one_user_limits(caller: Caller, Path(user): Path<String>) -> ApiResult {
    caller.require_admin()?;
    let shown = caller
        .broker
        .list_user_limits()
        .into_iter()
        .filter(|l| l["user"] == user.as_str())
        .map(limits_json)
        .collect();
    Ok(json(Value::Array(shown)))
}

async fn put_user_limit(
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult {
    change_limit(&caller, Some(&raw), |broker, value| {
        broker.change_user_limit(&user, &name, value)
    })
    .await
}

async fn delete_user_limit(
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult {
    change_limit(&caller, None, |broker, value| {
        broker.change_user_limit(&user, &name, value)
    })
    .await
}

/// The one runtime-parameter component Warren has: RabbitMQ keeps vhost limits as
/// parameters of this component, under the name `limits`.
const VHOST_LIMITS: &str = "vhost-limits";

/// A vhost's limits as the runtime parameter RabbitMQ shows.
fn parameter_json(row: &Value) -> Value {
    json!({
        "value": row["limits"],
        "vhost": row["vhost"],
        "component": VHOST_LIMITS,
        "name": "limits",
    })
}

/// The parameters of `component` (all when `None`) in `vhost` (all visible when
/// `None`), for a policymaker.
fn parameters_of(
    caller: &Caller,
    component: Option<&str>,
    vhost: Option<&str>,
) -> ApiResult<Vec<Value>> {
    if !caller.is_policymaker() {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    if let Some(vhost) = vhost {
        caller.require_vhost(vhost)?;
    }
    let wanted = |c: &str| component.is_none_or(|wanted| wanted == c);
    let mut shown = Vec::new();
    if wanted(VHOST_LIMITS) {
        shown.extend(
            caller
                .broker
                .list_vhost_limits(vhost)
                .iter()
                .filter(|l| l["vhost"].as_str().is_some_and(|v| caller.sees_contents(v)))
                .map(parameter_json),
        );
    }
    // RabbitMQ keeps operator policies as parameters too, and lists them so (set and
    // cleared through /api/operator-policies here).
    if wanted(OPERATOR_POLICY) {
        shown.extend(
            caller
                .broker
                .list_operator_policies(vhost)
                .into_iter()
                .filter(|p| caller.sees_contents(&p.vhost))
                .map(|p| json!(RabbitParameter::operator_policy(p))),
        );
    }
    Ok(shown)
}

async fn parameters(caller: Caller) -> ApiResult {
    Ok(json(Value::Array(parameters_of(&caller, None, None)?)))
}

async fn component_parameters(caller: Caller, Path(component): Path<String>) -> ApiResult {
    Ok(json(Value::Array(parameters_of(
        &caller,
        Some(&component),
        None,
    )?)))
}

async fn vhost_parameters(
    caller: Caller,
    Path((component, vhost)): Path<(String, String)>,
) -> ApiResult {
    Ok(json(Value::Array(parameters_of(
        &caller,
        Some(&component),
        Some(&vhost),
    )?)))
}

async fn parameter(
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    parameters_of(&caller, Some(&component), Some(&vhost))?
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .map(json)
        .ok_or_else(ApiError::not_found)
}

/// `PUT /api/parameters/{component}/{vhost}/{name}`'s body (the path's `component`,
/// `vhost` and `name` repeated in it are ignored, as RabbitMQ ignores them).
#[derive(Deserialize)]
struct ParameterValue {
    value: Value,
}

/// Refuses a component other than `vhost-limits` and a name other than `limits`, as
/// RabbitMQ words it.
fn vhost_limits_parameter(component: &str, name: &str) -> ApiResult<()> {
    if component != VHOST_LIMITS {
        return Err(ApiError::invalid_parameter(&format!(
            "Validation failed\n\ncomponent {component} not found\n"
        )));
    }
    if name != "limits" {
        return Err(ApiError::invalid_parameter(&format!(
            "Validation failed\n\nWarren keeps a vhost's limits under the name limits, not {name}\n"
        )));
    }
    Ok(())
}

async fn put_parameter(
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult {
    caller.require_policymaker(&vhost)?;
    vhost_limits_parameter(&component, &name)?;
    // Vhost limits are an administrator's, however they are reached.
    caller.require_admin()?;
    let ParameterValue { value } = body(&raw)?;
    let existed = !caller.broker.list_vhost_limits(Some(&vhost)).is_empty();
    caller
        .broker
        .set_vhost_limits(&vhost, &value.to_string())
        .map_err(|e| match e {
            AdminError::Limits(reason) => ApiError::invalid_parameter(&reason),
            other => refused(other),
        })?;
    durable(&caller).await?;
    Ok(created_or_changed(!existed))
}

async fn delete_parameter(
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    caller.require_policymaker(&vhost)?;
    caller.require_admin()?;
    if component != VHOST_LIMITS
        || name != "limits"
        || caller.broker.list_vhost_limits(Some(&vhost)).is_empty()
    {
        return Err(ApiError::not_found());
    }
    caller
        .broker
        .set_vhost_limits(&vhost, "{}")
        .map_err(refused)?;
    durable(&caller).await?;
    Ok(no_content())
}

/// Refuses a caller who may not see or change global parameters: RabbitMQ's
/// `is_authorized_global_parameters`, a policymaker (or administrator).
fn require_global_parameters(caller: &Caller) -> ApiResult<()> {
    if caller.is_policymaker() {
        Ok(())
    } else {
        Err(ApiError::not_authorised(
            "User not authorised to access object",
        ))
    }
}

async fn global_parameters(caller: Caller) -> ApiResult {
    require_global_parameters(&caller)?;
    let shown = caller.broker.list_global_parameters();
    Ok(json(json!(shown)))
}

async fn global_parameter(caller: Caller, Path(name): Path<String>) -> ApiResult {
    require_global_parameters(&caller)?;
    let value = caller
        .broker
        .global_parameter(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(json(json!({ "value": value, "name": name })))
}

async fn put_global_parameter(
    caller: Caller,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> ApiResult {
    require_global_parameters(&caller)?;
    let body = Body::parse(&raw)?;
    body.require(&["value"])?;
    let Body(mut fields) = body;
    let value = fields.remove("value").unwrap_or_default();
    let replaced = caller.broker.set_global_parameter(&name, value);
    durable(&caller).await?;
    Ok(created_or_changed(!replaced))
}

async fn delete_global_parameter(caller: Caller, Path(name): Path<String>) -> ApiResult {
    require_global_parameters(&caller)?;
    caller
        .broker
        .clear_global_parameter(&name)
        .map_err(|_| ApiError::not_found())?;
    durable(&caller).await?;
    Ok(no_content())
}
