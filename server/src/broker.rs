//! The broker's shared state: its settings, virtual hosts and users, and the id counters
//! for connections and consumers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::queue::{ConnectionId, ConsumerId};
use crate::vhost::VHost;

/// A user that may log in.
#[derive(Debug, Clone)]
struct User {
    password: String,
}

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    vhosts: HashMap<String, Arc<VHost>>,
    users: HashMap<String, User>,
    next_connection: AtomicU64,
    next_consumer: AtomicU64,
}

impl Broker {
    /// A broker with the default vhost `/` and the configured default user.
    pub fn new(config: Arc<Config>) -> Self {
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_owned(), Arc::new(VHost::new("/")));
        let mut users = HashMap::new();
        users.insert(
            config.default_user.clone(),
            User {
                password: config.default_pass.clone(),
            },
        );
        Self {
            config,
            vhosts,
            users,
            next_connection: AtomicU64::new(1),
            next_consumer: AtomicU64::new(1),
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// Whether `user` with `password` may log in from `peer`. The default user may log in
    /// only from loopback unless the settings allow otherwise, as in RabbitMQ.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> bool {
        let Some(known) = self.users.get(user) else {
            return false;
        };
        if known.password != password {
            return false;
        }
        let loopback = peer.is_loopback()
            || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        user != self.config.default_user || self.config.allow_remote_default_user || loopback
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh consumer id.
    pub fn next_consumer_id(&self) -> ConsumerId {
        self.next_consumer.fetch_add(1, Ordering::Relaxed)
    }
}
