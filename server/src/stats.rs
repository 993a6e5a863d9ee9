//! Message counters, as RabbitMQ's `message_stats` and `rabbitmq_global_*` count
//! them. A channel counts in a plain [`Tally`] as it works (no atomics, no locks on
//! the message path) and, after each batch, adds what it counted since to the shared
//! [`MessageCounters`] of the broker and of its vhost: one atomic add per counter that
//! moved, per batch.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What one channel counted (cumulative since it opened).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Messages published.
    pub publish: u64,
    /// Publisher confirms sent.
    pub confirm: u64,
    /// Mandatory publishes that routed nowhere and were returned.
    pub return_unroutable: u64,
    /// Other publishes that routed nowhere.
    pub drop_unroutable: u64,
    /// Deliveries to consumers that ack.
    pub deliver: u64,
    /// Deliveries to consumers that do not ack.
    pub deliver_no_ack: u64,
    /// `basic.get`s answered with a message to ack.
    pub get: u64,
    /// `basic.get`s with `no_ack` answered with a message.
    pub get_no_ack: u64,
    /// `basic.get`s that found nothing.
    pub get_empty: u64,
    /// Deliveries (or gets) of a message delivered before.
    pub redeliver: u64,
    /// Acks received.
    pub ack: u64,
    /// Messages published on channels in confirm or transaction mode.
    pub publish_confirm: u64,
    /// Destination queues the messages published were routed to (one per queue).
    pub routed: u64,
}

impl Tally {
    /// The fields with RabbitMQ's names, in its order; the last two are not part of
    /// `message_stats`.
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("get_empty", self.get_empty),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
            ("publish_confirm", self.publish_confirm),
            ("routed", self.routed),
        ]
    }

    /// `deliver_get`: every message handed out, by consume or by get.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// Counts a delivery to a consumer.
    pub fn delivered(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.deliver_no_ack += 1;
        } else {
            self.deliver += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    /// Counts a `basic.get` answered with a message.
    pub fn got(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.get_no_ack += 1;
        } else {
            self.get += 1;
        }
        self.redeliver += u64::from(redelivered);
    }
}

/// Shared counters of a broker or vhost, added to by channels after each batch.
#[derive(Debug, Default)]
pub struct MessageCounters {
    publish: AtomicU64,
    confirm: AtomicU64,
    return_unroutable: AtomicU64,
    drop_unroutable: AtomicU64,
    deliver: AtomicU64,
    deliver_no_ack: AtomicU64,
    get: AtomicU64,
    get_no_ack: AtomicU64,
    get_empty: AtomicU64,
    redeliver: AtomicU64,
    ack: AtomicU64,
    publish_confirm: AtomicU64,
    routed: AtomicU64,
}

impl MessageCounters {
    fn cells(&self) -> [&AtomicU64; 13] {
        [
            &self.publish,
            &self.confirm,
            &self.return_unroutable,
            &self.drop_unroutable,
            &self.deliver,
            &self.deliver_no_ack,
            &self.get,
            &self.get_no_ack,
            &self.get_empty,
            &self.redeliver,
            &self.ack,
            &self.publish_confirm,
            &self.routed,
        ]
    }

    /// Adds what a channel counted between `before` and `now`.
    pub fn add(&self, before: &Tally, now: &Tally) {
        for (cell, ((_, was), (_, is))) in self
            .cells()
            .into_iter()
            .zip(before.fields().into_iter().zip(now.fields()))
        {
            if is > was {
                cell.fetch_add(is - was, Relaxed);
            }
        }
    }

    /// Replaces the counts (a channel's own, which only it writes).
    pub fn store(&self, now: &Tally) {
        for (cell, (_, value)) in self.cells().into_iter().zip(now.fields()) {
            cell.store(value, Relaxed);
        }
    }

    /// The counts now.
    pub fn read(&self) -> Tally {
        let [
            publish,
            confirm,
            return_unroutable,
            drop_unroutable,
            deliver,
            deliver_no_ack,
            get,
            get_no_ack,
            get_empty,
            redeliver,
            ack,
            publish_confirm,
            routed,
        ] = self.cells().map(|cell| cell.load(Relaxed));
        Tally {
            publish,
            confirm,
            return_unroutable,
            drop_unroutable,
            deliver,
            deliver_no_ack,
            get,
            get_no_ack,
            get_empty,
            redeliver,
            ack,
            publish_confirm,
            routed,
        }
    }
}

/// Queues declared, created and deleted (RabbitMQ's churn counters).
#[derive(Debug, Default)]
pub struct QueueChurn {
    /// Non-passive declares, redeclares included.
    pub declared: AtomicU64,
    /// Declares that made a queue.
    pub created: AtomicU64,
    /// Queues deleted, however.
    pub deleted: AtomicU64,
}

/// Connections and channels opened and closed, and logins tried.
#[derive(Debug, Default)]
pub struct ConnectionChurn {
    /// Connections opened.
    pub connections_opened: AtomicU64,
    /// Connections closed.
    pub connections_closed: AtomicU64,
    /// Channels opened.
    pub channels_opened: AtomicU64,
    /// Channels closed.
    pub channels_closed: AtomicU64,
    /// Logins tried.
    pub auth_attempts: AtomicU64,
    /// Logins that succeeded.
    pub auth_succeeded: AtomicU64,
    /// Logins refused.
    pub auth_failed: AtomicU64,
}

/// A histogram with fixed bucket bounds, as Prometheus counts one. Written by one
/// thread (the commit thread), read by any.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one past every bound.
    counts: Vec<AtomicU64>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Counts one observation (by its only writer).
    pub fn observe(&self, value: f64) {
        let at = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[at].fetch_add(1, Relaxed);
        let sum = f64::from_bits(self.sum.load(Relaxed)) + value;
        self.sum.store(sum.to_bits(), Relaxed);
    }

    /// The cumulative count at each bound (the last at `+Inf`), the sum and the count.
    pub fn read(&self) -> (Vec<(Option<f64>, u64)>, f64, u64) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            total += count.load(Relaxed);
            buckets.push((self.bounds.get(i).copied(), total));
        }
        (buckets, f64::from_bits(self.sum.load(Relaxed)), total)
    }
}

/// What the group commit did, round by round.
#[derive(Debug)]
pub struct CommitStats {
    /// How long a round took: writes and fsyncs of the definitions and every log in it.
    pub duration: Histogram,
    /// Requests (a connection's batch, a move) a round served.
    pub requests: Histogram,
    /// Logs a round synced.
    pub logs: Histogram,
    /// How long the fsyncs of a round's logs took (one observation per sync step).
    pub sync: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        const SECONDS: &[f64] = &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
        Self {
            duration: Histogram::new(SECONDS),
            requests: Histogram::new(SIZES),
            logs: Histogram::new(SIZES),
            sync: Histogram::new(SECONDS),
        }
    }
}

/// An exchange's counters, as RabbitMQ's `publish_in` and `publish_out`: messages
/// published into it, and the copies it routed to queues (one per queue).
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Messages published to the exchange.
    pub publish_in: AtomicU64,
    /// Copies routed to queues.
    pub publish_out: AtomicU64,
}

impl ExchangeCounters {
    /// Adds `publish_in` messages in and `publish_out` copies out.
    pub fn add(&self, publish_in: u64, publish_out: u64) {
        self.publish_in.fetch_add(publish_in, Relaxed);
        self.publish_out.fetch_add(publish_out, Relaxed);
    }

    /// `(publish_in, publish_out)`.
    pub fn read(&self) -> (u64, u64) {
        (
            self.publish_in.load(Relaxed),
            self.publish_out.load(Relaxed),
        )
    }
}

/// What a channel counted for the exchange it publishes to, not yet added to that
/// exchange's [`ExchangeCounters`]: a publisher keeps to one exchange, so its
/// publishes are counted in plain integers and added once per batch (or when it turns
/// to another exchange).
#[derive(Debug, Default)]
pub struct ExchangeTally {
    /// The exchange's name (`""`: the default exchange).
    pub exchange: amqp_codec::ShortStr,
    /// Messages published to it since the last flush.
    pub publish_in: u64,
    /// Copies it routed since the last flush.
    pub publish_out: u64,
}

impl ExchangeTally {
    /// Counts one message published to `exchange` and routed to `queues` queues;
    /// returns what was counted for another exchange, to be flushed first.
    pub fn count(
        &mut self,
        exchange: &str,
        queues: usize,
    ) -> Option<(amqp_codec::ShortStr, u64, u64)> {
        let earlier = if *self.exchange == *exchange {
            None
        } else {
            let name = std::mem::replace(&mut self.exchange, exchange.into());
            self.take().map(|(i, o)| (name, i, o))
        };
        self.publish_in += 1;
        self.publish_out += queues as u64;
        earlier
    }

    /// What was counted since the last flush, if anything, for [`Self::exchange`].
    pub fn take(&mut self) -> Option<(u64, u64)> {
        (self.publish_in > 0).then(|| {
            let counted = (self.publish_in, self.publish_out);
            (self.publish_in, self.publish_out) = (0, 0);
            counted
        })
    }
}

/// A queue's own counters, counted where the queue does the work.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Messages enqueued.
    pub publish: AtomicU64,
    /// Deliveries acked.
    pub ack: AtomicU64,
    /// Deliveries put back, to be delivered again.
    pub redeliver: AtomicU64,
    /// Messages taken by `basic.get`.
    pub get: AtomicU64,
}

impl QueueCounters {
    /// Adds `n` to a counter.
    pub fn count(counter: &AtomicU64, n: usize) {
        if n > 0 {
            counter.fetch_add(n as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() {
        static BOUNDS: &[f64] = &[1.0, 10.0];
        let h = Histogram::new(BOUNDS);
        for value in [0.5, 1.0, 5.0, 50.0] {
            h.observe(value);
        }
        let (buckets, sum, count) = h.read();
        assert_eq!(buckets, vec![(Some(1.0), 2), (Some(10.0), 3), (None, 4)]);
        assert!((sum - 56.5).abs() < 1e-9);
        assert_eq!(count, 4);
    }

    #[test]
    fn an_exchange_tally_hands_back_what_it_counted_for_the_exchange_before() {
        let mut tally = ExchangeTally::default();
        assert_eq!(tally.count("", 1), None, "nothing counted before");
        assert_eq!(tally.count("", 0), None);
        let earlier = tally.count("x", 3).expect("the default exchange's counts");
        assert_eq!((&*earlier.0, earlier.1, earlier.2), ("", 2, 1));
        tally.count("x", 2);
        assert_eq!(tally.take(), Some((2, 5)));
        assert_eq!(tally.take(), None, "taken once");
        assert_eq!(&*tally.exchange, "x");
    }

    #[test]
    fn shared_counters_add_what_channels_counted_since_their_last_batch() {
        let shared = MessageCounters::default();
        let mut tally = Tally::default();
        let before = tally;
        tally.publish += 3;
        tally.delivered(false, true);
        tally.got(true, false);
        shared.add(&before, &tally);
        let flushed = tally;
        tally.ack += 2;
        shared.add(&flushed, &tally);
        let read = shared.read();
        assert_eq!(read, tally);
        assert_eq!(read.deliver_get(), 2);
        assert_eq!(read.redeliver, 1);
    }
}
