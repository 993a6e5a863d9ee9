#!/usr/bin/env bash
# Scenario 9: start-up time of Warren and of a throwaway RabbitMQ node, empty and loaded
# (10,000 durable queues, 1,000,000 persistent messages). Prints a markdown table and
# writes it to bench/startup.md. ARGS go to bench/startup.py (e.g. --runs 3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
scratch=$(mktemp -d)
chmod 755 "$scratch"
cat > "$scratch/rabbitmq-env.conf" <<'CONF'
# Sourced by rabbitmq-env as the rabbitmq user: raise the soft open-file limit again.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CONF
chmod 644 "$scratch/rabbitmq-env.conf"
export RABBITMQ_CONF_ENV_FILE="$scratch/rabbitmq-env.conf"
trap 'rm -rf "$scratch"' EXIT
python3 bench/startup.py "$@" | tee bench/startup.md
