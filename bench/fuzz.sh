#!/usr/bin/env bash
# Long fuzz runs: each target for a given time, one worker at nice 19, starting from the
# committed corpus; then `cargo fuzz cmin` merges what the run found back into
# fuzz/corpus/<target>/, minimized. The test command replays that corpus (without
# libFuzzer), so commit it when it grew for a reason.
#
#   bench/fuzz.sh [-t SECONDS] [TARGET...]
#
# SECONDS is per target (default 600); TARGETs default to codec field_table connection.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on stable Rust the nightly flags
# libFuzzer needs are allowed with RUSTC_BOOTSTRAP=1, set here. Crashes land in
# fuzz/artifacts/<target>/, the run's log in fuzz/logs/<target>.log (both ignored by git);
# the last lines of each log (execs, cov, ft, corpus size) are printed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

seconds=600
if [ "${1:-}" = "-t" ]; then
  seconds="$2"
  shift 2
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec field_table connection)

export RUSTC_BOOTSTRAP=1
export LSAN_OPTIONS="suppressions=$root/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

# Largest input per target: deep tables need a few KB; whole sessions a little more.
max_len() {
  case "$1" in
    field_table) echo 4096 ;;
    *) echo 8192 ;;
  esac
}

mkdir -p logs
for target in "${targets[@]}"; do
  echo "==> building $target"
  nice -n 19 cargo fuzz build "$target"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "==> fuzzing $target for ${seconds}s (log: fuzz/logs/$target.log)"
  # New inputs go to $work (the first corpus directory); the committed corpus is only read.
  status=0
  nice -n 19 cargo fuzz run "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
    -max_len="$(max_len "$target")" -print_final_stats=1 \
    >"logs/$target.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "!! $target stopped with status $status: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
  fi
  echo "==> merging what $target found into corpus/$target (cmin)"
  # cmin renames everything to content hashes: set the named inputs (seed-*, crash-*)
  # aside, minimize the rest together with them, drop the hashes of the named ones, and
  # put the named ones back, so that they keep saying what they are.
  named=$(mktemp -d)
  find "corpus/$target" -maxdepth 1 -type f \( -name 'seed-*' -o -name 'crash-*' \) \
    -exec cp {} "$named/" \;
  cp -n "$work"/* "corpus/$target/" 2>/dev/null || true
  nice -n 19 cargo fuzz cmin "$target" "corpus/$target" -- -max_len="$(max_len "$target")" \
    >>"logs/$target.log" 2>&1
  for f in "$named"/*; do
    [ -e "$f" ] || continue
    rm -f "corpus/$target/$(sha1sum "$f" | cut -d' ' -f1)"
    cp "$f" "corpus/$target/"
  done
  rm -rf "$work" "$named"
  trap - EXIT
done

for target in "${targets[@]}"; do
  echo "--- $target"
  grep -E "cov:.*corp:" "logs/$target.log" | tail -1 || true
  grep -E "^Done [0-9]+ runs" "logs/$target.log" || true
  echo "corpus: $(find "corpus/$target" -type f | wc -l) files," \
    "$(find "corpus/$target" -type f -printf '%s\n' | awk '{s += $1} END {print s}') bytes"
done
