#!/usr/bin/env bash
# Long chaos run: the chaos test of integration-tests/tests/chaos.rs (random clients over
# the whole AMQP surface, a 2 s liveness probe, a ledger of confirmed persistent messages
# checked across rounds of SIGKILL and restart) for an hour instead of a minute.
#
#   bench/chaos.sh                       one hour, a fresh random seed
#   WARREN_CHAOS_SECS=600 bench/chaos.sh ten minutes
#   WARREN_CHAOS_SEED=123 bench/chaos.sh replays a seed's choices
#
# Also read: WARREN_CHAOS_ROUND_SECS (15: time between kills), WARREN_CHAOS_CLIENTS (12),
# WARREN_CHAOS_VERIFY_EVERY (10 here: drain and check the ledger every 10 rounds, so
# that its queues stay small), WARREN_CHAOS_LOG (where the whole output goes).
# Debug build on purpose: overflow checks and debug assertions on, and the broker built
# with the deadlock-detection watchdog (which a release test build would also put into
# target/release/warren, the binary the benchmarks measure).
# Prints the run's summary line (seed, rounds, ops, errors by reply code, probe latency,
# confirmed, lost, freezes) at the end; exits non-zero if the run failed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export WARREN_CHAOS_SECS="${WARREN_CHAOS_SECS:-3600}"
export WARREN_CHAOS_VERIFY_EVERY="${WARREN_CHAOS_VERIFY_EVERY:-10}"
log="${WARREN_CHAOS_LOG:-$(mktemp -t warren-chaos.XXXXXX.log)}"

cargo build -p warren --bin warren --features deadlock-detection
cargo test -p integration-tests --test chaos --no-run

set +e
cargo test -p integration-tests --test chaos -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo
echo "== chaos run: $WARREN_CHAOS_SECS s, exit status $status, full output in $log"
grep -E '^chaos (summary|FAILURE)' "$log" | cut -c1-2000 || true
exit "$status"
