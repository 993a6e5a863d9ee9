//! Who is asking: HTTP Basic credentials checked against the broker's users (with the
//! loopback rule for the default user, as RabbitMQ applies it here too), and the tags
//! that decide what the caller may see and do (RabbitMQ's rules):
//!
//! - `management`: the vhosts the user has permissions in, and its own connections;
//! - `policymaker`: as `management`, and policies and parameters in those vhosts;
//! - `monitoring`: every vhost, connection and channel, and node-wide figures;
//! - `administrator`: everything, users and vhosts included.
//!
//! A user without any of these tags may not use the API at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;

use super::Api;
use super::reply::ApiError;
use crate::access::VhostRefusal;
use crate::access::permissions::Perm;
use crate::broker::Broker;

/// How long a refused login waits before its answer, as AMQP logins do: guessing
/// passwords costs the guesser, not the broker (a sleeping task).
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// The tags that open the API.
const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// An authenticated caller of the API.
pub struct Caller {
    /// The broker it asks.
    pub broker: Arc<Broker>,
    /// Its user name.
    pub user: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The rates sampled.
    pub rates: std::sync::Arc<parking_lot::RwLock<super::rates::Rates>>,
}

impl Caller {
    /// The broker's own administrator (`warren ctl`, over its owner-only socket), who
    /// sees everything; rates are not sampled for it.
    pub fn local_administrator(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            user: "warren ctl".to_owned(),
            tags: vec!["administrator".to_owned()],
            rates: std::sync::Arc::default(),
        }
    }

    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Tagged `administrator`.
    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Sees every vhost, connection and channel (`monitoring` or `administrator`).
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    /// May set policies and parameters (`policymaker` or `administrator`).
    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.has("policymaker")
    }

    /// Whether the caller has permissions in `vhost` (any record: RabbitMQ's login
    /// vhosts).
    fn logs_into(&self, vhost: &str) -> bool {
        self.broker.access().vhost_access(&self.user, vhost).is_ok()
    }

    /// Whether the caller sees `vhost` in `/api/vhosts`: a monitor sees every vhost,
    /// any other user those it has permissions in.
    pub fn sees_vhost(&self, vhost: &str) -> bool {
        self.is_monitor() || self.logs_into(vhost)
    }

    /// Whether lists of queues, exchanges, bindings and policies show what is in
    /// `vhost`: an administrator's show every vhost's, anyone else's (a monitor's too)
    /// only those of the vhosts it has permissions in.
    pub fn sees_contents(&self, vhost: &str) -> bool {
        self.is_admin() || self.logs_into(vhost)
    }

    /// Refuses a caller that is not an administrator.
    ///
    /// # Errors
    /// 401 `Not administrator user`, as RabbitMQ answers.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Refuses a caller that is not a monitor.
    ///
    /// # Errors
    /// 401 `Not monitor user`.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Refuses a caller that may not use `vhost`.
    ///
    /// # Errors
    /// 404 for a vhost that does not exist, 401 `User not authorised to access virtual
    /// host` for one the caller has no permissions in.
    pub fn require_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if self.broker.access().vhost(vhost).is_none() {
            return Err(ApiError::not_found());
        }
        if self.sees_contents(vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// Refuses a caller that may not set policies in `vhost`: an administrator may,
    /// and a policymaker with permissions there.
    ///
    /// # Errors
    /// 404 for a vhost that does not exist, 401 `User not authorised to access object`.
    pub fn require_policymaker(&self, vhost: &str) -> Result<(), ApiError> {
        if self.broker.access().vhost(vhost).is_none() {
            return Err(ApiError::not_found());
        }
        if self.is_admin() || (self.is_policymaker() && self.logs_into(vhost)) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(
                "User not authorised to access object",
            ))
        }
    }
}

impl Caller {
    /// Refuses an operation the caller's AMQP permissions in `vhost` do not allow on
    /// `name` (declare and delete: configure; publish: write; get and purge: read), as
    /// RabbitMQ's API checks them.
    ///
    /// # Errors
    /// 404 for a vhost that does not exist, 401 `Access refused.` otherwise.
    pub fn permit(&self, vhost: &str, perm: Perm, name: &str) -> Result<(), ApiError> {
        let grant = self
            .broker
            .grant(&self.user, vhost)
            .map_err(|refusal| match refusal {
                VhostRefusal::NoSuchVhost => ApiError::not_found(),
                VhostRefusal::NotPermitted => ApiError::not_authorised("Access refused."),
            })?;
        let name = if name.is_empty() { "amq.default" } else { name };
        if grant.permissions.allows(perm, name) {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Access refused."))
        }
    }
}

/// The user and password of a Basic `Authorization` header.
fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        let broker = api.broker().ok_or_else(ApiError::unavailable)?;
        let Some((user, pass)) = basic_credentials(parts) else {
            return Err(ApiError::no_credentials());
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |info| info.0.ip());
        if let Err(why) = broker.authenticate(&user, &pass, peer) {
            tracing::warn!(%user, %peer, "HTTP API login refused: {}", why.logged(&user));
            tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
            return Err(ApiError::not_authorized("Login failed"));
        }
        let tags = broker
            .access()
            .user(&user)
            .map(|u| u.tags().to_vec())
            .unwrap_or_default();
        if !tags.iter().any(|t| MANAGEMENT_TAGS.contains(&t.as_str())) {
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(Self {
            broker,
            user,
            tags,
            rates: api.rates.clone(),
        })
    }
}
