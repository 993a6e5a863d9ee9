//! The checks of the consumer-group churn benchmark (`warren-perf groups`), run over the
//! JSON lines its member processes print and what the controller did to them.
//!
//! Every line carries a CLOCK_MONOTONIC time in nanoseconds: members and controller run
//! on one machine, so their times compare. The stamps are taken so that a correct
//! broker can never look wrong: a member stamps a delivery after it has read it and an
//! ack before it sends it, and the controller stamps a kill before it sends SIGKILL. So
//! when the broker hands a partition over only after the old owner's last ack (or its
//! death), the new owner's first delivery is always stamped after the old owner's end.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// How many examples of each kind of violation a summary keeps as evidence.
const EXAMPLES: usize = 5;

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of every line (Python's
/// `time.monotonic_ns()` reads the same one).
#[cfg(unix)]
pub fn monotonic_nanos() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or_default() * 1_000_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or_default()
}

/// CLOCK_MONOTONIC now, in nanoseconds (off Unix: time since the first call, which
/// only compares within one process).
#[cfg(not(unix))]
pub fn monotonic_nanos() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a member reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Its `basic.consume-ok` (the last one, when it consumes several queues).
    ConsumeOk,
    /// A delivery it has just read.
    Deliver,
    /// An ack it is about to send.
    Ack,
    /// It was told to leave and is about to send `basic.cancel`.
    Cancel,
    /// Its `basic.cancel-ok` (the last one).
    CancelOk,
    /// It has acked everything it held and is closing its connection.
    Closed,
}

/// One line of a member's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// The member's id.
    #[serde(rename = "m")]
    pub member: u32,
    /// What happened.
    #[serde(rename = "ev")]
    pub kind: Kind,
    /// When, CLOCK_MONOTONIC nanoseconds.
    pub t: u64,
    /// The message's key (deliver, ack).
    #[serde(default)]
    pub key: u32,
    /// The message's sequence number within its key (deliver, ack).
    #[serde(default)]
    pub seq: u32,
    /// The partition it came from (deliver, ack).
    #[serde(default)]
    pub partition: u16,
    /// Whether the broker flagged the delivery redelivered.
    #[serde(default)]
    pub redelivered: bool,
}

impl Event {
    /// Parses one JSON line; `None` for anything else (such as the torn last line of a
    /// member killed mid-write).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// How a member's life ended, as the controller brought it about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "how", content = "t")]
pub enum Ending {
    /// Still running when the run ended (then cancelled as part of the final drain).
    Running,
    /// Told to leave gracefully at this time.
    Cancelled(u64),
    /// SIGKILLed at this time (stamped just before the signal).
    Killed(u64),
}

/// A member process as the controller saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRecord {
    /// Its id (the `m` of its lines).
    pub id: u32,
    /// `lapin` or `pika`.
    pub client: String,
    /// When it was started.
    pub started: u64,
    /// How it ended.
    pub ending: Ending,
    /// Whether it is the final member that drains what is left.
    pub final_drain: bool,
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of `nanos` (nearest rank); `None` without samples.
    pub fn of(mut nanos: Vec<u64>) -> Option<Self> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let at = |p: usize| nanos[(nanos.len() - 1) * p / 100] as f64 / 1e6;
        Some(Self {
            count: nanos.len(),
            p50_ms: at(50),
            p99_ms: at(99),
            max_ms: at(100),
        })
    }
}

/// What one member got: the balance of the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberShare {
    /// The member.
    pub id: u32,
    /// Distinct partitions it got deliveries from.
    pub partitions: usize,
    /// Deliveries it got.
    pub deliveries: u64,
    /// How long it lived, in milliseconds (to the end of the run if still running).
    pub lived_ms: u64,
}

/// The verdict of a churn run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Members started (the final one included).
    pub members: usize,
    /// Members told to leave gracefully during the churn.
    pub cancelled: usize,
    /// Members SIGKILLed.
    pub killed: usize,
    /// Deliveries seen.
    pub deliveries: u64,
    /// Acks seen.
    pub acks: u64,
    /// Confirmed messages.
    pub confirmed: u64,
    /// Confirmed messages never acked by any member.
    pub lost: u64,
    /// Some of them, as `key:seq`.
    pub lost_examples: Vec<String>,
    /// First deliveries of a key whose seq is below one already delivered first.
    pub order_violations: u64,
    /// Some of them.
    pub order_examples: Vec<String>,
    /// Times a member received a partition's message while another still held one of
    /// that partition unacked (its interval not ended by an ack, or its kill).
    pub overlaps: u64,
    /// Some of them.
    pub overlap_examples: Vec<String>,
    /// Deliveries flagged redelivered.
    pub redeliveries: u64,
    /// Of those, of a message last delivered to a member that left gracefully (or is
    /// still running): should be 0.
    pub redeliveries_after_graceful: u64,
    /// Some of them.
    pub redelivery_examples: Vec<String>,
    /// Of those, of a message last delivered to a member that was killed.
    pub redeliveries_after_kill: u64,
    /// Of those, of a message no member had reported before (a member killed between
    /// reading it and printing it).
    pub redeliveries_unseen: u64,
    /// Deliveries the killed members had not acked when they were killed.
    pub killed_unacked: u64,
    /// Killed members whose messages were redelivered more often than they held unacked.
    pub kills_over_unacked: u64,
    /// Second deliveries of a message without the redelivered flag.
    pub unflagged_repeats: u64,
    /// A joining member's `consume-ok` (or the publishing of the message, if later) to
    /// its first delivery (members that joined while messages were being published).
    pub join_latency: Option<Percentiles>,
    /// Joining members that never got a delivery.
    pub joined_idle: usize,
    /// A gracefully leaving member's last ack of a partition it held (or its cancel, or
    /// the publishing of the message, if later) to that partition's first delivery to
    /// another member.
    pub handover_latency: Option<Percentiles>,
    /// A killed member's kill (or the publishing of the message, if later) to the first
    /// delivery, to another member, of each partition it held.
    pub failover_latency: Option<Percentiles>,
    /// Distinct partitions per member (the final member left out): median.
    pub partitions_per_member_p50: usize,
    /// Distinct partitions per member: most.
    pub partitions_per_member_max: usize,
    /// Per member, what it got.
    pub shares: Vec<MemberShare>,
}

impl Summary {
    /// Whether every check held: nothing lost, out of order, held twice, or redelivered
    /// beyond what kills explain.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.order_violations == 0
            && self.overlaps == 0
            && self.redeliveries_after_graceful == 0
            && self.kills_over_unacked == 0
            && self.unflagged_repeats == 0
    }
}

/// What the checks need besides the events.
pub struct RunFacts<'a> {
    /// The members and what the controller did to them.
    pub members: &'a [MemberRecord],
    /// Every confirmed message, as `(key, seq)`.
    pub confirmed: &'a [(u32, u32)],
    /// When publishing started and ended: members joining between count for the join
    /// latency.
    pub publishing: (u64, u64),
    /// When the run ended (members still running then are cut there).
    pub end: u64,
    /// When message `(key, seq)` was published, if known: a latency that waited for
    /// a message to exist is counted from its publishing, not from the event before.
    pub published_at: &'a dyn Fn(u32, u32) -> Option<u64>,
}

/// Runs every check over `events` (in any order).
pub fn check(events: &[Event], facts: &RunFacts<'_>) -> Summary {
    let mut events = events.to_vec();
    events.sort_by_key(|e| (e.t, e.member));
    let members: HashMap<u32, &MemberRecord> = facts.members.iter().map(|m| (m.id, m)).collect();
    let killed_at = |m: u32| match members.get(&m).map(|r| r.ending) {
        Some(Ending::Killed(t)) => Some(t),
        _ => None,
    };
    let mut s = Summary {
        members: facts.members.len(),
        cancelled: facts
            .members
            .iter()
            .filter(|m| matches!(m.ending, Ending::Cancelled(_)) && !m.final_drain)
            .count(),
        killed: facts
            .members
            .iter()
            .filter(|m| matches!(m.ending, Ending::Killed(_)))
            .count(),
        confirmed: facts.confirmed.len() as u64,
        ..Summary::default()
    };
    let deliveries: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::Deliver).collect();
    s.deliveries = deliveries.len() as u64;
    s.acks = events.iter().filter(|e| e.kind == Kind::Ack).count() as u64;

    // Lost: confirmed, never acked.
    let acked: HashSet<(u32, u32)> = events
        .iter()
        .filter(|e| e.kind == Kind::Ack)
        .map(|e| (e.key, e.seq))
        .collect();
    for &(key, seq) in facts.confirmed {
        if !acked.contains(&(key, seq)) {
            s.lost += 1;
            if s.lost_examples.len() < EXAMPLES {
                s.lost_examples.push(format!("{key}:{seq}"));
            }
        }
    }

    // Order of first deliveries, and redeliveries by whom they repeat.
    let mut last_holder: HashMap<(u32, u32), u32> = HashMap::new();
    let mut highest_first: HashMap<u32, u32> = HashMap::new();
    let mut repeats_of: HashMap<u32, u64> = HashMap::new();
    // Messages a killed member had, that came back: an ack it logged just before its
    // kill never reached the broker.
    let mut came_back: std::collections::HashSet<(u32, u32, u32)> = Default::default();
    for e in &deliveries {
        let previous = last_holder.insert((e.key, e.seq), e.member);
        match previous {
            None => {
                let highest = highest_first.entry(e.key).or_insert(e.seq);
                if e.seq < *highest {
                    s.order_violations += 1;
                    if s.order_examples.len() < EXAMPLES {
                        s.order_examples.push(format!(
                            "key {} seq {} first delivered at t={} to member {} after seq {}",
                            e.key, e.seq, e.t, e.member, highest
                        ));
                    }
                }
                *highest = (*highest).max(e.seq);
            }
            Some(_) if !e.redelivered => s.unflagged_repeats += 1,
            Some(_) => {}
        }
        if !e.redelivered {
            continue;
        }
        s.redeliveries += 1;
        match previous {
            None => s.redeliveries_unseen += 1,
            Some(m) if killed_at(m).is_some() => {
                s.redeliveries_after_kill += 1;
                *repeats_of.entry(m).or_default() += 1;
                came_back.insert((m, e.key, e.seq));
            }
            Some(m) => {
                s.redeliveries_after_graceful += 1;
                if s.redelivery_examples.len() < EXAMPLES {
                    s.redelivery_examples.push(format!(
                        "key {} seq {} redelivered at t={} to member {}, last delivered to member {m} ({})",
                        e.key,
                        e.seq,
                        e.t,
                        e.member,
                        members
                            .get(&m)
                            .map_or("unknown".to_string(), |r| format!("{:?}", r.ending)),
                    ));
                }
            }
        }
    }

    // Holding intervals: each delivery until its ack by the same member, its member's
    // kill, or its member's close.
    let closed: HashMap<u32, u64> = events
        .iter()
        .filter(|e| e.kind == Kind::Closed)
        .map(|e| (e.member, e.t))
        .collect();
    let mut acks: HashMap<(u32, u32, u32), Vec<u64>> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Ack) {
        acks.entry((e.member, e.key, e.seq)).or_default().push(e.t);
    }
    let partitions = deliveries
        .iter()
        .map(|e| usize::from(e.partition) + 1)
        .max()
        .unwrap_or(0);
    let mut intervals: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new(); partitions];
    let mut unacked_at_kill: HashMap<u32, u64> = HashMap::new();
    for e in &deliveries {
        // An ack logged by a member killed before the broker got it is no ack: the
        // broker gave the message to another member after the kill.
        let ack = acks
            .get(&(e.member, e.key, e.seq))
            .and_then(|ts| ts.iter().copied().find(|&t| t >= e.t))
            .filter(|_| {
                killed_at(e.member).is_none() || !came_back.contains(&(e.member, e.key, e.seq))
            });
        let end = match (ack, killed_at(e.member)) {
            (Some(a), Some(k)) => a.min(k),
            (Some(a), None) => a,
            (None, Some(k)) => k,
            (None, None) => closed.get(&e.member).copied().unwrap_or(facts.end),
        };
        if let Some(k) = killed_at(e.member) {
            if ack.is_none_or(|a| a > k) {
                s.killed_unacked += 1;
                *unacked_at_kill.entry(e.member).or_default() += 1;
            }
        }
        intervals[usize::from(e.partition)].push((e.t, end.max(e.t), e.member));
    }
    s.kills_over_unacked = repeats_of
        .iter()
        .filter(|&(m, &repeats)| repeats > unacked_at_kill.get(m).copied().unwrap_or(0))
        .count() as u64;
    for (partition, list) in intervals.iter_mut().enumerate() {
        for (start, end, member, other, other_end) in overlaps(list) {
            s.overlaps += 1;
            if s.overlap_examples.len() < EXAMPLES {
                s.overlap_examples.push(format!(
                    "partition {partition}: member {member} held it from t={start} (to t={end}) \
                     while member {other} held it until t={other_end}"
                ));
            }
        }
    }

    latencies(&events, &deliveries, facts, &mut s);
    shares(&deliveries, facts, &mut s);
    s
}

/// The overlaps between different members' holding spans of one partition: each as
/// (span start, span end, member, other member, other's end). `intervals` are
/// (start, end, member); a member's own intervals overlap freely (prefetch).
fn overlaps(intervals: &mut [(u64, u64, u32)]) -> Vec<(u64, u64, u32, u32, u64)> {
    // Merge each member's intervals into spans.
    intervals.sort_unstable_by_key(|&(start, end, member)| (member, start, end));
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for &(start, end, member) in intervals.iter() {
        match spans.last_mut() {
            Some(last) if last.2 == member && start <= last.1 => last.1 = last.1.max(end),
            _ => spans.push((start, end, member)),
        }
    }
    spans.sort_unstable_by_key(|&(start, end, member)| (start, end, member));
    // Sweep: the latest end so far with its member, and the latest of any other member.
    let mut found = Vec::new();
    let mut first: Option<(u64, u32)> = None;
    let mut second: u64 = 0;
    for &(start, end, member) in &spans {
        if let Some((first_end, first_member)) = first {
            let (other_end, other) = if first_member != member {
                (first_end, first_member)
            } else {
                (second, u32::MAX)
            };
            if other_end > start {
                found.push((start, end, member, other, other_end));
            }
        }
        first = match first {
            Some((first_end, first_member)) if first_member == member => {
                Some((first_end.max(end), member))
            }
            Some((first_end, first_member)) if end > first_end => {
                second = first_end;
                let _ = first_member;
                Some((end, member))
            }
            Some(f) => {
                second = second.max(end);
                Some(f)
            }
            None => Some((end, member)),
        };
    }
    found
}

/// Join, handover and fail-over latencies.
fn latencies(events: &[Event], deliveries: &[&Event], facts: &RunFacts<'_>, s: &mut Summary) {
    let mut first_delivery: HashMap<u32, (u64, u32, u32)> = HashMap::new();
    for e in deliveries {
        first_delivery
            .entry(e.member)
            .or_insert((e.t, e.key, e.seq));
    }
    // From `from`, or from the message's publishing if that came later.
    let since =
        |from: u64, key: u32, seq: u32| from.max((facts.published_at)(key, seq).unwrap_or(0));
    let mut join = Vec::new();
    for e in events.iter().filter(|e| e.kind == Kind::ConsumeOk) {
        let record = facts.members.iter().find(|m| m.id == e.member);
        if record.is_none_or(|r| r.final_drain)
            || e.t < facts.publishing.0
            || e.t > facts.publishing.1
        {
            continue;
        }
        match first_delivery.get(&e.member) {
            Some(&(t, key, seq)) if t >= e.t => join.push(t.saturating_sub(since(e.t, key, seq))),
            _ => s.joined_idle += 1,
        }
    }
    s.join_latency = Percentiles::of(join);

    // Per partition, its deliveries in time order: (t, member).
    let partitions = deliveries
        .iter()
        .map(|e| usize::from(e.partition) + 1)
        .max()
        .unwrap_or(0);
    let mut timeline: Vec<Vec<(u64, u32, u32, u32)>> = vec![Vec::new(); partitions];
    for e in deliveries {
        timeline[usize::from(e.partition)].push((e.t, e.member, e.key, e.seq));
    }
    let mut last_ack: HashMap<(u32, u16), u64> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Ack) {
        let t = last_ack.entry((e.member, e.partition)).or_default();
        *t = (*t).max(e.t);
    }
    // The first delivery of `p` to a member other than `m` at or after `from`.
    let next_owner = |p: usize, m: u32, from: u64| {
        let list = &timeline[p];
        let i = list.partition_point(|&(t, ..)| t < from);
        list[i..]
            .iter()
            .find(|&&(_, o, ..)| o != m)
            .map(|&(t, _, key, seq)| t.saturating_sub(since(from, key, seq)))
    };
    // Whether `m` held `p` at `at`: the last delivery of `p` before `at` went to `m`.
    let held = |p: usize, m: u32, at: u64| {
        let list = &timeline[p];
        let i = list.partition_point(|&(t, ..)| t < at);
        i > 0 && list[i - 1].1 == m
    };
    let mut handover = Vec::new();
    let mut failover = Vec::new();
    for record in facts.members {
        match record.ending {
            Ending::Cancelled(at) if !record.final_drain => {
                for p in 0..partitions {
                    if !held(p, record.id, at) {
                        continue;
                    }
                    let p16 = u16::try_from(p).unwrap_or(u16::MAX);
                    let from = last_ack
                        .get(&(record.id, p16))
                        .copied()
                        .unwrap_or(at)
                        .max(at);
                    handover.extend(next_owner(p, record.id, from));
                }
            }
            Ending::Killed(at) => {
                for p in 0..partitions {
                    if held(p, record.id, at) {
                        failover.extend(next_owner(p, record.id, at));
                    }
                }
            }
            _ => {}
        }
    }
    s.handover_latency = Percentiles::of(handover);
    s.failover_latency = Percentiles::of(failover);
}

/// What each member got.
fn shares(deliveries: &[&Event], facts: &RunFacts<'_>, s: &mut Summary) {
    let mut got: HashMap<u32, (HashSet<u16>, u64)> = HashMap::new();
    for e in deliveries {
        let entry = got.entry(e.member).or_default();
        entry.0.insert(e.partition);
        entry.1 += 1;
    }
    for record in facts.members.iter().filter(|m| !m.final_drain) {
        let end = match record.ending {
            Ending::Running => facts.end,
            Ending::Cancelled(t) | Ending::Killed(t) => t,
        };
        let (partitions, deliveries) = got
            .get(&record.id)
            .map_or((0, 0), |(set, n)| (set.len(), *n));
        s.shares.push(MemberShare {
            id: record.id,
            partitions,
            deliveries,
            lived_ms: end.saturating_sub(record.started) / 1_000_000,
        });
    }
    let mut counts: Vec<usize> = s.shares.iter().map(|m| m.partitions).collect();
    counts.sort_unstable();
    s.partitions_per_member_p50 = counts
        .get(counts.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0);
    s.partitions_per_member_max = counts.last().copied().unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(member: u32, kind: Kind, t: u64, key: u32, seq: u32, partition: u16) -> Event {
        Event {
            member,
            kind,
            t,
            key,
            seq,
            partition,
            redelivered: false,
        }
    }

    fn member(id: u32, ending: Ending) -> MemberRecord {
        MemberRecord {
            id,
            client: "lapin".into(),
            started: 0,
            ending,
            final_drain: false,
        }
    }

    fn run(events: &[Event], members: &[MemberRecord], confirmed: &[(u32, u32)]) -> Summary {
        check(
            events,
            &RunFacts {
                members,
                confirmed,
                publishing: (0, 1_000),
                end: 1_000,
                published_at: &|_, _| None,
            },
        )
    }

    #[test]
    fn parses_member_lines_and_skips_torn_ones() {
        let e = Event::parse(
            r#"{"m":3,"ev":"deliver","key":7,"seq":2,"partition":5,"redelivered":true,"t":99}"#,
        )
        .expect("parses");
        assert_eq!(
            (e.member, e.kind, e.key, e.seq, e.partition),
            (3, Kind::Deliver, 7, 2, 5)
        );
        assert!(e.redelivered);
        assert_eq!(
            Event::parse(r#"{"m":1,"ev":"cancel-ok","t":5}"#).map(|e| e.kind),
            Some(Kind::CancelOk)
        );
        assert!(Event::parse(r#"{"m":1,"ev":"deliv"#).is_none());
    }

    #[test]
    fn a_clean_handover_passes() {
        let events = [
            ev(1, Kind::Deliver, 10, 7, 0, 2),
            ev(1, Kind::Deliver, 11, 7, 1, 2),
            ev(1, Kind::Ack, 20, 7, 0, 2),
            ev(1, Kind::Ack, 30, 7, 1, 2),
            ev(2, Kind::Deliver, 31, 7, 2, 2),
            ev(2, Kind::Ack, 40, 7, 2, 2),
        ];
        let members = [member(1, Ending::Cancelled(25)), member(2, Ending::Running)];
        let s = run(&events, &members, &[(7, 0), (7, 1), (7, 2)]);
        assert!(s.ok(), "{s:?}");
        let handover = s.handover_latency.expect("one handover");
        assert_eq!((handover.count, handover.max_ms), (1, 1e-6));
    }

    #[test]
    fn overlapping_holders_lost_and_reordered_messages_are_caught() {
        let events = [
            ev(1, Kind::Deliver, 10, 7, 1, 2),
            ev(2, Kind::Deliver, 15, 7, 0, 2),
            ev(2, Kind::Ack, 16, 7, 0, 2),
            ev(1, Kind::Ack, 20, 7, 1, 2),
        ];
        let members = [member(1, Ending::Running), member(2, Ending::Running)];
        let s = run(&events, &members, &[(7, 0), (7, 1), (7, 2)]);
        assert_eq!((s.overlaps, s.order_violations, s.lost), (1, 1, 1));
        assert_eq!(s.lost_examples, ["7:2"]);
        assert!(!s.ok());
    }

    #[test]
    fn a_kill_ends_the_dead_members_intervals_and_explains_its_redeliveries() {
        let mut again = ev(2, Kind::Deliver, 60, 7, 0, 2);
        again.redelivered = true;
        let events = [
            ev(1, Kind::Deliver, 10, 7, 0, 2),
            again,
            ev(2, Kind::Ack, 70, 7, 0, 2),
        ];
        let members = [member(1, Ending::Killed(50)), member(2, Ending::Running)];
        let s = run(&events, &members, &[(7, 0)]);
        assert!(s.ok(), "{s:?}");
        assert_eq!((s.redeliveries_after_kill, s.killed_unacked), (1, 1));
        assert_eq!(s.failover_latency.map(|p| p.count), Some(1));

        // The same redelivery after a graceful leave is a violation.
        let members = [member(1, Ending::Cancelled(50)), member(2, Ending::Running)];
        let s = run(&events, &members, &[(7, 0)]);
        assert_eq!(s.redeliveries_after_graceful, 1);
        assert!(!s.ok());
    }

    /// A killed member that logged an ack a moment before its kill, which the broker
    /// never got: the redelivery is explained by that unacked message.
    #[test]
    fn an_ack_logged_just_before_a_kill_may_not_have_reached_the_broker() {
        let mut again = ev(2, Kind::Deliver, 60, 7, 0, 2);
        again.redelivered = true;
        let events = [
            ev(1, Kind::Deliver, 10, 7, 0, 2),
            ev(1, Kind::Ack, 49, 7, 0, 2),
            again,
            ev(2, Kind::Ack, 70, 7, 0, 2),
        ];
        let members = [member(1, Ending::Killed(50)), member(2, Ending::Running)];
        let s = run(&events, &members, &[(7, 0)]);
        assert!(s.ok(), "{s:?}");
        assert_eq!((s.redeliveries_after_kill, s.killed_unacked), (1, 1));
    }

    #[test]
    fn sweep_compares_against_other_members_only() {
        let mut list = vec![(0, 10, 1), (5, 20, 1), (21, 30, 2), (25, 26, 1)];
        let found = overlaps(&mut list);
        assert_eq!(found, [(25, 26, 1, 2, 30)]);
    }
}
