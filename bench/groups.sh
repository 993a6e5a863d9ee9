#!/usr/bin/env bash
# Consumer groups over partitioned queues (issue 13, docs/partitions-design.md §8): builds
# Warren and warren-perf (release), starts Warren on a scratch data directory, and runs
#   1. the churn: `warren-perf groups` (16 partitions, 10,000 keys, persistent confirmed
#      `key:seq` messages, a member started, cancelled or SIGKILLed every 2 s, lapin and
#      pika members in turn, prefetch 10, 0-2 ms work), with its checks;
#   2. a latency churn: the same with no work, so join / hand-over / fail-over times are
#      the broker's, not a busy member's backlog;
#   3. joins: `warren-perf group-join` (a steady 32,000 msg/s into 16 partitions, 3
#      members, one more joining and leaving every 3 s): the rate the partitions a
#      rebalance does not move lose, worst 100 ms bucket, beside a quiet control;
#   4. throughput: a plain queue 1 -> 1 against 1 partition 1 -> 1, and N partitions with
#      N producers and N members (N = 1 2 4 8 16) beside N plain queues 1 -> 1 each (what
#      the machine gives N independent flows), transient and persistent (confirms),
#      consume msg/s medians of GROUPS_RUNS runs;
#   5. with GROUPS_RABBITMQ=1, the churn against RabbitMQ's nearest equivalent (an
#      x-consistent-hash exchange -> 16 single-active-consumer quorum queues), on a
#      throwaway node (../shared/tools/rabbitmq.sh; apt-get install -y rabbitmq-server).
#
#   bench/groups.sh                              short: 60 s, 200,000 messages
#   GROUPS_DURATION=300 GROUPS_MESSAGES=1000000 bench/groups.sh     the issue's full run
#   GROUPS_RABBITMQ=1 bench/groups.sh            RabbitMQ too
#   bench/groups.sh --seed 42                    ARGS go to every `warren-perf groups`
#
# Also read: GROUPS_LATENCY_DURATION (30; 0 skips the latency churn), GROUPS_JOINS (10;
# 0 skips the joins), GROUPS_RUNS (3; 0 skips throughput), GROUPS_TP_SECS (5: seconds per throughput run), GROUPS_OUT (where
# the results and every member's JSON lines go; a fresh temporary directory by default),
# WARREN_BENCH_PORT (5692), RABBIT_BENCH_PORT (5673), CARGO_TARGET_DIR.
# Exits non-zero if a churn's checks failed against Warren (RabbitMQ's are expected to
# fail: its single active consumer switches without draining); the evidence stays in
# GROUPS_OUT.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
rabbit="$root/../shared/tools/rabbitmq.sh"
warren_port=${WARREN_BENCH_PORT:-5692}
rabbit_port=${RABBIT_BENCH_PORT:-5673}
duration=${GROUPS_DURATION:-60}
messages=${GROUPS_MESSAGES:-200000}
latency_duration=${GROUPS_LATENCY_DURATION:-30}
joins=${GROUPS_JOINS:-10}
runs=${GROUPS_RUNS:-3}
tp_secs=${GROUPS_TP_SECS:-5}
out=${GROUPS_OUT:-$(mktemp -d -t warren-groups.XXXXXX)}
mkdir -p "$out"

cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf
perf="$target/release/warren-perf"

pika=()
python="$root/examples-python/.venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import pika' 2>/dev/null; then
  pika=(--pika-member "$python $root/bench/group_member.py")
else
  echo "no pika in examples-python/.venv (scripts/test.sh makes it): lapin members only" >&2
fi

scratch=$(mktemp -d)
"$target/release/warren" --bind 127.0.0.1 --port "$warren_port" --data-dir "$scratch/data" \
  --log-level warn </dev/null >>"$scratch/warren.log" 2>&1 &
warren_pid=$!
rabbit_started=
cleanup() {
  kill "$warren_pid" 2>/dev/null || true
  if [ -s "$scratch/warren.log" ]; then
    echo "Warren's log:" >&2
    tail -n 50 "$scratch/warren.log" >&2
  fi
  if [ -n "$rabbit_started" ]; then "$rabbit" stop "$rabbit_port" || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT
warren_uri="amqp://guest:guest@127.0.0.1:$warren_port/%2f"
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$warren_port") 2>/dev/null; then break; fi
  sleep 0.1
done

status=0
churn() { # NAME ARGS...: one churn, its table on stdout, its JSON and events in $out
  local name=$1
  shift
  echo
  echo "== $name"
  "$perf" groups --events "$out/$name-events.jsonl" --json "$out/$name.json" "$@"
}

churn churn --uri "$warren_uri" --duration "$duration" --messages "$messages" "${pika[@]}" "$@" ||
  status=1
if [ "$latency_duration" != 0 ]; then
  latency_messages=$((messages * latency_duration / duration))
  churn latency --uri "$warren_uri" --duration "$latency_duration" \
    --messages "$latency_messages" --work-max-us 0 "${pika[@]}" "$@" || status=1
fi

if [ "$joins" != 0 ]; then
  echo
  echo "== joins"
  "$perf" group-join --uri "$warren_uri" --joins "$joins" --json "$out/join.json" || status=1
fi

if [ "$runs" != 0 ]; then
  echo
  echo "== throughput: consume msg/s, median of $runs runs of $tp_secs s"
  tp() { # LABEL ARGS...: prints "LABEL median runs..."
    local label=$1 rates=()
    shift
    for _ in $(seq "$runs"); do
      rates+=("$("$perf" --uri "$warren_uri" --duration "$tp_secs" --quiet --json "$@" |
        python3 -c 'import json, sys; d = json.load(sys.stdin)
print(round(d["consume"]["msgs_per_sec"]) if d["verdict"]["status"] == "verified" else "unverified")')")
    done
    python3 - "$label" "${rates[@]}" <<'EOF'
import statistics, sys
label, rates = sys.argv[1], sys.argv[2:]
numbers = [int(r) for r in rates if r.isdigit()]
median = statistics.median(numbers) if len(numbers) == len(rates) else "FAILED"
print(f"| {label} | {median:,} | {' '.join(rates)} |" if median != "FAILED" else f"| {label} | FAILED | {' '.join(rates)} |")
EOF
  }
  echo "| run | median msg/s | runs |"
  echo "| --- | ---: | --- |"
  for mode in transient persistent; do
    extra=()
    if [ "$mode" = persistent ]; then extra=(--persistent --confirm 256); fi
    tp "$mode plain queue 1->1" "${extra[@]}"
    for n in 1 2 4 8 16; do
      tp "$mode $n partition(s), $n->$n" --partitions "$n" -x "$n" -y "$n" "${extra[@]}"
      if [ "$n" != 1 ]; then
        tp "$mode $n plain queues, 1->1 each" --queues "$n" -x "$n" -y "$n" "${extra[@]}"
      fi
    done
  done | tee "$out/throughput.md"
fi

if [ "${GROUPS_RABBITMQ:-0}" = 1 ]; then
  "$rabbit" stop "$rabbit_port" >/dev/null 2>&1 || true
  PLUGINS=rabbitmq_consistent_hash_exchange "$rabbit" start "$rabbit_port" >/dev/null
  rabbit_started=1
  # What breaks there is the finding, not a failure of this script.
  churn rabbitmq --broker rabbitmq --uri "amqp://guest:guest@127.0.0.1:$rabbit_port/%2f" \
    --duration "$duration" --messages "$messages" "${pika[@]}" "$@" || true
fi

echo
echo "results and every member's JSON lines: $out"
exit "$status"
