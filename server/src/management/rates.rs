//! Rates, as RabbitMQ's management plugin samples them: every counter and length is
//! read every `--stats-interval-ms` (five seconds, RabbitMQ's
//! `collect_statistics_interval`), and a rate is the change between the last two
//! samples per second. The sampler runs off the message path; it
//! reads counters and each queue's lengths, and holds no lock while the broker works.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use std::sync::atomic::Ordering::Relaxed;

use crate::broker::Broker;
use crate::queue::{ConnectionId, Queue};
use crate::stats::Tally;

/// What a sample is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The whole broker.
    Overview,
    /// A vhost.
    Vhost(String),
    /// A queue, by vhost and name.
    Queue(String, String),
    /// An exchange, by vhost and name (`""`: the default exchange).
    Exchange(String, String),
    /// A channel, by connection and number.
    Channel(ConnectionId, u16),
    /// A connection.
    Connection(ConnectionId),
}

/// One reading of every subject's counters and lengths, by field name.
#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    values: HashMap<Subject, HashMap<&'static str, u64>>,
    groups: Vec<GroupPartition>,
}

/// One partition of a consumer group, as the last sample saw it.
#[derive(Debug, Clone)]
pub struct GroupPartition {
    /// The queue's vhost.
    pub vhost: String,
    /// The partitioned queue or stream.
    pub queue: String,
    /// The group (empty for a stream's default group or an unnamed one).
    pub group: String,
    /// The partition's index.
    pub partition: u16,
    /// Messages not yet delivered to the group (a stream: not yet settled by it).
    pub lag: u64,
    /// Deliveries from it not yet settled.
    pub unacked: u64,
    /// The group's members.
    pub members: u64,
    /// Times the group's partitions were assigned afresh.
    pub rebalances: u64,
}

/// Each partition of `queue`'s groups.
fn group_partitions(vhost: &str, queue: &Queue) -> Vec<GroupPartition> {
    let name = queue.name().to_string();
    let mut rows = Vec::new();
    if let Some(g) = queue.group_snapshot() {
        for p in &g.partition_states {
            rows.push(GroupPartition {
                vhost: vhost.to_owned(),
                queue: name.clone(),
                group: g.group.clone().unwrap_or_default(),
                partition: p.index,
                lag: p.depth,
                unacked: u64::from(p.unacked),
                members: g.members.len() as u64,
                rebalances: g.rebalances,
            });
        }
    }
    for g in queue.stream_groups() {
        for p in &g.partitions {
            rows.push(GroupPartition {
                vhost: vhost.to_owned(),
                queue: name.clone(),
                group: g.group.clone(),
                partition: p.index,
                lag: p.lag,
                unacked: u64::from(p.unsettled),
                members: g.members.len() as u64,
                rebalances: g.rebalances,
            });
        }
    }
    rows
}

/// The last two samples.
#[derive(Debug, Default)]
pub struct Rates {
    previous: Sample,
    last: Sample,
}

impl Rates {
    /// The rate of `field` of `subject` per second over the last two samples; 0.0 until
    /// there are two.
    pub fn rate(&self, subject: &Subject, field: &str) -> f64 {
        self.rater(subject)(field)
    }

    /// The rates of `subject`'s fields: its two samples are looked up once.
    fn rater(&self, subject: &Subject) -> impl Fn(&str) -> f64 {
        let seconds = match (self.previous.at, self.last.at) {
            (Some(then), Some(now)) => now.duration_since(then).as_secs_f64(),
            _ => 0.0,
        };
        let before = self.previous.values.get(subject);
        let after = self.last.values.get(subject);
        move |field| {
            let value = |sample: Option<&HashMap<&'static str, u64>>| {
                sample.and_then(|fields| fields.get(field)).copied()
            };
            match (value(before), value(after)) {
                (Some(before), Some(after)) if seconds > 0.0 => {
                    // Lengths go down as well as up.
                    let change = after as f64 - before as f64;
                    (change / seconds * 10.0).round() / 10.0
                }
                _ => 0.0,
            }
        }
    }

    /// Every consumer group's partitions, as the last sample saw them.
    pub fn group_partitions(&self) -> &[GroupPartition] {
        &self.last.groups
    }

    /// Each queue of the last sample, with its fields (lengths, consumers, counters).
    pub fn each_queue(&self, mut each: impl FnMut(&str, &str, &HashMap<&'static str, u64>)) {
        for (subject, fields) in &self.last.values {
            if let Subject::Queue(vhost, name) = subject {
                each(vhost, name, fields);
            }
        }
    }

    /// `{field: value, field_details: {rate}}` for each of `fields`.
    pub fn with_rates(
        &self,
        subject: &Subject,
        fields: &[(&'static str, u64)],
    ) -> Map<String, Value> {
        let rate = self.rater(subject);
        let mut out = Map::new();
        for &(name, value) in fields {
            out.insert(name.to_owned(), json!(value));
            out.insert(format!("{name}_details"), json!({ "rate": rate(name) }));
        }
        out
    }
}

/// The fields of a broker's, vhost's or channel's `message_stats`.
pub fn message_fields(tally: &Tally) -> Vec<(&'static str, u64)> {
    let mut fields: Vec<(&'static str, u64)> = tally.fields()[..11].to_vec();
    fields.push(("deliver_get", tally.deliver_get()));
    fields
}

/// The fields of a queue's `message_stats`, from its own counters.
pub fn queue_message_fields(queue: &Queue) -> Vec<(&'static str, u64)> {
    let c = queue.counters();
    let deliver = queue.flow().handed();
    let get = c.get.load(Relaxed);
    vec![
        ("publish", c.publish.load(Relaxed)),
        ("deliver", deliver),
        ("get", get),
        ("deliver_get", deliver + get),
        ("redeliver", c.redeliver.load(Relaxed)),
        ("ack", c.ack.load(Relaxed)),
    ]
}

/// A queue's lengths.
pub fn queue_lengths(queue: &Queue) -> [(&'static str, u64); 3] {
    let ready = u64::from(queue.message_count());
    let unacked = queue.unacked_count();
    [
        ("messages", ready + unacked),
        ("messages_ready", ready),
        ("messages_unacknowledged", unacked),
    ]
}

/// Reads every subject now.
fn sample(broker: &Broker) -> Sample {
    let mut values: HashMap<Subject, HashMap<&'static str, u64>> = HashMap::new();
    let mut groups = Vec::new();
    let mut totals = [0u64; 3];
    for vhost in broker.all_vhosts() {
        let mut lengths = [0u64; 3];
        for queue in vhost.queues() {
            let subject = Subject::Queue(vhost.name().to_owned(), queue.name().to_string());
            let mut fields: HashMap<&'static str, u64> =
                queue_message_fields(&queue).into_iter().collect();
            for (i, (name, value)) in queue_lengths(&queue).into_iter().enumerate() {
                fields.insert(name, value);
                lengths[i] += value;
            }
            fields.insert("consumers", u64::from(queue.consumer_count()));
            values.insert(subject, fields);
            groups.extend(group_partitions(vhost.name(), &queue));
        }
        let mut fields: HashMap<&'static str, u64> =
            message_fields(&vhost.message_counters().read())
                .into_iter()
                .collect();
        for (i, name) in ["messages", "messages_ready", "messages_unacknowledged"]
            .into_iter()
            .enumerate()
        {
            fields.insert(name, lengths[i]);
            totals[i] += lengths[i];
        }
        values.insert(Subject::Vhost(vhost.name().to_owned()), fields);
        let exchanges = vhost.exchanges();
        let counted = exchanges
            .iter()
            .map(|x| (x.name().to_string(), x.counters().read()))
            .chain([(String::new(), vhost.default_exchange_counters().read())]);
        for (name, (publish_in, publish_out)) in counted {
            if publish_in > 0 {
                values.insert(
                    Subject::Exchange(vhost.name().to_owned(), name),
                    HashMap::from([("publish_in", publish_in), ("publish_out", publish_out)]),
                );
            }
        }
    }
    let mut octets: HashMap<String, (u64, u64)> = HashMap::new();
    for connection in broker.registry().connections() {
        let (recv, send) = (
            connection.recv_oct.load(Relaxed),
            connection.send_oct.load(Relaxed),
        );
        let vhost = octets.entry(connection.facts.vhost.clone()).or_default();
        vhost.0 += recv;
        vhost.1 += send;
        values.insert(
            Subject::Connection(connection.id),
            HashMap::from([("recv_oct", recv), ("send_oct", send)]),
        );
        for channel in connection.channels() {
            values.insert(
                Subject::Channel(connection.id, channel.number),
                message_fields(&channel.messages.read())
                    .into_iter()
                    .collect(),
            );
        }
    }
    for (vhost, (recv, send)) in octets {
        if let Some(fields) = values.get_mut(&Subject::Vhost(vhost)) {
            fields.insert("recv_oct", recv);
            fields.insert("send_oct", send);
        }
    }
    let mut overview: HashMap<&'static str, u64> =
        message_fields(&broker.message_counters().read())
            .into_iter()
            .collect();
    for (i, name) in ["messages", "messages_ready", "messages_unacknowledged"]
        .into_iter()
        .enumerate()
    {
        overview.insert(name, totals[i]);
    }
    values.insert(Subject::Overview, overview);
    Sample {
        at: Some(Instant::now()),
        values,
        groups,
    }
}

/// Samples every `interval` while the broker runs.
pub async fn run(broker: Weak<Broker>, rates: std::sync::Arc<RwLock<Rates>>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let next = tokio::task::spawn_blocking(move || sample(&broker)).await;
        let Ok(next) = next else {
            return;
        };
        let mut rates = rates.write();
        rates.previous = std::mem::replace(&mut rates.last, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_the_change_per_second_between_the_last_two_samples() {
        let start = Instant::now();
        let at = |secs| Some(start + Duration::from_secs(secs));
        let subject = Subject::Overview;
        let reading =
            |publish| HashMap::from([(subject.clone(), HashMap::from([("publish", publish)]))]);
        let rates = Rates {
            previous: Sample {
                at: at(0),
                values: reading(10),
                groups: Vec::new(),
            },
            last: Sample {
                at: at(5),
                values: reading(23),
                groups: Vec::new(),
            },
        };
        assert!((rates.rate(&subject, "publish") - 2.6).abs() < 1e-9);
        assert_eq!(rates.rate(&subject, "ack"), 0.0);
        let shown = rates.with_rates(&subject, &[("publish", 23)]);
        assert_eq!(shown["publish_details"]["rate"], 2.6);
        let draining = Rates {
            previous: Sample {
                at: at(0),
                values: reading(23),
                groups: Vec::new(),
            },
            last: Sample {
                at: at(5),
                values: reading(13),
                groups: Vec::new(),
            },
        };
        assert!((draining.rate(&subject, "publish") + 2.0).abs() < 1e-9);
    }
}
