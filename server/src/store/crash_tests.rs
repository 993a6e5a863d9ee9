//! A crash at every I/O point of a scripted workload, then a power loss, then recovery:
//! whatever was confirmed must be there, whatever was acked and synced must not come
//! back unflagged, and the store must open.
//!
//! The workload goes through the whole store on a [`SimFs`]: definitions changes
//! (queues, an exchange with non-finite float arguments, a binding, a queue deletion),
//! appends, group-commit rounds, delivered markers, acks, segment rolls and deletions, a
//! purge and a queue log deletion. It is first run without a crash to count its crash
//! points (every mutating call and sync the file system sees); then, for every point k
//! and several kinds of crash, it is run again dying at k, and the file system that a
//! crash leaves is checked against a ledger of what the workload was told was durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use bytestring::ByteString;

use super::definitions::{BindingDef, Change, ExchangeDef, QueueDef};
use super::field_json::tests::same_table;
use super::sim::{PowerLoss, SimFs};
use super::{
    BrokerStore, PendingSync, QueueLog, Result, SegmentPosition, StoreError, StoredMessage,
    SyncTarget,
};

const DATA: &str = "/data";
const SEGMENT: u64 = 600;

/// A queue log as a group-commit target.
#[derive(Debug)]
struct TestQueue {
    id: String,
    log: Mutex<Option<QueueLog>>,
}

impl SyncTarget for TestQueue {
    fn begin_sync(&self) -> Option<Result<PendingSync>> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.as_mut().map(QueueLog::begin_sync)
    }

    fn complete_sync(&self, pending: PendingSync, result: &Result<()>) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.as_mut()
            .is_some_and(|l| l.complete_sync(pending, result).is_ok())
    }
}

/// What the workload was told, to check a crash's leftovers against.
#[derive(Debug, Default)]
struct Ledger {
    /// Per queue name: the states its definition went through (Some(id) declared, None
    /// deleted), and how many of them a successful round made durable.
    queue_states: BTreeMap<String, (Vec<Option<String>>, usize)>,
    /// The exchange's arguments, once its definition was durable.
    exchange_synced: Option<FieldTable>,
    exchange_pending: Option<FieldTable>,
    /// Per log id: every append, in order, with its body.
    appended: HashMap<String, Vec<(SegmentPosition, Bytes)>>,
    /// Per log id: appends a round confirmed.
    confirmed: HashMap<String, BTreeSet<SegmentPosition>>,
    /// Per log id: acks (purges count) made, and those a later round made durable.
    acks_pending: HashMap<String, Vec<SegmentPosition>>,
    acks_synced: HashMap<String, BTreeSet<SegmentPosition>>,
}

fn body(queue: &str, i: usize) -> Bytes {
    let mut b = format!("{queue}:{i}:").into_bytes();
    b.resize(20 + (i * 37) % 180, b'a' + (i % 26) as u8);
    Bytes::from(b)
}

fn message(body: Bytes) -> StoredMessage {
    StoredMessage {
        persistent: true,
        expires_at_ms: 0,
        exchange: ByteString::from_static("e1"),
        routing_key: ByteString::from_static("k"),
        properties: Bytes::from_static(b"\x10\x00\x02"),
        body,
    }
}

fn odd_arguments() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("nan".into(), AMQPValue::Double(f64::NAN));
    t.insert("inf".into(), AMQPValue::Float(f32::INFINITY));
    t.insert("neg-zero".into(), AMQPValue::Double(-0.0));
    t
}

/// The workload, against one store; stops at the first error (the crash).
struct Run {
    store: BrokerStore,
    queues: HashMap<String, Arc<TestQueue>>,
    ledger: Ledger,
}

impl Run {
    fn declare(&mut self, name: &str) -> Result<()> {
        let id = format!("{name}-id");
        let log = self.store.create_queue_log(&id)?;
        self.queues.insert(
            name.to_owned(),
            Arc::new(TestQueue {
                id: id.clone(),
                log: Mutex::new(Some(log)),
            }),
        );
        let mut arguments = FieldTable::default();
        if name == "q1" {
            arguments = odd_arguments();
        }
        self.store.try_record(&Change::PutQueue(QueueDef {
            vhost: "/".into(),
            name: name.into(),
            id: id.clone(),
            auto_delete: false,
            arguments,
            partitions: None,
        }))?;
        self.ledger
            .queue_states
            .entry(name.to_owned())
            .or_default()
            .0
            .push(Some(id));
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<()> {
        self.store.try_record(&Change::DeleteQueue {
            vhost: "/".into(),
            name: name.into(),
        })?;
        self.ledger
            .queue_states
            .entry(name.to_owned())
            .or_default()
            .0
            .push(None);
        if let Some(q) = self.queues.remove(name)
            && let Some(log) = q.log.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            self.store.retire_queue_log(log);
        }
        Ok(())
    }

    fn with_log<T>(&self, name: &str, f: impl FnOnce(&mut QueueLog) -> Result<T>) -> Result<T> {
        let q = self
            .queues
            .get(name)
            .ok_or(StoreError::Misuse("no queue"))?;
        let mut log = q.log.lock().unwrap_or_else(|e| e.into_inner());
        f(log.as_mut().ok_or(StoreError::Misuse("no log"))?)
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-id")
    }

    fn append(&mut self, name: &str, n: usize) -> Result<()> {
        let id = self.id(name);
        for _ in 0..n {
            let i = self.ledger.appended.get(&id).map_or(0, Vec::len);
            let b = body(name, i);
            let pos = self.with_log(name, |log| log.append(&message(b.clone())))?;
            self.ledger
                .appended
                .entry(id.clone())
                .or_default()
                .push((pos, b));
        }
        Ok(())
    }

    fn nth(&self, name: &str, i: usize) -> Result<SegmentPosition> {
        self.ledger
            .appended
            .get(&self.id(name))
            .and_then(|v| v.get(i))
            .map(|(p, _)| *p)
            .ok_or(StoreError::Misuse("no such message: its append failed"))
    }

    fn ack(&mut self, name: &str, range: std::ops::Range<usize>) -> Result<()> {
        for i in range {
            let pos = self.nth(name, i)?;
            // Recorded first: an ack cut short by the crash may have taken effect.
            self.ledger
                .acks_pending
                .entry(self.id(name))
                .or_default()
                .push(pos);
            self.with_log(name, |log| log.ack(pos))?;
        }
        Ok(())
    }

    fn mark(&mut self, name: &str, range: std::ops::Range<usize>) -> Result<()> {
        for i in range {
            let pos = self.nth(name, i)?;
            self.with_log(name, |log| log.mark_delivered(pos))?;
        }
        Ok(())
    }

    fn purge(&mut self, name: &str) -> Result<()> {
        let id = self.id(name);
        let all: Vec<_> = self
            .ledger
            .appended
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(p, _)| *p)
            .collect();
        self.ledger.acks_pending.entry(id).or_default().extend(all);
        self.with_log(name, |log| log.purge().map(|_| ()))
    }

    fn put_exchange(&mut self) -> Result<()> {
        self.store.try_record(&Change::PutExchange(ExchangeDef {
            vhost: "/".into(),
            name: "e1".into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: odd_arguments(),
        }))?;
        self.store.try_record(&Change::Bind(BindingDef {
            vhost: "/".into(),
            source: "e1".into(),
            destination: "q1".into(),
            to_exchange: false,
            routing_key: "k".into(),
            arguments: odd_arguments(),
        }))?;
        self.ledger.exchange_pending = Some(odd_arguments());
        Ok(())
    }

    /// One group-commit round over every live queue; records what it made durable.
    fn round(&mut self) -> Result<()> {
        let targets: Vec<Arc<dyn SyncTarget>> = self
            .queues
            .values()
            .map(|q| q.clone() as Arc<dyn SyncTarget>)
            .collect();
        let outcome = self.store.commit_now(&targets);
        let mut all_ok = true;
        for (name, q) in &self.queues {
            let target = q.clone() as Arc<dyn SyncTarget>;
            if !outcome.durable(&target) {
                all_ok = false;
                continue;
            }
            let durable = self.with_log(name, |log| Ok(log.durable_position()))?;
            let confirmed = self.ledger.confirmed.entry(q.id.clone()).or_default();
            for (pos, _) in self.ledger.appended.get(&q.id).into_iter().flatten() {
                if Some(*pos) <= durable {
                    confirmed.insert(*pos);
                }
            }
            let acks = self.ledger.acks_pending.remove(&q.id).unwrap_or_default();
            self.ledger
                .acks_synced
                .entry(q.id.clone())
                .or_default()
                .extend(acks);
        }
        // Definitions: durable when the round's definitions sync was (every outcome
        // includes it; with no queue, probe through an empty round's flag).
        let defs_ok = outcome.definitions_ok();
        if defs_ok {
            for (states, synced) in self.ledger.queue_states.values_mut() {
                *synced = states.len();
            }
            if let Some(args) = self.ledger.exchange_pending.take() {
                self.ledger.exchange_synced = Some(args);
            }
        }
        if all_ok && defs_ok {
            Ok(())
        } else {
            Err(StoreError::Misuse("a round failed"))
        }
    }

    fn workload(&mut self) -> Result<()> {
        self.declare("q1")?;
        self.put_exchange()?;
        self.round()?;
        for _ in 0..4 {
            self.append("q1", 4)?;
            self.round()?;
        }
        self.mark("q1", 0..3)?;
        self.ack("q1", 0..2)?;
        self.round()?;
        self.declare("q2")?;
        self.append("q2", 5)?;
        self.append("q1", 2)?;
        self.round()?;
        // Ack everything of q1's first segment: it is deleted.
        let first = self.nth("q1", 0)?.segment;
        let in_first = self.ledger.appended[&self.id("q1")]
            .iter()
            .take_while(|(p, _)| p.segment == first)
            .count();
        self.mark("q1", 2..in_first)?;
        self.ack("q1", 2..in_first)?;
        self.round()?;
        self.purge("q2")?;
        self.append("q2", 2)?;
        self.round()?;
        self.delete("q1")?;
        self.round()?;
        self.append("q2", 3)?;
        self.ack("q2", 6..7)?;
        self.round()?;
        Ok(())
    }
}

impl Run {
    /// The workload again, going on after every error (a failed call may or may not have
    /// taken effect; the ledger only counts what was confirmed), then one more round that
    /// must succeed for every log the error did not poison.
    fn workload_through_errors(&mut self) {
        let _ = self.declare("q1");
        let _ = self.put_exchange();
        let _ = self.round();
        for _ in 0..4 {
            let _ = self.append("q1", 4);
            let _ = self.round();
        }
        let _ = self.mark("q1", 0..3);
        let _ = self.ack("q1", 0..2);
        let _ = self.round();
        let _ = self.declare("q2");
        let _ = self.append("q2", 5);
        let _ = self.append("q1", 2);
        let _ = self.round();
        let _ = self.purge("q2");
        let _ = self.append("q2", 2);
        let _ = self.round();
        let _ = self.delete("q1");
        let _ = self.round();
        let _ = self.append("q2", 3);
        let _ = self.round();
    }

    /// Whether every live log is poisoned or not.
    fn poisoned(&self) -> Vec<(String, bool)> {
        self.queues
            .iter()
            .map(|(name, q)| {
                let log = q.log.lock().unwrap_or_else(|e| e.into_inner());
                let poisoned = log.as_ref().is_some_and(|l| l.is_poisoned());
                (name.clone(), poisoned)
            })
            .collect()
    }
}

fn start(sim: &SimFs) -> Result<Run> {
    let (mut store, _, _) = BrokerStore::open_in(sim.shared(), Path::new(DATA), None)?;
    store.set_segment_size(SEGMENT);
    store.set_manual_rounds();
    Ok(Run {
        store,
        queues: HashMap::new(),
        ledger: Ledger::default(),
    })
}

/// Runs the workload on a fresh file system, crashing at `crash` if given. Returns the
/// file system and the ledger.
fn run(crash: Option<(u64, bool)>) -> (SimFs, Ledger, u64) {
    let sim = SimFs::new();
    sim.mkdir_durable(Path::new(DATA));
    let base = sim.ops();
    if let Some((k, torn)) = crash {
        sim.crash_at(base + k, torn);
    }
    let ledger = match start(&sim) {
        Ok(mut run) => {
            let _ = run.workload();
            // Drop the logs before the store: their drop flushes (a no-op once dead).
            run.queues.clear();
            run.ledger
        }
        Err(_) => Ledger::default(),
    };
    let ops = sim.ops() - base;
    (sim, ledger, ops)
}

/// Checks what a crash left against the ledger; panics with `context` on a violation.
fn check(fs: &SimFs, ledger: &Ledger, context: &str) {
    let (store, defs, _) = BrokerStore::open_in(fs.shared(), Path::new(DATA), None)
        .unwrap_or_else(|e| panic!("{context}: the store must open: {e}"));
    for (name, (states, synced)) in &ledger.queue_states {
        let found = defs
            .queues
            .iter()
            .find(|q| &q.name == name)
            .map(|q| q.id.clone());
        // Any state from the last durable one on is possible.
        let possible: Vec<Option<String>> = if *synced == 0 {
            std::iter::once(None)
                .chain(states.iter().cloned())
                .collect()
        } else {
            states[synced - 1..].to_vec()
        };
        assert!(
            possible.contains(&found),
            "{context}: queue {name} is {found:?}, expected one of {possible:?}"
        );
    }
    if let Some(args) = &ledger.exchange_synced {
        let e = defs
            .exchanges
            .iter()
            .find(|e| e.name == "e1")
            .unwrap_or_else(|| panic!("{context}: synced exchange lost"));
        assert!(
            same_table(&e.arguments, args),
            "{context}: arguments changed"
        );
    }
    for q in &defs.queues {
        let (mut log, _) = store
            .open_queue_log(&q.id)
            .unwrap_or_else(|e| panic!("{context}: log of {} must open: {e}", q.name));
        let got = log
            .read(None, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("{context}: log of {} must read: {e}", q.name));
        let appended: HashMap<SegmentPosition, &Bytes> = ledger
            .appended
            .get(&q.id)
            .into_iter()
            .flatten()
            .map(|(p, b)| (*p, b))
            .collect();
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{context}: order");
        let acked = ledger.acks_synced.get(&q.id);
        for (pos, m) in &got {
            assert_eq!(
                appended.get(pos).copied(),
                Some(&m.body),
                "{context}: {} at {pos} is not what was appended there",
                q.name
            );
            if acked.is_some_and(|a| a.contains(pos)) {
                assert!(
                    log.was_delivered(*pos),
                    "{context}: {} at {pos} was acked and synced, came back unflagged",
                    q.name
                );
            }
        }
        let present: BTreeSet<SegmentPosition> = got.iter().map(|(p, _)| *p).collect();
        let unsynced_acks = ledger.acks_pending.get(&q.id);
        for pos in ledger.confirmed.get(&q.id).into_iter().flatten() {
            // An ack that was written may have survived the crash, synced or not.
            if acked.is_some_and(|a| a.contains(pos))
                || unsynced_acks.is_some_and(|a| a.contains(pos))
            {
                continue;
            }
            assert!(
                present.contains(pos),
                "{context}: confirmed message of {} at {pos} lost",
                q.name
            );
        }
    }
    store.remove_orphans();
    for q in &defs.queues {
        let dir = Path::new(DATA).join("queues").join(&q.id);
        assert!(
            fs.shared().exists(&dir).unwrap_or(false),
            "{context}: the log of {} was removed",
            q.name
        );
    }
}

#[test]
fn a_crash_at_every_io_point_loses_nothing_confirmed() {
    let (sim, ledger, ops) = run(None);
    assert!(!sim.crashed());
    assert!(ops > 50, "the workload makes {ops} crash points");
    assert!(
        ledger.confirmed.values().map(BTreeSet::len).sum::<usize>() > 20,
        "the workload confirms messages"
    );
    check(&sim.power_loss(PowerLoss::ProcessKill), &ledger, "no crash");
    let modes = [
        (false, PowerLoss::DropUnsynced),
        (true, PowerLoss::DropUnsynced),
        (true, PowerLoss::ProcessKill),
        (true, PowerLoss::MetadataOnly),
    ];
    let mut walked = 0;
    for k in 0..ops {
        for (torn, mode) in modes {
            let (sim, ledger, _) = run(Some((k, torn)));
            assert!(sim.crashed(), "crash point {k} not reached");
            let trace = sim.trace();
            let at = trace.last().cloned().unwrap_or_default();
            check(
                &sim.power_loss(mode),
                &ledger,
                &format!("crash at {at} (torn: {torn}, {mode:?})"),
            );
            walked += 1;
        }
    }
    eprintln!("walked {ops} crash points, {walked} crashes");
}

/// An I/O error at every I/O point in turn (EIO, ENOSPC, EMFILE, ENFILE), the workload
/// going on through it: nothing confirmed is lost, after a power loss or not; a
/// shortage of descriptors poisons no log and a later round succeeds; the store opens.
#[test]
fn an_error_at_every_io_point_loses_nothing_confirmed() {
    use rustix::io::Errno;
    let (_, _, ops) = run(None);
    let errors = [Errno::IO, Errno::NOSPC, Errno::MFILE, Errno::NFILE];
    let mut injected = 0;
    for k in 0..ops {
        for errno in errors {
            let sim = SimFs::new();
            sim.mkdir_durable(Path::new(DATA));
            let at = sim.ops() + k;
            sim.fail_at(at, errno.raw_os_error());
            let Ok(mut run) = start(&sim) else {
                continue;
            };
            run.workload_through_errors();
            let context = format!(
                "{errno:?} at {}",
                sim.trace()
                    .get(usize::try_from(at).unwrap_or(usize::MAX))
                    .cloned()
                    .unwrap_or_default()
            );
            if matches!(errno, Errno::MFILE | Errno::NFILE) {
                for (name, poisoned) in run.poisoned() {
                    assert!(!poisoned, "{context}: {name} poisoned by a transient error");
                }
                run.round()
                    .unwrap_or_else(|e| panic!("{context}: a later round must succeed: {e}"));
            }
            run.queues.clear();
            let ledger = std::mem::take(&mut run.ledger);
            drop(run);
            for mode in [PowerLoss::DropUnsynced, PowerLoss::ProcessKill] {
                check(
                    &sim.power_loss(mode),
                    &ledger,
                    &format!("{context} ({mode:?})"),
                );
            }
            injected += 1;
        }
    }
    eprintln!("injected {injected} errors at {ops} I/O points");
}
