#!/usr/bin/env bash
# Issue 16's management benchmarks, Warren and then RabbitMQ in one sitting (one at a
# time, so that neither broker's idle queues take CPU from the other's measurements):
#   1. GET /api/queues, whole and paged (page_size=100, sort=name), with 10,000 queues;
#   2. GET /metrics and /metrics/per-object with 100,000 queues (RabbitMQ: as many as it
#      declares within DECLARE_LIMIT seconds);
#   3. warren-perf's publish rate with no poller, with the web UI's queues-page poll every
#      5 s and every 1 s, interleaved, 5 runs each (the 10,000 queues present), and the
#      broker CPU one such poll costs;
#   4. GET /api/queues/%2F/NAME/groups on a queue with x-partitions: 1000, 100,000
#      messages and a group of 4 members (Warren only: RabbitMQ has no such endpoint).
# bench/management.py does the measuring; this script builds, starts and stops the brokers
# and prints markdown tables of medians. Stops everything on exit.
#
# usage: bench/management.sh [ARGS for bench/management.py run, e.g. --rounds 5]
# env:   WARREN_BIN_DIR (where warren and warren-perf are; unset: cargo build --release and
#        use ${CARGO_TARGET_DIR:-target}/release)  BROKERS ("warren rabbitmq")
#        WARREN_PORT/WARREN_MANAGEMENT_PORT/WARREN_PROMETHEUS_PORT (5686/15686/15687)
#        RABBIT_PORT (5673; management on +10000, Prometheus on +10001, Erlang
#        distribution on +20000)  WARREN_PHASES (list,ui,groups,scrape)
#        RABBIT_PHASES (list,ui,scrape)  RESULTS (a file to keep the raw JSON lines in)
# Needs: python3, rabbitmq-server (Debian bookworm: RabbitMQ 3.10, whose management and
# prometheus plugins ship with it), root (the node runs as the rabbitmq user).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

brokers=${BROKERS:-warren rabbitmq}
w_port=${WARREN_PORT:-5686}
w_api=${WARREN_MANAGEMENT_PORT:-15686}
w_metrics=${WARREN_PROMETHEUS_PORT:-15687}
r_port=${RABBIT_PORT:-5673}
r_api=$((r_port + 10000))
r_metrics=$((r_port + 10001))
r_dist=$((r_port + 20000))
w_phases=${WARREN_PHASES:-list,ui,groups,scrape}
r_phases=${RABBIT_PHASES:-list,ui,scrape}
command_line="bench/management.sh${*:+ $*}"

case " $brokers " in *" rabbitmq "*)
  command -v rabbitmq-server >/dev/null || { echo "needs rabbitmq-server (apt-get install -y rabbitmq-server)" >&2; exit 2; } ;;
esac
for p in "$w_port" "$w_api" "$w_metrics" "$r_port" "$r_api" "$r_metrics" "$r_dist"; do
  if ss -ltnH "sport = :$p" | grep -q .; then echo "port $p is in use" >&2; exit 2; fi
done

if [ -n "${WARREN_BIN_DIR:-}" ]; then
  bin=$WARREN_BIN_DIR
  built_from=
else
  cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf
  bin=${CARGO_TARGET_DIR:-$root/target}/release
  built_from=" from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server || echo ' with uncommitted changes in server/')"
fi
warren=$bin/warren
perf=$bin/warren-perf
[ -x "$warren" ] && [ -x "$perf" ] || { echo "no warren or warren-perf in $bin" >&2; exit 2; }

scratch=$(mktemp -d /tmp/bench-management.XXXXXX)
chmod 755 "$scratch"
results=$scratch/results.jsonl
warren_pid=
r_base=$scratch/rabbit
r_node=bench$r_port@localhost
rabbit_env() {
  # As /work/shared/tools/rabbitmq.sh, but in our scratch directory.
  export RABBITMQ_NODENAME=$r_node RABBITMQ_NODE_PORT=$r_port RABBITMQ_DIST_PORT=$r_dist \
    RABBITMQ_MNESIA_BASE=$r_base/mnesia RABBITMQ_LOG_BASE=$r_base/log \
    RABBITMQ_CONFIG_FILE=$r_base/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$r_base/enabled_plugins \
    RABBITMQ_FEATURE_FLAGS_FILE=$r_base/ff HOME=$r_base
}
stop_warren() {
  if [ -n "$warren_pid" ]; then
    kill "$warren_pid" 2>/dev/null && wait "$warren_pid" 2>/dev/null
    warren_pid=
  fi
  return 0
}
cleanup() {
  set +e
  stop_warren
  if [ -d "$r_base" ]; then
    (rabbit_env; rabbitmqctl -q -n "$r_node" stop >/dev/null 2>&1)
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do ss -ltnH "sport = :$1" | grep -q . && return 0; sleep 0.1; done
  return 1
}

versions=()
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$command_line; $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GB; load average $load_start" >&2

for broker in $brokers; do
  case $broker in
    warren)
      "$warren" --bind 127.0.0.1 --port "$w_port" --management-port "$w_api" \
        --prometheus-port "$w_metrics" --data-dir "$scratch/warren-data" > "$scratch/warren.log" 2>&1 &
      warren_pid=$!
      for p in "$w_port" "$w_api" "$w_metrics"; do
        wait_port "$p" || { echo "Warren did not start; log:" >&2; cat "$scratch/warren.log" >&2; exit 2; }
      done
      versions+=("Warren $("$warren" --version | awk '{print $2}') ($warren, built $(date -r "$warren" '+%F %T')$built_from)")
      python3 bench/management.py run --broker Warren --amqp-port "$w_port" --api-port "$w_api" \
        --metrics-port "$w_metrics" --pid "$warren_pid" --out "$results" --perf "$perf" \
        --phases "$w_phases" "$@"
      stop_warren
      ;;
    rabbitmq)
      mkdir -p "$r_base/mnesia" "$r_base/log"
      echo "[rabbitmq_management,rabbitmq_prometheus]." > "$r_base/enabled_plugins"
      cat > "$r_base/rabbitmq.conf" <<CONF
loopback_users = none
listeners.tcp.default = 127.0.0.1:$r_port
management.tcp.ip = 127.0.0.1
management.tcp.port = $r_api
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $r_metrics
CONF
      chown -R rabbitmq:rabbitmq "$r_base"
      (rabbit_env; setsid rabbitmq-server > "$r_base/out.log" 2>&1 &)
      up=
      for _ in $(seq 120); do
        if (rabbit_env; rabbitmqctl -q -n "$r_node" await_startup >/dev/null 2>&1); then up=1; break; fi
        sleep 1
      done
      [ -n "$up" ] || { echo "RabbitMQ did not start; log:" >&2; cat "$r_base/out.log" >&2; exit 2; }
      wait_port "$r_api" && wait_port "$r_metrics" || { echo "RabbitMQ's plugins did not listen" >&2; exit 2; }
      rabbit_pid=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'list_to_integer(os:getpid()).')
      rabbit_version=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'rabbit_misc:version().' | tr -d '"')
      otp_version=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'erlang:system_info(otp_release).' | tr -d '"')
      versions+=("RabbitMQ $rabbit_version on OTP $otp_version (rabbitmq_management, rabbitmq_prometheus; default settings)")
      python3 bench/management.py run --broker RabbitMQ --amqp-port "$r_port" --api-port "$r_api" \
        --metrics-port "$r_metrics" --pid "$rabbit_pid" --out "$results" --perf "$perf" \
        --phases "$r_phases" "$@"
      (rabbit_env; rabbitmqctl -q -n "$r_node" stop >/dev/null 2>&1) || true
      ;;
    *) echo "unknown broker $broker (warren or rabbitmq)" >&2; exit 2 ;;
  esac
done

echo
echo "Command: \`$command_line\`; $(nproc) cores; load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(date '+%F %T'))."
for v in "${versions[@]}"; do echo "- $v"; done
echo
python3 bench/management.py report "$results"
[ -z "${RESULTS:-}" ] || cp "$results" "$RESULTS"
