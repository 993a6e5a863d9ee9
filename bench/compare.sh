#!/usr/bin/env bash
# Builds Warren and warren-perf (release), starts Warren on a scratch data directory and a
# throwaway RabbitMQ node (../shared/tools/rabbitmq.sh), runs the scenarios of
# bench/compare.py against both, interleaved, and writes the markdown table.
#
#   bench/compare.sh [ARGS...]          main scenarios -> bench/results.md, bench/results.svg
#   bench/compare.sh growth [ARGS...]   "how cost grows" sweeps -> bench/growth.md
#
# ARGS go to compare.py (e.g. --runs 5 --duration 10 --scenario 1p1c-16B-ack, or for
# growth --runs 1 --sweep connections --with-10m).
#
# Both brokers get the highest open-file limit allowed (65536, else the hard limit), so
# that 10,000 connections fit: Warren inherits it from this shell; RabbitMQ is started
# through `su`, whose PAM session drops the soft limit back to 1024, so the limit is
# raised again by an rabbitmq-env.conf that the node's start script sources.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rabbit="$root/../shared/tools/rabbitmq.sh"
warren_port=${WARREN_BENCH_PORT:-5690}
rabbit_port=${RABBIT_BENCH_PORT:-5673}

group=main
out=bench/results.md
if [ "${1:-}" = growth ]; then
  group=growth
  out=bench/growth.md
  shift
fi

cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
scratch=$(mktemp -d)
chmod 755 "$scratch"
mkdir "$scratch/data"
cat > "$scratch/rabbitmq-env.conf" <<'EOF'
# Sourced by rabbitmq-env as the rabbitmq user: raise the soft open-file limit again.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
EOF
chmod 644 "$scratch/rabbitmq-env.conf"
export RABBITMQ_CONF_ENV_FILE="$scratch/rabbitmq-env.conf"

# fresh.sh (re)starts both brokers on empty data and prints "WARREN_PID RABBITMQ_PID".
# compare.py runs it before every scenario (and growth row), so that each row's RSS and
# CPU are that row's alone, not what an earlier one left in the heap.
cat > "$scratch/fresh.sh" <<SCRIPT
#!/usr/bin/env bash
set -euo pipefail
if [ -f "$scratch/warren.pid" ]; then
  old=\$(cat "$scratch/warren.pid")
  kill "\$old" 2>/dev/null || true
  while kill -0 "\$old" 2>/dev/null; do sleep 0.1; done
fi
rm -rf "$scratch/data"
mkdir "$scratch/data"
"$root/target/release/warren" --bind 127.0.0.1 --port $warren_port --data-dir "$scratch/data" \\
  --log-level warn </dev/null >>"$scratch/warren.log" 2>&1 &
echo \$! > "$scratch/warren.pid"
"$rabbit" stop $rabbit_port >&2 || true
rabbit_pid=\$("$rabbit" start $rabbit_port | tail -n 1)
echo "\$(cat "$scratch/warren.pid") \$rabbit_pid"
SCRIPT
chmod 755 "$scratch/fresh.sh"
read -r warren_pid rabbit_pid < <("$scratch/fresh.sh")
cleanup() {
  kill "$(cat "$scratch/warren.pid")" 2>/dev/null || true
  if [ -s "$scratch/warren.log" ]; then
    echo "Warren's log:" >&2
    cat "$scratch/warren.log" >&2
  fi
  "$rabbit" stop "$rabbit_port" || true
  rm -rf "$scratch"
}
trap cleanup EXIT
echo "open-file limits: Warren $(awk '/open files/ {print $4}' "/proc/$warren_pid/limits")," \
  "RabbitMQ $(awk '/open files/ {print $4}' "/proc/$rabbit_pid/limits")" >&2

extra=(--fresh "$scratch/fresh.sh")
if [ "$group" = main ]; then
  extra+=(--svg bench/results.svg)
fi
python3 bench/compare.py --group "$group" \
  --warren-pid "$warren_pid" --warren-uri "amqp://guest:guest@127.0.0.1:$warren_port/%2f" \
  --rabbit-pid "$rabbit_pid" --rabbit-uri "amqp://guest:guest@127.0.0.1:$rabbit_port/%2f" \
  "${extra[@]}" "$@" | tee "$out"
