//! Many queue logs under a tiny file-descriptor budget, on a [`SimFs`] that refuses to
//! open more files than the budget (plus the syncer's and one directory handle): random
//! appends, acks, delivered markers, paged reads, spill-log traffic and group-commit
//! rounds over any subset of the logs must never meet EMFILE, and after a power loss every
//! append a round confirmed must be there unless it was acked. Write-back errors that
//! drop a file's unsynced pages may fail a log (a poisoned log, an unconfirmed round),
//! never lose what was confirmed: a log that closed a descriptor before syncing what went
//! through it would miss them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;

use super::fd_budget::FdBudget;
use super::sim::{PowerLoss, SimFs};
use super::{
    BrokerStore, PendingSync, QueueLog, Result, SegmentPosition, StoredMessage, SyncTarget,
};

const DATA: &str = "/data";
const SEGMENT: u64 = 512;
const QUEUES: usize = 24;
const SPILLS: usize = 4;
/// Descriptors the logs may hold.
const BUDGET: usize = 10;
/// What the file system allows: the budget, the syncer's handle of the data directory,
/// and one directory handle of a sync.
const FD_CAP: usize = BUDGET + 2;

#[derive(Debug)]
struct TestQueue(Mutex<QueueLog>);

impl SyncTarget for TestQueue {
    fn begin_sync(&self) -> Option<Result<PendingSync>> {
        Some(
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin_sync(),
        )
    }

    fn complete_sync(&self, pending: PendingSync, result: &Result<()>) -> bool {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.complete_sync(pending, result).is_ok()
    }
}

#[derive(Debug, Clone)]
enum Cmd {
    /// Append this many messages of about this size to queue `q` (spill log if past
    /// `QUEUES`).
    Append { q: usize, n: usize, size: usize },
    /// Ack the n-th message ever appended to `q` (modulo).
    Ack { q: usize, n: usize },
    /// Mark the n-th message of `q` delivered.
    Mark { q: usize, n: usize },
    /// Read a page of `q` from the start.
    Read { q: usize, n: usize },
    /// A group-commit round over the queues whose bit is set.
    Round(u32),
    /// A write-back error on the n-th file (modulo) of queue `q`: its unsynced pages are
    /// lost.
    WritebackError { q: usize, n: usize },
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let q = 0..QUEUES + SPILLS;
    prop_oneof![
        6 => (q.clone(), 1usize..8, 0usize..400).prop_map(|(q, n, size)| Cmd::Append { q, n, size }),
        4 => (q.clone(), any::<usize>()).prop_map(|(q, n)| Cmd::Ack { q, n }),
        1 => (0..QUEUES, any::<usize>()).prop_map(|(q, n)| Cmd::Mark { q, n }),
        2 => (q, 1usize..6).prop_map(|(q, n)| Cmd::Read { q, n }),
        2 => any::<u32>().prop_map(Cmd::Round),
        1 => (0..QUEUES, any::<usize>()).prop_map(|(q, n)| Cmd::WritebackError { q, n }),
    ]
}

fn message(q: usize, i: usize, size: usize) -> StoredMessage {
    let mut body = format!("{q}:{i}:").into_bytes();
    body.resize(body.len() + size, b'a' + (i % 26) as u8);
    StoredMessage {
        persistent: true,
        expires_at_ms: 0,
        exchange: ByteString::from_static(""),
        routing_key: ByteString::from_static("k"),
        properties: Bytes::new(),
        body: Bytes::from(body),
    }
}

/// What each queue was told.
#[derive(Debug, Default)]
struct Ledger {
    appended: Vec<(SegmentPosition, Bytes)>,
    acked: HashSet<SegmentPosition>,
    confirmed: HashSet<SegmentPosition>,
}

fn run(cmds: &[Cmd]) -> std::result::Result<(), TestCaseError> {
    let sim = SimFs::new();
    sim.set_fd_limit(Some(FD_CAP));
    let (mut store, _, _) = BrokerStore::open_in(sim.shared(), Path::new(DATA), None)
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    store.set_manual_rounds();
    store.set_segment_size(SEGMENT);
    store.set_fd_budget(FdBudget::new(BUDGET));
    let fail = |what: &str, e: &dyn std::fmt::Display| TestCaseError::fail(format!("{what}: {e}"));
    let mut queues = Vec::new();
    let mut ids = Vec::new();
    for q in 0..QUEUES {
        let id = format!("q{q}");
        let log = store
            .create_queue_log(&id)
            .map_err(|e| fail("create", &e))?;
        queues.push(Arc::new(TestQueue(Mutex::new(log))));
        ids.push(id);
    }
    let mut spills = Vec::new();
    for _ in 0..SPILLS {
        spills.push(store.create_spill_log().map_err(|e| fail("spill", &e))?);
    }
    let mut ledgers: Vec<Ledger> = (0..QUEUES + SPILLS).map(|_| Ledger::default()).collect();
    // Queues a write-back error failed: left alone from then on.
    let mut failed = [false; QUEUES + SPILLS];
    // An operation's outcome: `None` if it failed because the log is poisoned (which a
    // write-back error may cause); any other error fails the test.
    let outcome = |queues: &[Arc<TestQueue>], q: usize, what: &str, r: Result<()>| match r {
        Ok(()) => Ok(true),
        Err(_)
            if q < QUEUES
                && queues[q]
                    .0
                    .lock()
                    .map_err(|e| fail("lock", &e))?
                    .is_poisoned() =>
        {
            Ok(false)
        }
        Err(e) => Err(fail(what, &e)),
    };
    for cmd in cmds {
        let q = match *cmd {
            Cmd::Append { q, .. }
            | Cmd::Ack { q, .. }
            | Cmd::Mark { q, .. }
            | Cmd::Read { q, .. }
            | Cmd::WritebackError { q, .. } => Some(q),
            Cmd::Round(_) => None,
        };
        if q.is_some_and(|q| failed[q]) {
            continue;
        }
        match *cmd {
            Cmd::Append { q, n, size } => {
                for _ in 0..n {
                    let m = message(q, ledgers[q].appended.len(), size);
                    let pos = if q < QUEUES {
                        queues[q].0.lock().map_err(|e| fail("lock", &e))?.append(&m)
                    } else {
                        spills[q - QUEUES].append(&m)
                    };
                    match pos {
                        Ok(pos) => ledgers[q].appended.push((pos, m.body)),
                        Err(e) => {
                            failed[q] = !outcome(&queues, q, "append", Err(e))?;
                            break;
                        }
                    }
                }
            }
            Cmd::Ack { q, n } => {
                let Some(&(pos, _)) = ledgers[q]
                    .appended
                    .get(n % ledgers[q].appended.len().max(1))
                else {
                    continue;
                };
                // An ack counts even when writing it out failed.
                ledgers[q].acked.insert(pos);
                let r = if q < QUEUES {
                    queues[q].0.lock().map_err(|e| fail("lock", &e))?.ack(pos)
                } else {
                    spills[q - QUEUES].ack(pos)
                };
                failed[q] = !outcome(&queues, q, "ack", r)?;
            }
            Cmd::Mark { q, n } => {
                let Some(&(pos, _)) = ledgers[q]
                    .appended
                    .get(n % ledgers[q].appended.len().max(1))
                else {
                    continue;
                };
                let r = queues[q]
                    .0
                    .lock()
                    .map_err(|e| fail("lock", &e))?
                    .mark_delivered(pos);
                failed[q] = !outcome(&queues, q, "mark", r)?;
            }
            Cmd::Read { q, n } => {
                let page = if q < QUEUES {
                    queues[q]
                        .0
                        .lock()
                        .map_err(|e| fail("lock", &e))?
                        .read(None, n, usize::MAX)
                } else {
                    spills[q - QUEUES].read(None, n, usize::MAX)
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        failed[q] = !outcome(&queues, q, "read", Err(e))?;
                        continue;
                    }
                };
                let expected: Vec<&Bytes> = ledgers[q]
                    .appended
                    .iter()
                    .filter(|(p, _)| !ledgers[q].acked.contains(p))
                    .take(n)
                    .map(|(_, b)| b)
                    .collect();
                let got: Vec<&Bytes> = page.iter().map(|(_, m)| &m.body).collect();
                prop_assert_eq!(got, expected, "read of {}", q);
            }
            Cmd::Round(mask) => {
                let targets: Vec<Arc<dyn SyncTarget>> = (0..QUEUES)
                    .filter(|q| mask & (1 << q) != 0)
                    .map(|q| queues[q].clone() as Arc<dyn SyncTarget>)
                    .collect();
                let round = store.commit_now(&targets);
                for (q, target) in (0..QUEUES).filter(|q| mask & (1 << q) != 0).zip(&targets) {
                    if round.durable(target) {
                        let l = &mut ledgers[q];
                        l.confirmed.extend(l.appended.iter().map(|(p, _)| *p));
                    } else {
                        let poisoned = queues[q]
                            .0
                            .lock()
                            .map_err(|e| fail("lock", &e))?
                            .is_poisoned();
                        prop_assert!(poisoned, "round failed for {} without a cause", q);
                        failed[q] = true;
                    }
                }
            }
            Cmd::WritebackError { q, n } => {
                let dir = Path::new(DATA).join("queues").join(&ids[q]);
                let mut files = super::fs::FileSystem::read_dir(&sim, &dir).unwrap_or_default();
                files.sort();
                if let Some(name) = files.get(n % files.len().max(1)) {
                    sim.writeback_error(&dir.join(name));
                }
            }
        }
        prop_assert!(
            sim.open_files() <= FD_CAP,
            "{} files open",
            sim.open_files()
        );
    }
    drop(spills);
    drop(queues);
    drop(store);
    let after = sim.power_loss(PowerLoss::DropUnsynced);
    for (q, id) in ids.iter().enumerate() {
        let l = &ledgers[q];
        let dir = Path::new(DATA).join("queues").join(id);
        let mut log = match QueueLog::open_in(after.shared(), dir, SEGMENT) {
            Ok((log, _)) => log,
            // Never synced: its directory may be gone, and nothing of it was confirmed.
            Err(e)
                if l.confirmed.is_empty() && e.io_kind() == Some(std::io::ErrorKind::NotFound) =>
            {
                continue;
            }
            Err(e) => return Err(fail("reopen", &e)),
        };
        let got: BTreeMap<SegmentPosition, Bytes> = log
            .read(None, usize::MAX, usize::MAX)
            .map_err(|e| fail("read after power loss", &e))?
            .into_iter()
            .map(|(p, m)| (p, m.body))
            .collect();
        for (p, body) in &l.appended {
            if l.confirmed.contains(p) && !l.acked.contains(p) {
                prop_assert_eq!(
                    got.get(p),
                    Some(body),
                    "queue {} lost a confirmed message",
                    q
                );
            }
        }
        let appended: BTreeMap<SegmentPosition, &Bytes> =
            l.appended.iter().map(|(p, b)| (*p, b)).collect();
        for (p, body) in &got {
            prop_assert_eq!(
                appended.get(p).copied(),
                Some(body),
                "queue {} invented a message",
                q
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn many_logs_stay_within_a_tiny_descriptor_budget(
        cmds in proptest::collection::vec(cmd(), 1..160)
    ) {
        run(&cmds)?;
    }
}

/// Every queue written in one round: before the budget counted descriptors, the round
/// opened one per queue.
#[test]
fn a_round_over_every_queue_stays_within_the_budget() {
    let mut cmds: Vec<Cmd> = (0..QUEUES)
        .map(|q| Cmd::Append { q, n: 2, size: 50 })
        .collect();
    cmds.push(Cmd::Round(u32::MAX));
    cmds.extend((0..QUEUES).map(|q| Cmd::Ack { q, n: 0 }));
    cmds.extend((0..QUEUES).map(|q| Cmd::Read { q, n: 3 }));
    cmds.push(Cmd::Round(u32::MAX));
    run(&cmds).expect("within the budget");
}

/// Shrunk from a failure: two write-back errors reported by one `syncfs` while the round
/// ran in two chunks; q13 (first chunk) claimed it, and q22 (second chunk) had its lost
/// segment confirmed.
#[test]
fn regression_two_writeback_errors_across_chunks() {
    run(&[
        Cmd::Append {
            q: 3,
            n: 3,
            size: 0,
        },
        Cmd::Append {
            q: 13,
            n: 4,
            size: 203,
        },
        Cmd::Round(832_001_048),
        Cmd::Append {
            q: 22,
            n: 6,
            size: 37,
        },
        Cmd::WritebackError {
            q: 22,
            n: 2_987_487_321_456_801_912,
        },
        Cmd::WritebackError { q: 13, n: 0 },
        Cmd::Append {
            q: 1,
            n: 1,
            size: 0,
        },
        Cmd::Append {
            q: 3,
            n: 1,
            size: 0,
        },
        Cmd::Round(692_858_890),
    ])
    .expect("nothing confirmed is lost");
}
