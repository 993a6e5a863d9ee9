//! Who is connected: an entry per open AMQP connection, with its channels and their
//! consumers, for the management API and metrics. The connection's task owns its
//! state; the entry holds copies the task keeps current (counters, a channel's prefetch
//! and unacked count) and a way to ask the task to close the connection. Entries come
//! and go with connections; nothing on the message path takes the registry's lock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::queue::{ConnectionId, ConsumerId};

/// What is fixed about a connection once it is open.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The client's address.
    pub peer: SocketAddr,
    /// The broker's address it connected to.
    pub local: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The SASL mechanism it used.
    pub auth_mechanism: String,
    /// Whether it is TLS.
    pub tls: bool,
    /// The client's properties, as plain JSON.
    pub client_properties: serde_json::Map<String, Value>,
    /// Milliseconds since the epoch when it opened.
    pub connected_at_ms: u64,
    /// Negotiated largest frame.
    pub frame_max: u32,
    /// Negotiated highest channel number.
    pub channel_max: u16,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
}

/// One open connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// Its id.
    pub id: ConnectionId,
    /// What is fixed about it.
    pub facts: ConnectionFacts,
    /// Bytes read from the client.
    pub recv_oct: AtomicU64,
    /// Bytes written to the client.
    pub send_oct: AtomicU64,
    /// Reads from the socket.
    pub recv_cnt: AtomicU64,
    /// Writes to the socket.
    pub send_cnt: AtomicU64,
    /// Reading is paused by a resource alarm.
    pub blocked: AtomicBool,
    channels: Mutex<BTreeMap<u16, Arc<ChannelEntry>>>,
    close: watch::Sender<Option<String>>,
}

impl ConnectionEntry {
    /// RabbitMQ's name for it: `"peer -> local"`.
    pub fn name(&self) -> String {
        format!("{} -> {}", self.facts.peer, self.facts.local)
    }

    /// Its open channels, by number.
    pub fn channels(&self) -> Vec<Arc<ChannelEntry>> {
        self.channels.lock().values().cloned().collect()
    }

    /// How many channels are open.
    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }

    /// Adds an open channel; its entry, for the channel to keep current.
    pub fn open_channel(&self, number: u16) -> Arc<ChannelEntry> {
        let entry = Arc::new(ChannelEntry::new(number));
        self.channels.lock().insert(number, entry.clone());
        entry
    }

    /// Removes a closed channel.
    pub fn close_channel(&self, number: u16) {
        self.channels.lock().remove(&number);
    }

    /// Asks the connection to close with `320 CONNECTION_FORCED - <reason>`.
    pub fn request_close(&self, reason: String) {
        self.close.send_replace(Some(reason));
    }

    /// Watches for someone asking the connection to close: the reason, once asked.
    pub fn close_requested(&self) -> watch::Receiver<Option<String>> {
        self.close.subscribe()
    }
}

/// One open channel.
#[derive(Debug)]
pub struct ChannelEntry {
    /// Its number.
    pub number: u16,
    /// Its per-consumer prefetch (`basic.qos` global=false).
    pub prefetch: AtomicU32,
    /// Its shared prefetch (`basic.qos` global=true).
    pub global_prefetch: AtomicU32,
    /// Deliveries awaiting an ack.
    pub unacked: AtomicU32,
    /// Publishes not yet confirmed.
    pub unconfirmed: AtomicU32,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In a transaction.
    pub transactional: AtomicBool,
    /// What it counted, as of its last batch.
    pub messages: crate::stats::MessageCounters,
    consumers: Mutex<Vec<ConsumerEntry>>,
}

/// One consumer, as the management API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerEntry {
    /// Its id.
    pub id: ConsumerId,
    /// Its tag.
    pub tag: String,
    /// The queue it consumes from.
    pub queue: String,
    /// Its deliveries need acks.
    pub ack_required: bool,
    /// It is exclusive.
    pub exclusive: bool,
    /// Its prefetch when it started.
    pub prefetch: u32,
    /// Its arguments, as plain JSON.
    pub arguments: serde_json::Map<String, Value>,
}

impl ChannelEntry {
    fn new(number: u16) -> Self {
        Self {
            number,
            prefetch: AtomicU32::new(0),
            global_prefetch: AtomicU32::new(0),
            unacked: AtomicU32::new(0),
            unconfirmed: AtomicU32::new(0),
            confirm: AtomicBool::new(false),
            transactional: AtomicBool::new(false),
            messages: crate::stats::MessageCounters::default(),
            consumers: Mutex::new(Vec::new()),
        }
    }

    /// Its consumers.
    pub fn consumers(&self) -> Vec<ConsumerEntry> {
        self.consumers.lock().clone()
    }

    /// Records a consumer that started.
    pub fn add_consumer(&self, consumer: ConsumerEntry) {
        self.consumers.lock().push(consumer);
    }

    /// Forgets a consumer that ended.
    pub fn remove_consumer(&self, id: ConsumerId) {
        self.consumers.lock().retain(|c| c.id != id);
    }

    /// Sets a relaxed counter (the channel's task is its only writer).
    pub fn set(counter: &AtomicU32, value: usize) {
        counter.store(u32::try_from(value).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

/// Every open connection.
#[derive(Debug, Default)]
pub struct Registry {
    connections: Mutex<HashMap<ConnectionId, Arc<ConnectionEntry>>>,
    /// Connections and channels opened and closed, logins tried, since start.
    pub churn: crate::stats::ConnectionChurn,
}

impl Registry {
    /// Adds a connection that just opened; its entry, removed again when the returned
    /// guard drops.
    pub fn register(self: &Arc<Self>, id: ConnectionId, facts: ConnectionFacts) -> Registered {
        let entry = Arc::new(ConnectionEntry {
            id,
            facts,
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            recv_cnt: AtomicU64::new(0),
            send_cnt: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            channels: Mutex::new(BTreeMap::new()),
            close: watch::Sender::new(None),
        });
        self.connections.lock().insert(id, entry.clone());
        self.churn
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        Registered {
            registry: self.clone(),
            entry,
        }
    }

    /// Every open connection.
    pub fn connections(&self) -> Vec<Arc<ConnectionEntry>> {
        self.connections.lock().values().cloned().collect()
    }

    /// The connection of that name, if open.
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.connections().into_iter().find(|c| c.name() == name)
    }
}

/// A connection's place in the registry, for as long as it is open.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    /// The entry.
    pub entry: Arc<ConnectionEntry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.connections.lock().remove(&self.entry.id);
        let churn = &self.registry.churn;
        churn.connections_closed.fetch_add(1, Ordering::Relaxed);
        let channels = self.entry.channel_count() as u64;
        churn.channels_closed.fetch_add(channels, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ConnectionFacts {
        ConnectionFacts {
            peer: "127.0.0.1:5555".parse().expect("addr"),
            local: "127.0.0.1:5672".parse().expect("addr"),
            user: "guest".into(),
            vhost: "/".into(),
            auth_mechanism: "PLAIN".into(),
            tls: false,
            client_properties: serde_json::Map::new(),
            connected_at_ms: 0,
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
        }
    }

    #[test]
    fn a_connection_is_listed_while_open_with_its_channels() {
        let registry = Arc::new(Registry::default());
        let registered = registry.register(7, facts());
        let entry = registered.entry.clone();
        assert_eq!(entry.name(), "127.0.0.1:5555 -> 127.0.0.1:5672");
        assert!(
            registry
                .by_name("127.0.0.1:5555 -> 127.0.0.1:5672")
                .is_some()
        );
        let channel = entry.open_channel(1);
        channel.add_consumer(ConsumerEntry {
            id: 3,
            tag: "c".into(),
            queue: "q".into(),
            ack_required: true,
            exclusive: false,
            prefetch: 10,
            arguments: serde_json::Map::new(),
        });
        assert_eq!(entry.channels()[0].consumers().len(), 1);
        channel.remove_consumer(3);
        assert!(channel.consumers().is_empty());
        entry.close_channel(1);
        assert_eq!(entry.channel_count(), 0);
        let mut asked = entry.close_requested();
        entry.request_close("bye".into());
        assert_eq!(asked.borrow_and_update().as_deref(), Some("bye"));
        drop(registered);
        assert!(registry.connections().is_empty());
    }
}
