//! Tests of [`StreamLog`]: appends, reads from any offset or time, segments, retention,
//! damage, and a crash at every I/O point of a workload followed by a power loss.

use std::collections::BTreeMap;
use std::path::Path;

use super::fs::{FsRef, OpenMode};
use super::sim::{PowerLoss, SimFs};
use super::stream_format::{StreamEntry, StreamRecord};
use super::stream_log::{Read, StreamLog};

const DIR: &str = "/data/streams/s1";
const T0: u64 = 1_700_000_000_000;

fn body(offset: u64) -> Vec<u8> {
    let mut b = format!("m{offset}:").into_bytes();
    b.resize(
        10 + (offset as usize * 31) % 150,
        b'a' + (offset % 26) as u8,
    );
    b
}

fn filter(offset: u64) -> Option<String> {
    (offset % 3 != 0).then(|| format!("f{}", offset % 3))
}

/// Appends `n` messages; their offsets.
fn append(log: &mut StreamLog, n: u64, now_ms: u64) -> Vec<u64> {
    let first = log.end_offset();
    append_checked(log, n, now_ms).expect("append");
    (first..log.end_offset()).collect()
}

fn sync(log: &mut StreamLog) -> super::Result<u64> {
    let pending = log.begin_sync()?;
    let result = pending.run();
    log.complete_sync(pending, &result)
}

/// Every readable entry from `from` on, through one reader, seeking again when lost.
fn read_from(log: &StreamLog, from: u64) -> Vec<StreamEntry> {
    let mut reader = log.reader();
    let mut next = from.max(log.first_offset());
    let mut at = log.seek(next).expect("seek");
    let mut out = Vec::new();
    let mut lost = 0;
    while next < log.readable_end() {
        match reader.read(at, log.readable_end()).expect("read") {
            Read::Chunk(chunk) => {
                for entry in chunk.body.entries() {
                    let entry = entry.expect("an entry");
                    if entry.offset >= next {
                        out.push(entry);
                    }
                }
                next = next.max(chunk.body.info.end_offset());
                at = chunk.next;
            }
            Read::End => break,
            Read::Lost => {
                lost += 1;
                assert!(lost < 100, "lost at {at:?} again and again");
                let again = log.seek(next).expect("seek");
                if again == at {
                    let (past, from) = log.seek_past(at).expect("seek past");
                    at = past;
                    next = next.max(from);
                } else {
                    at = again;
                }
            }
        }
    }
    out
}

fn check_entries(entries: &[StreamEntry]) {
    for e in entries {
        assert_eq!(&e.body[..], &body(e.offset)[..], "offset {}", e.offset);
        assert_eq!(
            e.filter_value.as_deref(),
            filter(e.offset).as_deref().map(str::as_bytes)
        );
        assert_eq!(&e.exchange[..], b"ex");
    }
    assert!(entries.windows(2).all(|w| w[0].offset < w[1].offset));
}

fn sim() -> (SimFs, FsRef) {
    let sim = SimFs::new();
    sim.mkdir_durable(Path::new("/data/streams"));
    let fs = sim.shared();
    (sim, fs)
}

#[test]
fn appends_are_readable_only_once_synced() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    assert_eq!(append(&mut log, 10, T0), (0..10).collect::<Vec<_>>());
    assert_eq!(log.readable_end(), 0);
    assert!(read_from(&log, 0).is_empty());
    assert_eq!(sync(&mut log).expect("sync"), 10);
    let got = read_from(&log, 0);
    assert_eq!(got.len(), 10);
    check_entries(&got);
    append(&mut log, 5, T0 + 1);
    assert_eq!(
        read_from(&log, 0).len(),
        10,
        "the open chunk is not readable"
    );
}

#[test]
fn reads_cross_chunks_and_segments_from_any_offset() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    for round in 0..40 {
        append(&mut log, 1 + round % 7, T0 + round);
        sync(&mut log).expect("sync");
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    let end = log.readable_end();
    let all = read_from(&log, 0);
    assert_eq!(all.len() as u64, end);
    check_entries(&all);
    for from in 0..end {
        let got = read_from(&log, from);
        assert_eq!(got.first().map(|e| e.offset), Some(from));
        assert_eq!(got.len() as u64, end - from);
    }
    assert!(read_from(&log, end + 5).is_empty());
}

#[test]
fn a_chunk_is_sealed_at_its_entry_cap() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 26, 16).expect("create");
    append(&mut log, 10_000, T0);
    sync(&mut log).expect("sync");
    // Chunks of 4096: the last one starts at 8192.
    assert_eq!(log.last_chunk_offset(), 8192);
    assert_eq!(read_from(&log, 9000).len(), 1000);
}

#[test]
fn times_and_last_find_chunk_starts() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    assert_eq!(log.last_chunk_offset(), 0);
    assert_eq!(log.offset_at_time(T0).expect("time"), 0);
    let mut starts = Vec::new();
    for round in 0..30u64 {
        starts.push(log.end_offset());
        append(&mut log, 3, T0 + round * 1000);
        sync(&mut log).expect("sync");
    }
    assert_eq!(log.last_chunk_offset(), *starts.last().expect("chunks"));
    for (round, start) in starts.iter().enumerate() {
        let t = T0 + round as u64 * 1000;
        assert_eq!(log.offset_at_time(t).expect("time"), *start, "at {t}");
        assert_eq!(log.offset_at_time(t - 500).expect("time"), *start);
    }
    assert_eq!(log.offset_at_time(0).expect("time"), 0);
    assert_eq!(
        log.offset_at_time(T0 + 10_000_000).expect("time"),
        log.readable_end()
    );
}

#[test]
fn a_reopened_log_has_everything_synced_and_goes_on_after_it() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    for round in 0..20 {
        append(&mut log, 4, T0 + round);
        sync(&mut log).expect("sync");
    }
    let (end, last, segments) = (
        log.readable_end(),
        log.last_chunk_offset(),
        log.segment_count(),
    );
    append(&mut log, 3, T0 + 50);
    drop(log);
    let sim = sim.power_loss(PowerLoss::DropUnsynced);
    let (mut log, recovery) = StreamLog::open(sim.shared(), DIR, 4096, 16).expect("open");
    assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
    assert_eq!(
        (
            log.readable_end(),
            log.last_chunk_offset(),
            log.segment_count()
        ),
        (end, last, segments)
    );
    check_entries(&read_from(&log, 0));
    assert_eq!(append(&mut log, 2, T0 + 60), vec![end, end + 1]);
    sync(&mut log).expect("sync");
    assert_eq!(
        log.segment_count(),
        segments + 1,
        "appends go to a new segment"
    );
    let all = read_from(&log, 0);
    assert_eq!(all.len() as u64, end + 2);
    check_entries(&all);
}

#[test]
fn retention_drops_whole_segments_oldest_first() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    for round in 0..60u64 {
        append(&mut log, 5, T0 + round * 1000);
        sync(&mut log).expect("sync");
    }
    let segments = log.segment_count();
    let before = log.disk_bytes();
    assert_eq!(
        log.apply_retention(Some(u64::MAX), None, T0).expect("keep"),
        0
    );
    let removed = log
        .apply_retention(Some(before / 2), None, T0)
        .expect("by size");
    assert!(removed > 0 && log.disk_bytes() <= before / 2, "{removed}");
    assert!(
        log.disk_bytes() + 4096 > before / 2,
        "within one segment of the limit"
    );
    assert_eq!(log.segment_count(), segments - removed);
    let first = log.first_offset();
    assert!(first > 0);
    let got = read_from(&log, 0);
    assert_eq!(got.first().map(|e| e.offset), Some(first));
    check_entries(&got);
    // By age: everything older than 10 s before the last chunk's time.
    let now = T0 + 59_000;
    log.apply_retention(None, Some(10_000), now)
        .expect("by age");
    let first = read_from(&log, 0)[0].offset;
    assert!(log.offset_at_time(0).expect("time") == first);
    // Never the last segment.
    log.apply_retention(Some(0), Some(0), u64::MAX)
        .expect("all");
    assert_eq!(log.segment_count(), 1);
    assert!(!read_from(&log, 0).is_empty());
}

#[test]
fn a_reader_in_a_segment_retention_removed_finds_its_way_on() {
    let (_sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    for round in 0..40 {
        append(&mut log, 5, T0 + round);
        sync(&mut log).expect("sync");
    }
    let at = log.seek(0).expect("seek");
    log.apply_retention(Some(log.disk_bytes() / 2), None, T0)
        .expect("retention");
    let mut reader = log.reader();
    assert!(matches!(
        reader.read(at, log.readable_end()),
        Ok(Read::Lost)
    ));
    let got = read_from(&log, 0);
    assert_eq!(got[0].offset, log.first_offset());
}

#[test]
fn a_damaged_chunk_is_skipped_and_a_torn_tail_cut() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    for round in 0..10 {
        append(&mut log, 3, T0 + round);
        sync(&mut log).expect("sync");
    }
    drop(log);
    let segment = Path::new(DIR).join("0000000000.sseg");
    let len = sim.contents(&segment).expect("a segment").len();
    // Damage a byte in the middle, and add garbage at the end as a torn write would.
    sim.scribble(&segment, len / 2, &[0xff, 0xee]);
    let file = sim
        .shared()
        .open(&segment, OpenMode::ReadWrite)
        .expect("open");
    file.write_all_at(&[0, 0, 1, 0, 9, 9, 9], len as u64)
        .expect("write");
    file.sync_data().expect("sync");
    drop(file);
    // The tail is cut at once; the damage inside is found by the reader that meets it.
    let (log, recovery) = StreamLog::open(sim.shared(), DIR, 1 << 20, 16).expect("open");
    assert_eq!(recovery.warnings.len(), 1, "{:?}", recovery.warnings);
    assert_eq!(sim.contents(&segment).map(|c| c.len()), Some(len));
    let got = read_from(&log, 0);
    check_entries(&got);
    assert!(
        got.len() >= 24 && got.len() < 30,
        "{} of 30 kept",
        got.len()
    );
    assert_eq!(
        got.last().map(|e| e.offset),
        Some(29),
        "chunks after the damage kept"
    );
    assert_eq!(log.readable_end(), 30);
}

#[test]
fn a_failed_sync_poisons_the_log_and_confirms_nothing() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    append(&mut log, 3, T0);
    sync(&mut log).expect("sync");
    append(&mut log, 3, T0);
    sim.inject(super::sim::Fault {
        op: super::sim::Op::SyncFile,
        path: String::new(),
        skip: 0,
        times: 1,
        errno: rustix::io::Errno::IO.raw_os_error(),
        torn: false,
    });
    assert!(sync(&mut log).is_err());
    assert_eq!(log.readable_end(), 3);
    let record = StreamRecord {
        filter_value: None,
        exchange: "",
        routing_key: "",
        properties: &[0, 0],
        body: b"",
    };
    assert!(
        log.append(&record, T0).is_err(),
        "a poisoned log refuses appends"
    );
}

/// What a workload was told.
#[derive(Debug, Default)]
struct Ledger {
    /// The readable end each successful sync reported.
    confirmed: u64,
    /// Offsets given out.
    appended: u64,
}

fn workload(fs: FsRef, ledger: &mut Ledger) -> super::Result<()> {
    let mut log = StreamLog::create(fs.clone(), DIR, 4096, 16)?;
    for round in 0..12u64 {
        ledger.appended += append_checked(&mut log, 2 + round % 5, T0 + round)?;
        ledger.confirmed = sync(&mut log)?;
        if round == 8 {
            log.apply_retention(Some(8192), None, T0)?;
        }
    }
    drop(log);
    let (mut log, _) = StreamLog::open(fs, DIR, 4096, 16)?;
    for round in 0..3u64 {
        ledger.appended = ledger.appended.max(log.end_offset());
        ledger.appended += append_checked(&mut log, 3, T0 + 100 + round)?;
        ledger.confirmed = sync(&mut log)?;
    }
    Ok(())
}

fn append_checked(log: &mut StreamLog, n: u64, now_ms: u64) -> super::Result<u64> {
    for _ in 0..n {
        let offset = log.end_offset();
        let (b, f) = (body(offset), filter(offset));
        let record = StreamRecord {
            filter_value: f.as_deref(),
            exchange: "ex",
            routing_key: "rk",
            properties: &[0, 0],
            body: &b,
        };
        log.append(&record, now_ms)?;
    }
    Ok(n)
}

fn run(crash: Option<(u64, bool)>) -> (SimFs, Ledger, u64) {
    let (sim, fs) = sim();
    let base = sim.ops();
    if let Some((k, torn)) = crash {
        sim.crash_at(base + k, torn);
    }
    let mut ledger = Ledger::default();
    let _ = workload(fs, &mut ledger);
    let ops = sim.ops() - base;
    (sim, ledger, ops)
}

/// The same damage found by a scan: a log whose index is gone.
#[test]
fn a_scan_steps_over_a_damaged_chunk_to_the_valid_ones_after_it() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    for round in 0..10 {
        append(&mut log, 3, T0 + round);
        sync(&mut log).expect("sync");
    }
    drop(log);
    let segment = Path::new(DIR).join("0000000000.sseg");
    let len = sim.contents(&segment).expect("a segment").len();
    sim.scribble(&segment, len / 2, &[0xff, 0xee]);
    super::fs::FileSystem::remove_file(&*sim.shared(), &Path::new(DIR).join("0000000000.sidx"))
        .expect("remove the index");
    let (log, recovery) = StreamLog::open(sim.shared(), DIR, 1 << 20, 16).expect("open");
    assert_eq!(recovery.warnings.len(), 1, "{:?}", recovery.warnings);
    let got = read_from(&log, 0);
    check_entries(&got);
    assert_eq!(got.len(), 27, "one chunk of 3 lost");
    assert_eq!(got.last().map(|e| e.offset), Some(29));
}

fn check_after_crash(fs: &SimFs, ledger: &Ledger, context: &str) {
    if !fs.shared().exists(Path::new(DIR)).unwrap_or(false) {
        assert_eq!(
            ledger.confirmed, 0,
            "{context}: a confirmed stream vanished"
        );
        return;
    }
    let (mut log, _) = StreamLog::open(fs.shared(), DIR, 4096, 16)
        .unwrap_or_else(|e| panic!("{context}: the log must open: {e}"));
    let got = read_from(&log, 0);
    check_entries(&got);
    let present: BTreeMap<u64, ()> = got.iter().map(|e| (e.offset, ())).collect();
    let first = log.first_offset();
    for offset in first..ledger.confirmed {
        assert!(
            present.contains_key(&offset),
            "{context}: confirmed offset {offset} lost (first kept {first})"
        );
    }
    assert!(
        log.readable_end() >= ledger.confirmed,
        "{context}: readable end {} below what was confirmed, {}",
        log.readable_end(),
        ledger.confirmed
    );
    // The log goes on after everything it holds.
    let next = append(&mut log, 1, T0 + 1000)[0];
    assert!(next >= log.readable_end(), "{context}");
    sync(&mut log).unwrap_or_else(|e| panic!("{context}: sync after recovery: {e}"));
}

#[test]
fn a_crash_at_every_io_point_loses_nothing_confirmed() {
    let (sim, ledger, ops) = run(None);
    assert!(!sim.crashed());
    assert!(ops > 60, "the workload makes {ops} crash points");
    assert!(
        ledger.confirmed > 40,
        "the workload confirms {}",
        ledger.confirmed
    );
    check_after_crash(&sim.power_loss(PowerLoss::ProcessKill), &ledger, "no crash");
    let modes = [
        (false, PowerLoss::DropUnsynced),
        (true, PowerLoss::DropUnsynced),
        (true, PowerLoss::ProcessKill),
        (true, PowerLoss::MetadataOnly),
    ];
    for k in 0..ops {
        for (torn, mode) in modes {
            let (sim, ledger, _) = run(Some((k, torn)));
            assert!(sim.crashed(), "crash point {k} not reached");
            let at = sim.trace().last().cloned().unwrap_or_default();
            check_after_crash(
                &sim.power_loss(mode),
                &ledger,
                &format!("crash at {at} (torn: {torn}, {mode:?})"),
            );
        }
    }
}

/// An I/O error at one I/O point in turn (EIO, ENOSPC, EMFILE), the workload going on
/// through it with more rounds: nothing confirmed is lost; the log opens afterwards.
#[test]
fn an_error_at_every_io_point_loses_nothing_confirmed() {
    use rustix::io::Errno;
    let (_, _, ops) = run(None);
    for k in 0..ops {
        for errno in [Errno::IO, Errno::NOSPC, Errno::MFILE] {
            let (sim, fs) = sim();
            sim.fail_at(sim.ops() + k, errno.raw_os_error());
            let mut ledger = Ledger::default();
            let Ok(mut log) = StreamLog::create(fs.clone(), DIR, 4096, 16) else {
                continue;
            };
            for round in 0..20u64 {
                if append_checked(&mut log, 2 + round % 5, T0 + round).is_err() {
                    break;
                }
                if let Ok(end) = sync(&mut log) {
                    ledger.confirmed = end;
                }
            }
            drop(log);
            let context = format!("{errno:?} at point {k}");
            check_after_crash(&sim.power_loss(PowerLoss::DropUnsynced), &ledger, &context);
        }
    }
}

#[test]
fn retention_keeps_the_newest_segment_with_durable_chunks_so_offsets_never_restart() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 4096, 16).expect("create");
    for round in 0..3 {
        append(&mut log, 5, T0 + round);
        sync(&mut log).expect("sync");
    }
    let end = log.readable_end();
    assert_eq!(log.segment_count(), 1);
    // The disk fills up: the next roll makes an empty segment and its chunk fails.
    sim.inject(super::sim::Fault {
        op: super::sim::Op::Write,
        path: "0000000001.sseg".into(),
        skip: 1,
        times: 1000,
        errno: rustix::io::Errno::NOSPC.raw_os_error(),
        torn: false,
    });
    append(&mut log, 60, T0 + 10);
    assert!(sync(&mut log).is_err());
    assert_eq!(
        log.segment_count(),
        2,
        "an empty segment after the failed write"
    );
    // Retention asks for nothing to be kept: the segment holding the end stays.
    log.apply_retention(Some(0), Some(0), u64::MAX)
        .expect("retention");
    drop(log);
    sim.clear_faults();
    let (mut log, _) = StreamLog::open(sim.shared(), DIR, 4096, 16).expect("open");
    assert_eq!(log.readable_end(), end, "the end survives");
    assert!(
        append(&mut log, 1, T0 + 20)[0] >= end,
        "offsets go on after it"
    );
}

#[test]
fn a_chunk_with_a_damaged_length_is_stepped_over_by_readers() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    let mut starts = Vec::new();
    for round in 0..10 {
        starts.push(log.end_offset());
        append(&mut log, 3, T0 + round);
        sync(&mut log).expect("sync");
    }
    drop(log);
    let (log, _) = StreamLog::open(sim.shared(), DIR, 1 << 20, 16).expect("open");
    // The fifth chunk's length now runs far past the file.
    let at = log.seek(starts[4]).expect("seek");
    let segment = Path::new(DIR).join("0000000000.sseg");
    sim.scribble(&segment, at.pos as usize, &[0x7f, 0xff, 0xff, 0xff]);
    let got = read_from(&log, 0);
    check_entries(&got);
    assert_eq!(got.len(), 27, "one chunk of 3 lost");
    assert_eq!(got.last().map(|e| e.offset), Some(29));
}

#[test]
fn what_recovery_makes_readable_survives_a_later_power_loss() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 20, 16).expect("create");
    append(&mut log, 5, T0);
    sync(&mut log).expect("sync");
    append(&mut log, 5, T0);
    // Written, never synced: the broker is killed before the fdatasync.
    let unsynced = log.begin_sync().expect("write");
    drop(unsynced);
    drop(log);
    // The broker starts again on the same machine: the page cache still holds it all.
    let (log, _) = StreamLog::open(sim.shared(), DIR, 1 << 20, 16).expect("open");
    assert_eq!(log.readable_end(), 10, "a kill keeps what was written");
    drop(log);
    // Readers may have seen offsets 5..9 by now: a power loss must not take them back.
    let lost_power = sim.power_loss(PowerLoss::DropUnsynced);
    let (log, _) = StreamLog::open(lost_power.shared(), DIR, 1 << 20, 16).expect("open");
    assert_eq!(log.readable_end(), 10);
}

#[test]
fn appends_are_refused_while_writes_keep_failing_past_a_bound() {
    let (sim, fs) = sim();
    let mut log = StreamLog::create(fs, DIR, 1 << 30, 16).expect("create");
    sim.inject(super::sim::Fault {
        op: super::sim::Op::Write,
        path: ".sseg".into(),
        skip: 0,
        times: usize::MAX,
        errno: rustix::io::Errno::NOSPC.raw_os_error(),
        torn: false,
    });
    let body = vec![7u8; 1 << 20];
    let record = StreamRecord {
        filter_value: None,
        exchange: "",
        routing_key: "",
        properties: &[0, 0],
        body: &body,
    };
    let refused = (0..200).find(|_| log.append(&record, T0).is_err());
    let at = refused.expect("appends are refused at last");
    assert!((60..=70).contains(&at), "refused after {at} MiB");
    assert!(matches!(
        log.append(&record, T0),
        Err(super::StoreError::Backlogged(..))
    ));
    // The disk has room again: appends go on, and everything is written.
    sim.clear_faults();
    log.append(&record, T0).expect("accepted again");
    assert_eq!(sync(&mut log).expect("sync"), at as u64 + 1);
}
