//! The broker's shared state: its settings, data directory, virtual hosts and users, and
//! the id counters for connections and consumers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::access::permissions::Permissions;
use crate::access::rabbit_json::RabbitDefinitions;
use crate::access::{Access, AccessError, LoginError, VhostRefusal};
use crate::alarms::{Alarms, Monitored};
use crate::config::Config;
use crate::policy::{Policies, Policy, PolicyError};
use crate::queue::{ConnectionId, ConsumerId};
use crate::store::definitions::{Change, Definitions, PermissionDef, PolicyDef, VhostDef};
use crate::store::{BrokerStore, StoreError, SyncTarget};
use crate::timers::Timers;
use crate::vhost::VHost;
use parking_lot::RwLock;

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    store: Arc<BrokerStore>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Users, vhosts' settings and permissions.
    access: RwLock<Access>,
    /// Bumped by every change to `access`, so that connections holding permissions
    /// look them up again.
    access_epoch: AtomicU64,
    /// Open connections and channels, counted for the limits.
    live: Arc<parking_lot::Mutex<Live>>,
    /// Bumped when a user is deleted: each connection then checks that its user still
    /// exists, and closes with 320 if not.
    users_deleted: tokio::sync::watch::Sender<u64>,
    next_connection: AtomicU64,
    next_consumer: AtomicU64,
    alarms: Alarms,
    policies: Arc<RwLock<Policies>>,
    /// Global runtime parameters, by name.
    global_parameters: RwLock<BTreeMap<String, serde_json::Value>>,
    /// When the broker was opened.
    started: Instant,
    /// What the broker listens on, once its listeners are up.
    listeners: std::sync::OnceLock<Vec<Listener>>,
    /// The open connections, their channels and consumers.
    registry: Arc<crate::registry::Registry>,
    /// Messages published, delivered, acked … since start.
    messages: crate::stats::MessageCounters,
    /// The timer thread that wakes queues at their deadlines.
    timers: Arc<Timers>,
}

/// Why the broker could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy file is unreadable or invalid.
    #[error(transparent)]
    Policies(#[from] PolicyError),
    /// The default user or vhost, or one from the definitions file, could not be made.
    #[error("cannot create a user, vhost or permission: {0}")]
    Access(#[from] crate::access::AccessError),
    /// The definitions file (`--load-definitions`) is unreadable or invalid.
    #[error("definitions file {path}: {reason}")]
    Definitions {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// What a logged-in user may do in the vhost it opened: its name and tags, and its
/// permissions there as of `epoch`.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user.
    pub user: String,
    /// Which user of that name ([`crate::access::User::serial`]).
    pub user_serial: u64,
    /// Its tags.
    pub tags: Vec<String>,
    /// The vhost.
    pub vhost: String,
    /// Its permissions in the vhost (none at all once they are cleared).
    pub permissions: Arc<Permissions>,
    /// Whether it has topic permissions in the vhost (only then are routing keys
    /// checked).
    pub topic: bool,
    /// The [`Broker::access_epoch`] they were looked up at.
    pub epoch: u64,
}

/// One set of policies as the broker opens it: how a definition is validated, how it
/// is stored, and what the log calls one.
struct PolicyKind {
    validate: fn(&PolicyDef) -> Result<Policy, String>,
    change: fn(PolicyDef) -> Change,
    what: &'static str,
}

const POLICIES: PolicyKind = PolicyKind {
    validate: Policy::from_def,
    change: Change::SetPolicy,
    what: "policy",
};

const OPERATOR_POLICIES: PolicyKind = PolicyKind {
    validate: Policy::from_operator_def,
    change: Change::SetOperatorPolicy,
    what: "operator policy",
};

impl PolicyKind {
    /// The set in force at start: those `stored` (one that no longer validates is
    /// logged and left out), then those of the definitions file at `path`, stored as if
    /// set now.
    fn open(
        &self,
        store: &BrokerStore,
        access: &Access,
        path: &std::path::Path,
        stored: &[PolicyDef],
        from_file: Vec<PolicyDef>,
    ) -> Result<Vec<Policy>, OpenError> {
        let what = self.what;
        let mut valid: Vec<Policy> = stored
            .iter()
            .filter_map(|def| {
                (self.validate)(def)
                    .inspect_err(|reason| {
                        tracing::warn!(vhost = %def.vhost, policy = %def.name, %reason, "ignoring stored {what}");
                    })
                    .ok()
            })
            .collect();
        for def in from_file {
            let refused = |reason: String| OpenError::Definitions {
                path: path.to_owned(),
                reason: format!("{what} '{}': {reason}", def.name),
            };
            if access.vhost(&def.vhost).is_none() {
                return Err(refused(format!("no vhost '{}'", def.vhost)));
            }
            valid.push((self.validate)(&def).map_err(refused)?);
            store.pending().queue((self.change)(def));
        }
        Ok(valid)
    }
}

impl Broker {
    /// Opens the data directory and recovers what it holds: durable exchanges, queues,
    /// bindings and persistent messages, in the default vhost `/`.
    ///
    /// # Errors
    /// The data directory is locked by another broker, belongs to something else, or
    /// cannot be read; or the policy file is unreadable or invalid.
    pub fn open(config: Arc<Config>) -> Result<Self, OpenError> {
        let started = Instant::now();
        let policies = match &config.policies {
            Some(path) => Policies::load(path)?,
            None => Policies::default(),
        };
        let policies = Arc::new(RwLock::new(policies));
        raise_open_files_limit();
        let (store, defs, cut) = BrokerStore::open(&config.data_dir)?;
        if cut > 0 {
            tracing::warn!(lines = cut, "cut a torn tail off the definitions log");
        }
        let store = Arc::new(store);
        let timers = Timers::start().map_err(|source| StoreError::Io {
            op: "start the timer thread for",
            path: config.data_dir.clone(),
            source,
        })?;
        let timers = Arc::new(timers);
        // Read once: its access parts apply now, its topology once the vhosts are up.
        let loaded = match &config.load_definitions {
            Some(path) => Some(Self::read_definitions(path)?),
            None => None,
        };
        let access = Self::open_access(&config, &store, &defs, loaded.as_ref())?;
        Self::open_policies(&config, &store, &defs, loaded.as_ref(), &access, &policies)?;
        let global_parameters = Self::open_global_parameters(&store, &defs, loaded.as_ref());
        let mut vhosts = HashMap::new();
        let (mut queues, mut messages) = (0, 0);
        for name in access.vhost_names() {
            let vhost = VHost::new(name, Some(store.clone()), timers.clone(), policies.clone());
            let (q, m) = vhost.restore(&defs)?;
            queues += q;
            messages += m;
            vhosts.insert(name.to_owned(), vhost);
        }
        // Only now, with what restore recorded (holds it created, queues it dropped),
        // can a log directory be proven garbage.
        store.remove_orphans();
        tracing::info!(
            data_dir = %config.data_dir.display(),
            queues,
            messages,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered durable state"
        );
        let broker = Self {
            config,
            store,
            vhosts: RwLock::new(vhosts),
            access: RwLock::new(access),
            access_epoch: AtomicU64::new(0),
            live: Arc::default(),
            users_deleted: tokio::sync::watch::Sender::new(0),
            next_connection: AtomicU64::new(1),
            next_consumer: AtomicU64::new(1),
            alarms: Alarms::default(),
            policies,
            global_parameters: RwLock::new(global_parameters),
            timers,
            started,
            listeners: std::sync::OnceLock::new(),
            registry: Arc::default(),
            messages: crate::stats::MessageCounters::default(),
        };
        // The definitions file's exchanges, queues and bindings, once its vhosts are up.
        if let Some(file) = &loaded {
            for failure in broker.apply_topology(file) {
                tracing::warn!("cannot declare from the definitions file: {failure}");
            }
        }
        Ok(broker)
    }

    /// The users, vhosts and permissions the definitions hold. On the first start
    /// (definitions without vhosts, which includes a data directory from before vhosts
    /// could be made), the default vhost and the default user with every permission in
    /// it, as RabbitMQ makes them, recorded for the next commit.
    fn open_access(
        config: &Config,
        store: &BrokerStore,
        defs: &Definitions,
        loaded: Option<&RabbitDefinitions>,
    ) -> Result<Access, OpenError> {
        let (mut access, warnings) = Access::from_definitions(defs);
        for warning in warnings {
            tracing::warn!("ignoring stored access definition: {warning}");
        }
        let mut changes = Vec::new();
        if let Some(file) = loaded {
            let defs = file.access().map_err(|e| OpenError::Definitions {
                path: config.load_definitions.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
            changes = access.apply(defs)?;
            tracing::info!(changes = changes.len(), "loaded definitions");
        }
        if defs.initialized || !defs.vhosts.is_empty() || !changes.is_empty() {
            if !defs.initialized {
                changes.push(Change::Initialized);
            }
            for change in changes {
                store.pending().queue(change);
            }
            store.write_pending();
            return Ok(access);
        }
        let mut names = vec![config.default_vhost.clone()];
        // What an older data directory holds is in `/`.
        let old_data = defs.queues.iter().any(|q| q.vhost == "/")
            || defs.exchanges.iter().any(|e| e.vhost == "/");
        if old_data && config.default_vhost != "/" {
            names.push("/".to_owned());
        }
        let user = &config.default_user;
        if access.user(user).is_none() {
            let def = Access::new_user(user, &config.default_pass, vec!["administrator".into()]);
            changes.push(access.put_user(def)?);
        }
        for name in names {
            changes.push(access.put_vhost(VhostDef {
                name: name.clone(),
                description: "Default virtual host".into(),
                tags: Vec::new(),
                limits: BTreeMap::new(),
            }));
            changes.push(access.set_permissions(PermissionDef {
                user: user.clone(),
                vhost: name,
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })?);
        }
        tracing::info!(user = %user, vhost = %config.default_vhost, "first start: created the default user and vhost");
        changes.push(Change::Initialized);
        for change in changes {
            store.pending().queue(change);
        }
        store.write_pending();
        Ok(access)
    }

    /// Puts the stored run-time policies and operator policies in force, then the
    /// definitions file's (which are stored as if set now).
    fn open_policies(
        config: &Config,
        store: &BrokerStore,
        defs: &Definitions,
        loaded: Option<&RabbitDefinitions>,
        access: &Access,
        policies: &RwLock<Policies>,
    ) -> Result<(), OpenError> {
        let path = config.load_definitions.clone().unwrap_or_default();
        let (own, operator) = match loaded {
            Some(file) => {
                let operator = file
                    .operator_policies()
                    .map_err(|e| OpenError::Definitions {
                        path: path.clone(),
                        reason: format!("operator policies: {e}"),
                    })?;
                (
                    file.policies.iter().cloned().map(PolicyDef::from).collect(),
                    operator,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let own = POLICIES.open(store, access, &path, &defs.policies, own)?;
        let operator =
            OPERATOR_POLICIES.open(store, access, &path, &defs.operator_policies, operator)?;
        let mut policies = policies.write();
        policies.set(own);
        policies.set_operator(operator);
        drop(policies);
        store.write_pending();
        Ok(())
    }

    /// The stored global parameters, then the definitions file's (stored as if set
    /// now).
    fn open_global_parameters(
        store: &BrokerStore,
        defs: &Definitions,
        loaded: Option<&RabbitDefinitions>,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut parameters: BTreeMap<String, serde_json::Value> = defs
            .global_parameters
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        for def in loaded.iter().flat_map(|file| &file.global_parameters) {
            parameters.insert(def.name.clone(), def.value.clone());
            store
                .pending()
                .queue(Change::SetGlobalParameter(def.clone()));
        }
        store.write_pending();
        parameters
    }

    /// Runs `change` on the global parameters, stores what it returns (queued under
    /// their lock, so that concurrent changes are stored in the order they were made).
    ///
    /// # Errors
    /// What `change` refused.
    pub(crate) fn change_global_parameters<E>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, serde_json::Value>) -> Result<Change, E>,
    ) -> Result<(), E> {
        {
            let mut parameters = self.global_parameters.write();
            let stored = change(&mut parameters)?;
            self.store.pending().queue(stored);
        }
        self.store.write_pending();
        Ok(())
    }

    /// The global parameters, by name.
    pub fn global_parameters(&self) -> BTreeMap<String, serde_json::Value> {
        self.global_parameters.read().clone()
    }

    /// Global parameter `name`'s value, if it is set.
    pub fn global_parameter(&self, name: &str) -> Option<serde_json::Value> {
        self.global_parameters.read().get(name).cloned()
    }

    /// Reads and parses a RabbitMQ definitions file (`--load-definitions`).
    fn read_definitions(path: &std::path::Path) -> Result<RabbitDefinitions, OpenError> {
        let failed = |reason: String| OpenError::Definitions {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        RabbitDefinitions::parse(&text).map_err(|e| failed(e.to_string()))
    }

    /// The durable definitions as stored so far.
    pub(crate) fn stored_definitions(&self) -> Option<Definitions> {
        self.store.definitions_snapshot()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads the policy file again and applies what it now says to every queue; an
    /// invalid file changes nothing.
    ///
    /// # Errors
    /// The file could not be read or is invalid (the old policies stay in force).
    pub fn reload_policies(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.config.policies else {
            return Ok(());
        };
        self.policies.write().reload(path)?;
        for vhost in self.all_vhosts() {
            vhost.apply_policies();
        }
        tracing::info!(file = %path.display(), "policies reloaded");
        Ok(())
    }

    /// The resource alarms that block publishers.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// Memory the messages queues hold take (what the memory alarm
    /// watches).
    pub fn memory_in_use(&self) -> u64 {
        self.all_vhosts().iter().map(|v| v.memory_in_use()).sum()
    }

    /// Tells every vhost whether queued messages take more memory than the spill budget.
    pub fn set_memory_tight(&self, tight: bool) {
        for vhost in self.all_vhosts() {
            vhost.set_memory_tight(tight);
        }
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// A new, empty vhost `name`, not yet registered (made before any lock is taken).
    pub(crate) fn new_vhost(&self, name: &str) -> Arc<VHost> {
        VHost::new(
            name,
            Some(self.store.clone()),
            self.timers.clone(),
            self.policies.clone(),
        )
    }

    /// Makes `vhost` reachable by connections (unless one of its name already is).
    pub(crate) fn register_vhost(&self, vhost: Arc<VHost>) {
        self.vhosts
            .write()
            .entry(vhost.name().to_owned())
            .or_insert(vhost);
    }

    /// Takes vhost `name` out of reach; its connections and contents are the caller's
    /// to end.
    pub(crate) fn unregister_vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.write().remove(name)
    }

    /// Every vhost, for work over all of them (taken out of the registry's lock).
    pub fn all_vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Whether `user` with `password` may log in from `peer`. The default user may log in
    /// only from loopback unless the settings allow otherwise, as in RabbitMQ.
    ///
    /// # Errors
    /// Why not, for the log.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), Refused> {
        self.access
            .read()
            .authenticate(user, password)
            .map_err(Refused::Login)?;
        self.loopback_rule(user, peer)
    }

    /// Whether `user`, whose identity something other than a password proved (a
    /// client certificate, or the anonymous user), may log in from `peer`.
    ///
    /// # Errors
    /// No such user, or the default user from elsewhere than loopback.
    pub fn authorize(&self, user: &str, peer: IpAddr) -> Result<(), Refused> {
        if self.access.read().user(user).is_none() {
            return Err(Refused::Login(LoginError::NoSuchUser));
        }
        self.loopback_rule(user, peer)
    }

    /// The default user may log in only from loopback unless the settings allow
    /// otherwise, as in RabbitMQ.
    fn loopback_rule(&self, user: &str, peer: IpAddr) -> Result<(), Refused> {
        let loopback = peer.is_loopback()
            || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        if user == self.config.default_user && !self.config.allow_remote_default_user && !loopback {
            return Err(Refused::LoopbackOnly);
        }
        Ok(())
    }

    /// Opens a connection of `user` to `vhost`, checked as RabbitMQ's `connection.open`
    /// checks it, in its order: the broker's connection limit, the vhost (and its
    /// connection limit), the user's connection limit, the user's access to the vhost.
    /// The slot counts the connection (and its channels) until it is dropped.
    ///
    /// # Errors
    /// 530 NOT_ALLOWED with RabbitMQ's text.
    pub fn open_session(&self, user: &str, vhost: &str) -> Result<(Grant, Slot), String> {
        let mut live = self.live.lock();
        if let Some(limit) = self.config.max_connections
            && live.total + 1 > limit
        {
            return Err(format!(
                "connection refused: node connection limit ({limit}) is reached"
            ));
        }
        {
            let access = self.access.read();
            let Some(def) = access.vhost(vhost) else {
                return Err(format!("vhost {vhost} not found"));
            };
            if let Some(limit) = limit_of(&def.limits, "max-connections")
                && live.per_vhost.get(vhost).copied().unwrap_or(0) >= limit
            {
                return Err(format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
                ));
            }
            if let Some(limit) = access.user(user).and_then(|u| u.limit("max-connections"))
                && live.per_user.get(user).copied().unwrap_or(0) >= limit
            {
                return Err(format!(
                    "connection refused for user '{user}': user connection limit ({limit}) is reached"
                ));
            }
        }
        let grant = self
            .grant(user, vhost)
            .map_err(|_| format!("access to vhost '{vhost}' refused for user '{user}'"))?;
        live.total += 1;
        *live.per_vhost.entry(vhost.to_owned()).or_default() += 1;
        *live.per_user.entry(user.to_owned()).or_default() += 1;
        Ok((
            grant,
            Slot {
                live: self.live.clone(),
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                channels: 0,
            },
        ))
    }

    /// Opens a channel on the connection of `slot`, within its user's `max-channels`.
    ///
    /// # Errors
    /// 530 NOT_ALLOWED: `number of channels opened for user 'u' has reached the maximum
    /// allowed user limit of N`.
    pub fn open_channel(&self, slot: &mut Slot) -> Result<(), String> {
        let mut live = self.live.lock();
        let open = live.user_channels.get(&slot.user).copied().unwrap_or(0);
        if let Some(limit) = self
            .access
            .read()
            .user(&slot.user)
            .and_then(|u| u.limit("max-channels"))
            && open >= limit
        {
            return Err(format!(
                "number of channels opened for user '{}' has reached the maximum allowed user limit of {limit}",
                slot.user
            ));
        }
        *live.user_channels.entry(slot.user.clone()).or_default() += 1;
        slot.channels += 1;
        Ok(())
    }

    /// A channel of `slot`'s connection closed.
    pub fn close_channel(&self, slot: &mut Slot) {
        if slot.channels > 0 {
            slot.channels -= 1;
            decrement(&mut self.live.lock().user_channels, &slot.user, 1);
        }
    }

    /// The vhost's limit `name` (`max-queues`, `max-connections`), if it has one.
    pub fn vhost_limit(&self, vhost: &str, name: &str) -> Option<u64> {
        limit_of(&self.access.read().vhost(vhost)?.limits, name)
    }

    /// What `user` may do in `vhost`, for a connection opening it.
    ///
    /// # Errors
    /// The vhost does not exist or the user may not use it.
    pub fn grant(&self, user: &str, vhost: &str) -> Result<Grant, VhostRefusal> {
        let epoch = self.access_epoch.load(Ordering::Acquire);
        let access = self.access.read();
        let permissions = access.vhost_access(user, vhost)?;
        Ok(Grant {
            user: user.to_owned(),
            user_serial: access.user(user).map_or(0, |u| u.serial()),
            tags: access
                .user(user)
                .map(|u| u.tags().to_vec())
                .unwrap_or_default(),
            vhost: vhost.to_owned(),
            permissions,
            topic: access.has_topic_permissions(user, vhost),
            epoch,
        })
    }

    /// Changes when a user is deleted (see [`Broker::grant_user_exists`]).
    pub fn users_deleted(&self) -> tokio::sync::watch::Receiver<u64> {
        self.users_deleted.subscribe()
    }

    /// Tells connections that a user was deleted.
    pub(crate) fn user_deleted(&self) {
        self.users_deleted.send_modify(|n| *n += 1);
    }

    /// Whether user `name` exists.
    pub fn user_exists(&self, name: &str) -> bool {
        self.access.read().user(name).is_some()
    }

    /// Whether the user a connection was opened for still exists: not deleted, nor
    /// deleted and made again.
    pub fn grant_user_exists(&self, grant: &Grant) -> bool {
        self.access
            .read()
            .user(&grant.user)
            .is_some_and(|u| u.serial() == grant.user_serial)
    }

    /// The registry of users, vhosts and permissions, read-locked.
    pub fn access(&self) -> parking_lot::RwLockReadGuard<'_, Access> {
        self.access.read()
    }

    /// The current epoch of users and permissions: a [`Grant`] from an older one may
    /// be out of date.
    pub fn access_epoch(&self) -> u64 {
        self.access_epoch.load(Ordering::Acquire)
    }

    /// Brings `grant` up to date if users or permissions changed since it was made;
    /// one whose permissions were cleared (or whose user or vhost went) may do nothing.
    pub fn refresh(&self, grant: &mut Grant) {
        let epoch = self.access_epoch();
        if grant.epoch == epoch {
            return;
        }
        match self.grant(&grant.user, &grant.vhost) {
            // Not another user made since under the same name: that one's rights are
            // not this connection's.
            Ok(fresh) if fresh.user_serial == grant.user_serial => *grant = fresh,
            _ => {
                grant.permissions = Arc::new(Permissions::none());
                grant.epoch = epoch;
            }
        }
    }

    /// Runs `change` on the registry of users, vhosts and permissions, stores what it
    /// returns, and has connections look their permissions up again.
    ///
    /// # Errors
    /// What `change` refused.
    pub fn change_access<E>(
        &self,
        change: impl FnOnce(&mut Access) -> Result<Vec<Change>, E>,
    ) -> Result<(), E> {
        {
            let mut access = self.access.write();
            let changes = change(&mut access)?;
            self.access_epoch.fetch_add(1, Ordering::AcqRel);
            // Queued under the lock that ordered them: concurrent changes are stored in
            // the order they were made.
            for change in changes {
                self.store.pending().queue(change);
            }
        }
        self.store.write_pending();
        Ok(())
    }

    /// Runs `change` on the run-time policies and operator policies of `vhost`, stores
    /// what it returns, and puts the vhost's queues and exchanges under the policies
    /// now in force.
    ///
    /// # Errors
    /// No such vhost, or what `change` refused.
    pub(crate) fn change_policies<E: From<AccessError>>(
        &self,
        vhost: &str,
        change: impl FnOnce(&mut Policies) -> Result<Change, E>,
    ) -> Result<(), E> {
        {
            // Held so that the vhost cannot be deleted meanwhile: its deletion clears
            // its policies, and must be stored after this change, not before.
            let access = self.access.read();
            if access.vhost(vhost).is_none() {
                return Err(AccessError::NoSuchVhost(vhost.to_owned()).into());
            }
            let stored = change(&mut self.policies.write())?;
            self.store.pending().queue(stored);
        }
        self.store.write_pending();
        if let Some(vhost) = self.vhost(vhost) {
            vhost.apply_policies();
        }
        Ok(())
    }

    /// Forgets the run-time policies and operator policies of a vhost being deleted
    /// (under the registry's write lock, as part of its deletion).
    pub(crate) fn forget_policies(&self, vhost: &str) {
        self.policies.write().clear_vhost(vhost);
    }

    /// The open connections, their channels and consumers.
    pub fn registry(&self) -> &Arc<crate::registry::Registry> {
        &self.registry
    }

    /// What the group commit's rounds did so far (durations, batch sizes).
    pub fn commit_stats(&self) -> &crate::stats::CommitStats {
        self.store.commit_stats()
    }

    /// Messages published, delivered, acked … since start, over every vhost.
    pub fn message_counters(&self) -> &crate::stats::MessageCounters {
        &self.messages
    }

    /// Records what the broker listens on (once, as it starts serving).
    pub fn record_listeners(&self, listeners: Vec<Listener>) {
        let _ = self.listeners.set(listeners);
    }

    /// What the broker listens on.
    pub fn listeners(&self) -> &[Listener] {
        self.listeners.get().map_or(&[], Vec::as_slice)
    }

    /// Milliseconds since the broker was opened.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The policies in force.
    pub fn policies(&self) -> parking_lot::RwLockReadGuard<'_, Policies> {
        self.policies.read()
    }

    /// Waits for a group commit, which makes the definitions changes made so far
    /// durable; false if it could not.
    pub async fn commit_definitions(&self) -> bool {
        let (done, durable) = oneshot::channel();
        self.store.commit(Vec::new(), Some(done));
        durable.await.unwrap_or(false)
    }

    /// Asks the group commit to make the logs of `targets` durable; `done` hears whether
    /// it did.
    pub fn commit(&self, targets: Vec<Arc<dyn SyncTarget>>, done: Option<oneshot::Sender<bool>>) {
        self.store.commit(targets, done);
    }

    /// Stops the timers and makes everything written so far durable (at shutdown).
    /// Two rounds: what the first round's completions write (the source acks of moved
    /// messages, once their copies are durable) is made durable by the second, so that
    /// a clean restart does not move those messages again.
    pub async fn sync_all(&self) -> bool {
        // Nothing may move messages meanwhile.
        let timers = self.timers.clone();
        let _ = tokio::task::spawn_blocking(move || timers.stop()).await;
        let vhosts = self.all_vhosts();
        for queue in vhosts.iter().flat_map(|v| v.logged_queues()) {
            queue.finish_purge();
        }
        let mut durable = true;
        for _ in 0..2 {
            let targets: Vec<Arc<dyn SyncTarget>> = vhosts
                .iter()
                .flat_map(|v| v.logged_queues())
                .flat_map(|q| q.sync_targets())
                .collect();
            let (done, synced) = oneshot::channel();
            self.store.commit(targets, Some(done));
            durable &= synced.await.unwrap_or(false);
        }
        durable
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

impl Monitored for Broker {
    fn alarms(&self) -> &Alarms {
        Broker::alarms(self)
    }

    fn memory_in_use(&self) -> u64 {
        Broker::memory_in_use(self)
    }

    fn set_memory_tight(&self, tight: bool) {
        Broker::set_memory_tight(self, tight);
    }
}

/// A limit in a definitions' limits map: a non-negative value (a negative one is no
/// limit, as in RabbitMQ).
fn limit_of(limits: &std::collections::BTreeMap<String, i64>, name: &str) -> Option<u64> {
    limits.get(name).and_then(|&v| u64::try_from(v).ok())
}

/// Open connections, by vhost and user, and open channels by user.
#[derive(Debug, Default)]
struct Live {
    total: u64,
    per_vhost: HashMap<String, u64>,
    per_user: HashMap<String, u64>,
    user_channels: HashMap<String, u64>,
}

fn decrement(counts: &mut HashMap<String, u64>, key: &str, by: u64) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(by);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A connection as the limits count it, with its open channels; dropping it (the
/// connection ends) counts them out.
#[derive(Debug)]
pub struct Slot {
    live: Arc<parking_lot::Mutex<Live>>,
    user: String,
    vhost: String,
    channels: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.live.lock();
        live.total = live.total.saturating_sub(1);
        decrement(&mut live.per_vhost, &self.vhost, 1);
        decrement(&mut live.per_user, &self.user, 1);
        decrement(&mut live.user_channels, &self.user, self.channels);
    }
}

/// Why a login was refused, for the log (the client is told only that it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Unknown user or wrong password.
    #[error(transparent)]
    Login(#[from] LoginError),
    /// The default user may log in only from loopback.
    #[error("user can only log in via localhost")]
    LoopbackOnly,
}

impl Refused {
    /// The reason as RabbitMQ logs it after `<MECHANISM> login refused: `: an unknown
    /// user reads as a wrong password, as there.
    pub fn logged(&self, user: &str) -> String {
        match self {
            Self::Login(LoginError::NoSuchUser | LoginError::BadPassword) => {
                format!("user '{user}' - invalid credentials")
            }
            Self::Login(LoginError::BlankPassword) => format!(
                "user '{user}' attempted to log in with a blank password, which is prohibited"
            ),
            Self::LoopbackOnly => format!("user '{user}' can only connect via localhost"),
        }
    }
}

/// One listening socket, as the management API lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// `amqp`, `amqp/ssl` or `http`, as RabbitMQ names them.
    pub protocol: &'static str,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, as RabbitMQ's
/// and LavinMQ's packages do: each active durable queue holds about two descriptors and
/// each connection one, and the usual soft limit of 1024 runs out near 500 queues (then
/// every open fails with EMFILE). Returns the (old, new) soft limits, or `None` when the
/// limit could not be read or raised (logged; the broker runs on with the old one).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let old = limit.current.unwrap_or(u64::MAX);
    // An unlimited hard limit cannot be the soft one for descriptors (Linux refuses more
    // than fs.nr_open): then ask for a large finite number.
    let candidates = match limit.maximum {
        Some(max) => vec![max],
        None => vec![1 << 20, 1 << 16],
    };
    if candidates.iter().all(|&want| want <= old) {
        return Some((old, old));
    }
    for want in candidates {
        let new = Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => {
                tracing::debug!(old, new = want, "raised the open files limit");
                return Some((old, want));
            }
            Err(error) => {
                tracing::debug!(%error, want, "cannot raise the open files limit that far");
            }
        }
    }
    tracing::warn!(
        soft = old,
        "cannot raise the open files limit; each durable queue holds about two descriptors"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueDeclare;
    use crate::store::definitions::{Change, DefinitionStore, ExchangeDef};
    use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};

    #[tokio::test]
    async fn a_queue_of_a_vhost_made_again_survives_the_old_vhosts_clean_up() {
        let dir =
            std::env::temp_dir().join(format!("warren-broker-revhost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Arc::new(Config {
            data_dir: dir.clone(),
            ..Config::default()
        });
        let declare = |broker: &Broker| {
            let vhost = broker.vhost("v").expect("vhost v");
            let declare = QueueDeclare {
                name: "q".into(),
                server_named: false,
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
            };
            vhost.declare_queue(declare, 0).expect("declare q");
            let settings = crate::exchange::ExchangeSettings {
                kind: crate::exchange::ExchangeKind::Fanout,
                durable: true,
                auto_delete: true,
                internal: false,
                delayed: false,
                arguments: FieldTable::default(),
            };
            vhost
                .declare_exchange("x", false, settings)
                .expect("declare x");
            vhost
                .bind("q", "x", "", FieldTable::default(), 0)
                .expect("bind q to x");
        };
        let broker = Broker::open(config.clone()).expect("open");
        broker.add_vhost("v", "").expect("add v");
        declare(&broker);
        // `delete_vhost`'s steps, with the old vhost emptied only after the name is in
        // use again and holds a new `q`: as when its clean-up is slow.
        broker
            .change_access(|access| Ok::<_, AccessError>(vec![access.delete_vhost("v")?]))
            .expect("delete v");
        let old = broker.unregister_vhost("v").expect("v was registered");
        broker.add_vhost("v", "").expect("add v again");
        declare(&broker);
        old.delete_contents();
        assert!(broker.commit_definitions().await);
        drop((old, broker));
        let broker = Broker::open(config).expect("reopen");
        let vhost = broker.vhost("v").expect("vhost v");
        assert!(vhost.has_queue("q"), "the new q is stored");
        assert!(vhost.exchange("x").is_ok(), "and the new x");
        drop(broker);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let before = getrlimit(Resource::Nofile);
        // Start from a low soft limit, as a default system gives.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(4096.min(before.current.unwrap_or(4096))),
                maximum: before.maximum,
            },
        )
        .expect("lower the soft limit");
        let (_, new) = raise_open_files_limit().expect("raised");
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, Some(new));
        if let Some(max) = limit.maximum {
            assert_eq!(new, max);
        }
    }

    #[test]
    fn a_hold_created_during_restore_keeps_its_log() {
        let dir = std::env::temp_dir().join(format!("warren-broker-hold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A durable delayed exchange recorded without its hold (as a crash between the two
        // records leaves it): restore gives it a new hold, with a new log.
        let (mut defs, _, _) = DefinitionStore::open(&dir).expect("definitions");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("direct".into()),
        );
        defs.record(&Change::PutExchange(ExchangeDef {
            vhost: "/".into(),
            name: "later".into(),
            kind: "x-delayed-message".into(),
            auto_delete: false,
            internal: false,
            arguments,
        }))
        .expect("record");
        defs.sync().expect("sync");
        drop(defs);
        let config = Arc::new(Config {
            data_dir: dir.clone(),
            ..Config::default()
        });
        let broker = Broker::open(config).expect("open");
        let logs = std::fs::read_dir(dir.join("queues"))
            .expect("queues dir")
            .count();
        assert_eq!(
            logs, 1,
            "the new hold's log must not be removed as an orphan"
        );
        drop(broker);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
