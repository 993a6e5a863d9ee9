#!/usr/bin/env bash
# Builds Warren and warren-perf (release), starts Warren on a scratch data directory and a
# throwaway RabbitMQ node (../shared/tools/rabbitmq.sh), runs every scenario of
# bench/compare.py against both, interleaved, and writes the markdown table to
# bench/results.md and the chart to bench/results.svg. Extra arguments go to compare.py
# (e.g. --runs 5 --duration 10 --scenario 1p1c-16B-ack).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rabbit="$root/../shared/tools/rabbitmq.sh"
warren_port=${WARREN_BENCH_PORT:-5690}
rabbit_port=${RABBIT_BENCH_PORT:-5673}

cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf
data=$(mktemp -d)
./target/release/warren --bind 127.0.0.1 --port "$warren_port" --data-dir "$data" --log-level warn &
warren_pid=$!
rabbit_pid=$("$rabbit" start "$rabbit_port" | tail -n 1)
cleanup() {
  kill "$warren_pid" 2>/dev/null || true
  "$rabbit" stop "$rabbit_port" || true
  rm -rf "$data"
}
trap cleanup EXIT

python3 bench/compare.py \
  --warren-pid "$warren_pid" --warren-uri "amqp://guest:guest@127.0.0.1:$warren_port/%2f" \
  --rabbit-pid "$rabbit_pid" --rabbit-uri "amqp://guest:guest@127.0.0.1:$rabbit_port/%2f" \
  --svg bench/results.svg "$@" | tee bench/results.md
