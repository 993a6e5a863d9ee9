//! The correctness verdict: every published message (with confirms: every confirmed
//! one) reached each queue it was routed to and was consumed there exactly once, and
//! nothing else was consumed.
//!
//! On a stream, "consumed there exactly once" holds for each consumer on its own:
//! every consumer of a stream must receive every message (from its start offset on)
//! once, so N consumers make N deliveries of each message, none of them duplicates.

use serde::Serialize;

use super::consumer::ConsumerResult;
use super::producer::ProducerResult;
use super::seqset::SeqSet;
use super::topology::{Reading, Route};

/// Outcome of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything that had to arrive arrived exactly once.
    Verified,
    /// Something was missing, duplicated or foreign.
    Failed,
    /// Nothing to check against (no consumers).
    Unverified,
}

/// The verdict and the counts behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Outcome.
    pub status: Status,
    /// Messages published by all producers.
    pub published: u64,
    /// Messages positively confirmed (`None` without confirms).
    pub confirmed: Option<u64>,
    /// Messages negatively confirmed (`None` without confirms).
    pub nacked: Option<u64>,
    /// Deliveries that had to arrive: each published (or confirmed) message once per
    /// queue it was routed to, or on a stream once per consumer of it.
    pub expected: u64,
    /// Deliveries received by all consumers.
    pub consumed: u64,
    /// Required deliveries that never arrived.
    pub missing: u64,
    /// Deliveries of a message its queue had already delivered (on a stream: that the
    /// same consumer had already received).
    pub duplicates: u64,
    /// Deliveries that were not sent by this run to that queue (or, on a stream, lay
    /// before the offset its consumers started at).
    pub strays: u64,
    /// Deliveries flagged redelivered (not an error by itself).
    pub redelivered: u64,
    /// Consumers that stopped waiting for missing messages.
    pub timed_out_consumers: usize,
    /// Messages found in the queue behind the never-matching `--bindings` keys.
    pub misrouted: u64,
}

impl Verdict {
    /// Whether the run passed (or had nothing to check).
    pub fn ok(&self) -> bool {
        self.status != Status::Failed
    }
}

/// Checks consumers' records against what producers sent where; `reading` says whether
/// the consumers of a queue share its messages or (streams) each read them all.
pub fn verify(
    routes: &[Route],
    queues: usize,
    reading: Reading,
    producers: &[ProducerResult],
    consumers: &[ConsumerResult],
) -> Verdict {
    let published = producers.iter().map(|p| p.published).sum();
    let with_confirms = producers.iter().any(|p| p.confirms.is_some());
    let confirmed = with_confirms.then(|| {
        producers
            .iter()
            .filter_map(|p| p.confirms.as_ref())
            .map(|c| c.acked())
            .sum()
    });
    let nacked = with_confirms.then(|| {
        producers
            .iter()
            .filter_map(|p| p.confirms.as_ref())
            .map(|c| c.nacked())
            .sum()
    });
    let mut verdict = Verdict {
        status: Status::Verified,
        published,
        confirmed,
        nacked,
        expected: 0,
        consumed: consumers.iter().map(|c| c.consumed).sum(),
        missing: 0,
        duplicates: consumers.iter().map(|c| c.duplicates).sum(),
        strays: consumers.iter().map(|c| c.strays).sum(),
        redelivered: consumers.iter().map(|c| c.redelivered).sum(),
        timed_out_consumers: consumers.iter().filter(|c| c.timed_out).count(),
        misrouted: 0,
    };
    if consumers.is_empty() {
        verdict.status = Status::Unverified;
        return verdict;
    }
    match reading {
        Reading::Shared => {
            // Per queue and producer: the union of what that queue's consumers saw,
            // numbered by index in the producer's share of the queue; one consumer
            // receiving what another had is a duplicate.
            let mut seen: Vec<Vec<SeqSet>> = vec![vec![SeqSet::new(); producers.len()]; queues];
            for c in consumers {
                for (&q, per_producer) in c.queues.iter().zip(&c.seen) {
                    for (p, set) in per_producer.iter().enumerate() {
                        if let Some(union) = seen.get_mut(q).and_then(|q| q.get_mut(p)) {
                            verdict.duplicates += union.union_with(set);
                        }
                    }
                }
            }
            for (q, per_producer) in seen.iter().enumerate() {
                check_reader(&mut verdict, routes, producers, q, per_producer, 0);
            }
        }
        Reading::Each { from } => {
            // Each consumer of a stream has a slot of its own, checked on its own.
            for c in consumers {
                for (&q, per_producer) in c.queues.iter().zip(&c.seen) {
                    check_reader(&mut verdict, routes, producers, q, per_producer, from);
                }
            }
        }
    }
    verdict.settle();
    verdict
}

/// Checks what one reader of queue `q` received (per producer, by share index) against
/// what had to reach it: every message of each producer's share from index `from` on
/// (with confirms, every confirmed one). Anything it received below `from` is a stray.
fn check_reader(
    verdict: &mut Verdict,
    routes: &[Route],
    producers: &[ProducerResult],
    q: usize,
    seen: &[SeqSet],
    from: u64,
) {
    for (p, set) in seen.iter().enumerate() {
        let Some(producer) = producers.get(p) else {
            continue;
        };
        let Some(share) = routes.get(p).and_then(|r| r.share(q)) else {
            verdict.strays += set.len();
            continue;
        };
        let sent = share.count(producer.published);
        let from = from.min(sent);
        verdict.strays += set.count_below(from);
        match &producer.confirms {
            None => {
                let received = set.count_below(sent) - set.count_below(from);
                verdict.expected += sent - from;
                verdict.missing += sent - from - received;
            }
            Some(tracker) => {
                for index in from..sent {
                    if tracker.is_acked(share.seq(index)) {
                        verdict.expected += 1;
                        verdict.missing += u64::from(!set.contains(index));
                    }
                }
            }
        }
    }
}

impl Verdict {
    /// Sets the status from the counts (after they change).
    pub fn settle(&mut self) {
        if self.status != Status::Unverified
            && self.missing + self.duplicates + self.strays + self.misrouted > 0
        {
            self.status = Status::Failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::confirms::ConfirmTracker;
    use hdrhistogram::Histogram;
    use std::time::Duration;

    fn producer(index: u16, published: u64, confirms: Option<ConfirmTracker>) -> ProducerResult {
        ProducerResult {
            index,
            published,
            confirms,
            publish_time: Duration::from_secs(1),
            cpu: None,
            was_blocked: false,
        }
    }

    fn consumer(queue_index: usize, seen: &[&[u64]]) -> ConsumerResult {
        connection(&[(queue_index, seen)])
    }

    /// A consuming connection with one slot per `(queue, seen per producer)`.
    fn connection(slots: &[(usize, &[&[u64]])]) -> ConsumerResult {
        let seen: Vec<Vec<SeqSet>> = slots
            .iter()
            .map(|(_, per_producer)| {
                per_producer
                    .iter()
                    .map(|seqs| {
                        let mut s = SeqSet::new();
                        for &q in *seqs {
                            s.insert(q);
                        }
                        s
                    })
                    .collect()
            })
            .collect();
        ConsumerResult {
            index: 0,
            queues: slots.iter().map(|&(q, _)| q).collect(),
            consumed: seen.iter().flatten().map(SeqSet::len).sum(),
            bytes: 0,
            seen,
            duplicates: 0,
            strays: 0,
            redelivered: 0,
            latency: Histogram::new(3).expect("histogram"),
            last_delivery_nanos: 0,
            timed_out: false,
            cpu: None,
        }
    }

    fn direct(queue: usize) -> Route {
        Route {
            exchange: String::new(),
            routing_keys: vec![String::new()],
            queues: vec![queue],
            fanout: false,
        }
    }

    #[test]
    fn all_delivered_once_is_verified() {
        let routes = [direct(0)];
        let v = verify(
            &routes,
            1,
            Reading::Shared,
            &[producer(0, 4, None)],
            &[consumer(0, &[&[0, 1]]), consumer(0, &[&[2, 3]])],
        );
        assert_eq!(v.status, Status::Verified);
        assert_eq!((v.expected, v.consumed, v.missing), (4, 4, 0));
    }

    #[test]
    fn missing_duplicate_and_misrouted_fail() {
        let routes = [direct(0)];
        let v = verify(
            &routes,
            2,
            Reading::Shared,
            &[producer(0, 4, None)],
            &[
                consumer(0, &[&[0, 1]]),
                consumer(0, &[&[1]]),
                consumer(1, &[&[3]]),
            ],
        );
        assert_eq!(v.status, Status::Failed);
        assert_eq!((v.missing, v.duplicates, v.strays), (2, 1, 1));
    }

    #[test]
    fn a_share_of_the_messages_is_checked_by_index() {
        // Producer 0 alternates between queues 0 and 1: queue 1 gets seqs 1, 3, 5,
        // recorded as indexes 0, 1, 2.
        let route = Route {
            exchange: String::new(),
            routing_keys: vec!["a".into(), "b".into()],
            queues: vec![0, 1],
            fanout: false,
        };
        let v = verify(
            std::slice::from_ref(&route),
            2,
            Reading::Shared,
            &[producer(0, 6, None)],
            &[consumer(0, &[&[0, 1, 2]]), consumer(1, &[&[0, 2]])],
        );
        assert_eq!((v.expected, v.missing, v.status), (6, 1, Status::Failed));
        let mut tracker = ConfirmTracker::new();
        tracker.record(5, true, false, 6).expect("ack");
        tracker.record(6, false, true, 6).expect("nack of seq 5");
        let v = verify(
            &[route],
            2,
            Reading::Shared,
            &[producer(0, 6, Some(tracker))],
            &[consumer(0, &[&[0, 1, 2]]), consumer(1, &[&[0, 1]])],
        );
        assert_eq!((v.expected, v.missing, v.status), (5, 0, Status::Verified));
    }

    #[test]
    fn with_confirms_only_acked_messages_must_arrive() {
        let mut tracker = ConfirmTracker::new();
        tracker.record(2, true, false, 3).expect("ack");
        tracker.record(3, false, true, 3).expect("nack");
        let routes = [direct(0)];
        let v = verify(
            &routes,
            1,
            Reading::Shared,
            &[producer(0, 3, Some(tracker))],
            &[consumer(0, &[&[0, 1]])],
        );
        assert_eq!(v.status, Status::Verified);
        assert_eq!((v.confirmed, v.nacked, v.expected), (Some(2), Some(1), 2));
    }

    #[test]
    fn every_consumer_of_a_stream_must_see_every_message_once() {
        let routes = [direct(0)];
        let all: &[&[u64]] = &[&[0, 1, 2, 3]];
        let stream = Reading::Each { from: 0 };
        // Two connections, the second with two consumers of the stream (two slots).
        let readers = [consumer(0, all), connection(&[(0, all), (0, all)])];
        let v = verify(&routes, 1, stream, &[producer(0, 4, None)], &readers);
        assert_eq!(v.status, Status::Verified);
        assert_eq!(
            (v.expected, v.consumed, v.missing, v.duplicates),
            (12, 12, 0, 0)
        );
        // The same deliveries from a queue would be duplicates.
        let v = verify(
            &routes,
            1,
            Reading::Shared,
            &[producer(0, 4, None)],
            &readers,
        );
        assert_eq!((v.status, v.duplicates), (Status::Failed, 8));
        // One consumer's gap is not filled by another's deliveries.
        let v = verify(
            &routes,
            1,
            stream,
            &[producer(0, 4, None)],
            &[consumer(0, all), consumer(0, &[&[0, 1, 3]])],
        );
        assert_eq!((v.status, v.expected, v.missing), (Status::Failed, 8, 1));
        // A consumer receiving a message twice is a duplicate (counted as it consumes).
        let mut twice = consumer(0, all);
        twice.duplicates = 1;
        let v = verify(&routes, 1, stream, &[producer(0, 4, None)], &[twice]);
        assert_eq!((v.status, v.duplicates), (Status::Failed, 1));
    }

    #[test]
    fn stream_consumers_from_an_offset_owe_nothing_before_it() {
        let routes = [direct(0)];
        let stream = Reading::Each { from: 2 };
        let v = verify(
            &routes,
            1,
            stream,
            &[producer(0, 5, None)],
            &[consumer(0, &[&[2, 3, 4]]), consumer(0, &[&[2, 3, 4]])],
        );
        assert_eq!((v.status, v.expected, v.missing), (Status::Verified, 6, 0));
        let v = verify(
            &routes,
            1,
            stream,
            &[producer(0, 5, None)],
            &[consumer(0, &[&[1, 2, 3]])],
        );
        assert_eq!(
            (v.status, v.expected, v.missing, v.strays),
            (Status::Failed, 3, 1, 1)
        );
        // Past the end of what was published: nothing is owed.
        let v = verify(
            &routes,
            1,
            Reading::Each { from: 9 },
            &[producer(0, 5, None)],
            &[consumer(0, &[&[]])],
        );
        assert_eq!((v.status, v.expected), (Status::Verified, 0));
        // With confirms, the confirmed messages from the offset on.
        let mut tracker = ConfirmTracker::new();
        tracker.record(4, true, false, 5).expect("ack of 0-3");
        tracker.record(5, false, true, 5).expect("nack of 4");
        let v = verify(
            &routes,
            1,
            stream,
            &[producer(0, 5, Some(tracker))],
            &[consumer(0, &[&[2, 3]])],
        );
        assert_eq!((v.status, v.expected, v.missing), (Status::Verified, 2, 0));
    }
}
