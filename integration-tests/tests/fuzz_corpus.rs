//! The connection fuzz target's bounded run in the test command: every committed corpus
//! file (`fuzz/corpus/connection/`), then a few seconds of seeded random inputs, through
//! the same harness the `connection` fuzz target calls (`integration_tests::fuzz`).
//! Long runs: `bench/fuzz.sh`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::fuzz;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/connection");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

#[test]
fn connection_corpus_replays() {
    for file in corpus() {
        let data = std::fs::read(&file).expect("read a corpus file");
        let outcome = std::panic::catch_unwind(|| fuzz::connection(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}

/// The seeds written into the corpus still decode and pass (they are regenerated with
/// `cargo test -p integration-tests --test fuzz_corpus -- --ignored write_seeds`).
#[test]
fn connection_seeds_pass() {
    for (name, data) in fuzz::seeds::connection() {
        let outcome = std::panic::catch_unwind(|| fuzz::connection(&data));
        assert!(outcome.is_ok(), "seed {name} fails");
    }
}

/// Found by the harness: a 404 quoting a 255-byte queue name has a reply text longer
/// than a short string, on which amq-protocol's encoder panicked, killing the connection
/// task without a close (the corpus keeps it as `seed-frames-long-name-in-error`).
#[test]
fn regression_a_long_name_in_an_error_closes_the_channel() {
    let (_, input) = fuzz::seeds::connection()
        .into_iter()
        .find(|(name, _)| *name == "frames-long-name-in-error")
        .expect("the seed exists");
    fuzz::connection(&input);
}

/// Writes the named seeds of all three targets into `fuzz/corpus/<target>/` (run after
/// changing them; the codec's own tests replay the codec and field_table ones).
#[test]
#[ignore = "writes into the source tree"]
fn write_seeds() {
    for (target, seeds) in [
        ("connection", fuzz::seeds::connection()),
        ("codec", fuzz::seeds::codec()),
        ("field_table", fuzz::seeds::field_table()),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).expect("write a seed");
        }
    }
}

/// Seeded random inputs for three seconds: corpus files with a few bytes overwritten,
/// and random session inputs (kind byte 2), which `arbitrary` always decodes.
#[test]
fn connection_random_run() {
    let seeds: Vec<Vec<u8>> = corpus()
        .iter()
        .map(|f| std::fs::read(f).expect("read a corpus file"))
        .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        let mut input: Vec<u8> = if next() % 2 == 0 {
            let mut input = vec![fuzz::kind::SESSION];
            input.extend((0..8 + next() % 600).map(|_| next() as u8));
            input
        } else {
            seeds[next() as usize % seeds.len()].clone()
        };
        for _ in 0..next() % 4 {
            let at = 1 + next() as usize % input.len().saturating_sub(1).max(1);
            if let Some(byte) = input.get_mut(at) {
                *byte = next() as u8;
            }
        }
        let outcome = std::panic::catch_unwind(|| fuzz::connection(&input));
        assert!(outcome.is_ok(), "input {input:?} fails");
        runs += 1;
    }
    eprintln!("{runs} random sessions");
    assert!(runs > 10, "only {runs} sessions ran in the time given");
}
