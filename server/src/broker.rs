//! The broker's shared state: its settings, data directory, virtual hosts and users, and
//! the id counters for connections and consumers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::alarms::{Alarms, Monitored};
use crate::config::Config;
use crate::policy::{Policies, PolicyError};
use crate::queue::{ConnectionId, ConsumerId};
use crate::store::{BrokerStore, StoreError, SyncTarget};
use crate::timers::Timers;
use crate::vhost::VHost;
use parking_lot::RwLock;

/// A user that may log in.
#[derive(Debug, Clone)]
struct User {
    password: String,
}

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    config: Arc<Config>,
    store: Arc<BrokerStore>,
    vhosts: HashMap<String, Arc<VHost>>,
    users: HashMap<String, User>,
    next_connection: AtomicU64,
    next_consumer: AtomicU64,
    alarms: Alarms,
    policies: Arc<RwLock<Policies>>,
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
        let vhost = VHost::new("/", Some(store.clone()), timers.clone(), policies.clone());
        let (queues, messages) = vhost.restore(&defs)?;
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
        let mut vhosts = HashMap::new();
        vhosts.insert("/".to_owned(), vhost);
        let mut users = HashMap::new();
        users.insert(
            config.default_user.clone(),
            User {
                password: config.default_pass.clone(),
            },
        );
        Ok(Self {
            config,
            store,
            vhosts,
            users,
            next_connection: AtomicU64::new(1),
            next_consumer: AtomicU64::new(1),
            alarms: Alarms::default(),
            policies,
            timers,
        })
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
        for vhost in self.vhosts.values() {
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
        self.vhosts.values().map(|v| v.memory_in_use()).sum()
    }

    /// Tells every vhost whether queued messages take more memory than the spill budget.
    pub fn set_memory_tight(&self, tight: bool) {
        for vhost in self.vhosts.values() {
            vhost.set_memory_tight(tight);
        }
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
        for queue in self.vhosts.values().flat_map(|v| v.logged_queues()) {
            queue.finish_purge();
        }
        let mut durable = true;
        for _ in 0..2 {
            let targets: Vec<Arc<dyn SyncTarget>> = self
                .vhosts
                .values()
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
    use crate::store::definitions::{Change, DefinitionStore, ExchangeDef};
    use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};

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
