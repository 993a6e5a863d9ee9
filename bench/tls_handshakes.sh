#!/usr/bin/env bash
# Connection set-ups per second over TLS (AMQPS) and plain TCP, Warren beside RabbitMQ,
# in one sitting. Makes a throwaway CA and a server certificate for localhost/127.0.0.1,
# starts a release Warren and a RabbitMQ node, each with a plain and a TLS listener, and
# runs `warren-perf --connections N --hold 0` against each in turn, ROUNDS times
# interleaved (Warren plain, Warren TLS, RabbitMQ plain, RabbitMQ TLS). Prints the
# negotiated TLS parameters and a markdown table of medians. Stops everything on exit.
#
# usage: bench/tls_handshakes.sh
# env:   ROUNDS (3)  CONNECTIONS (500; RabbitMQ's default open-files limit refuses
#        beyond ~800)  CONCURRENCY (100)  KEY (rsa: RSA 2048, or ec: ECDSA P-256)
#        WARREN_PORT/WARREN_TLS_PORT (5680/5681)  RABBIT_PORT/RABBIT_TLS_PORT (5683/5684,
#        Erlang distribution on RABBIT_PORT + 20000)
# Needs: openssl, python3, rabbitmq-server (Debian bookworm: RabbitMQ 3.10), root (the
# node runs as the rabbitmq user, as /work/shared/tools/rabbitmq.sh starts it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-500}
concurrency=${CONCURRENCY:-100}
key_type=${KEY:-rsa}
w_port=${WARREN_PORT:-5680}
w_tls=${WARREN_TLS_PORT:-5681}
r_port=${RABBIT_PORT:-5683}
r_tls=${RABBIT_TLS_PORT:-5684}
r_dist=$((r_port + 20000))

command -v rabbitmq-server >/dev/null || { echo "needs rabbitmq-server (apt-get install -y rabbitmq-server)" >&2; exit 2; }
for p in "$w_port" "$w_tls" "$r_port" "$r_tls" "$r_dist"; do
  if ss -ltnH "sport = :$p" | grep -q .; then echo "port $p is in use" >&2; exit 2; fi
done

cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf
warren=$root/target/release/warren
perf=$root/target/release/warren-perf

scratch=$(mktemp -d /tmp/tls-handshakes.XXXXXX)
chmod 755 "$scratch"
warren_pid=
r_base=$scratch/rabbit
r_node=bench$r_port@localhost
rabbit_env() {
  # As /work/shared/tools/rabbitmq.sh, but with a rabbitmq.conf of our own (TLS listener).
  export RABBITMQ_NODENAME=$r_node RABBITMQ_NODE_PORT=$r_port RABBITMQ_DIST_PORT=$r_dist \
    RABBITMQ_MNESIA_BASE=$r_base/mnesia RABBITMQ_LOG_BASE=$r_base/log \
    RABBITMQ_CONFIG_FILE=$r_base/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$r_base/enabled_plugins \
    RABBITMQ_FEATURE_FLAGS_FILE=$r_base/ff HOME=$r_base
}
cleanup() {
  set +e
  [ -n "$warren_pid" ] && kill "$warren_pid" 2>/dev/null && wait "$warren_pid" 2>/dev/null
  if [ -d "$r_base" ]; then
    (rabbit_env; rabbitmqctl -q -n "$r_node" stop >/dev/null 2>&1)
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# --- certificates: a CA, and a server certificate for localhost and 127.0.0.1 ---------
pki=$scratch/pki
mkdir -p "$pki"
case $key_type in
  rsa) newkey=(-newkey rsa:2048) ;;
  ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  *) echo "KEY must be rsa or ec" >&2; exit 2 ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=warren bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -new "${newkey[@]}" -nodes -subj "/CN=localhost" \
  -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > "$pki/server.ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$pki/server.ext" -out "$pki/server.pem" 2>/dev/null
chmod 755 "$pki"
chmod 644 "$pki"/*   # the rabbitmq user reads them (throwaway keys)

# --- Warren -------------------------------------------------------------------------------
"$warren" --bind 127.0.0.1 --port "$w_port" --tls-port "$w_tls" \
  --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" \
  --data-dir "$scratch/warren-data" > "$scratch/warren.log" 2>&1 &
warren_pid=$!

# --- RabbitMQ -----------------------------------------------------------------------------
mkdir -p "$r_base/mnesia" "$r_base/log"
echo "[]." > "$r_base/enabled_plugins"
cat > "$r_base/rabbitmq.conf" <<CONF
loopback_users = none
listeners.tcp.default = 127.0.0.1:$r_port
listeners.ssl.default = 127.0.0.1:$r_tls
ssl_options.cacertfile = $pki/ca.pem
ssl_options.certfile = $pki/server.pem
ssl_options.keyfile = $pki/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
chown -R rabbitmq:rabbitmq "$r_base"
(rabbit_env; setsid rabbitmq-server > "$r_base/out.log" 2>&1 &)
up=
for _ in $(seq 90); do
  if (rabbit_env; rabbitmqctl -q -n "$r_node" await_startup >/dev/null 2>&1); then up=1; break; fi
  sleep 1
done
[ -n "$up" ] || { echo "RabbitMQ did not start; log:" >&2; cat "$r_base/out.log" >&2; exit 2; }
rabbit_pid=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'list_to_integer(os:getpid()).')
rabbit_version=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'rabbit_misc:version().' | tr -d '"')
otp_version=$(rabbit_env; rabbitmqctl -q -n "$r_node" eval 'erlang:system_info(otp_release).' | tr -d '"')

for p in "$w_port" "$w_tls"; do
  for _ in $(seq 50); do ss -ltnH "sport = :$p" | grep -q . && break; sleep 0.1; done
done
kill -0 "$warren_pid" || { echo "Warren did not start; log:" >&2; cat "$scratch/warren.log" >&2; exit 2; }

echo "Warren $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server || echo ' (server/ has uncommitted changes)') pid $warren_pid;" \
  "RabbitMQ $rabbit_version on OTP $otp_version pid $rabbit_pid; key $key_type;" \
  "$connections connections, $concurrency at once, $rounds rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for target in "Warren $w_tls" "RabbitMQ $r_tls"; do
  set -- $target
  echo "openssl s_client → $1 (its own choice of groups; warren-perf's line below is what the runs use):" >&2
  openssl s_client -connect "127.0.0.1:$2" -servername localhost -CAfile "$pki/ca.pem" </dev/null 2>/dev/null \
    | grep -E '^(New,|Server Temp Key|Peer signature type|Verification:|Verify return code)' | sed 's/^/  /' >&2 || true
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
results=$scratch/results.jsonl
# run BROKER TRANSPORT PORT PID ROUND
run() {
  local broker=$1 transport=$2 port=$3 pid=$4 round=$5 uri tls_args=() before after out rc=0
  if [ "$transport" = tls ]; then
    uri="amqps://guest:guest@localhost:$port/%2f"; tls_args=(--ca-cert "$pki/ca.pem")
  else
    uri="amqp://guest:guest@127.0.0.1:$port/%2f"
  fi
  before=$(cpu_ticks "$pid")
  out=$("$perf" --uri "$uri" "${tls_args[@]}" --connections "$connections" --hold 0 \
    --connect-concurrency "$concurrency" --json 2> "$scratch/perf.err") || rc=$?
  after=$(cpu_ticks "$pid")
  grep -h '^warren-perf: TLS' "$scratch/perf.err" > "$scratch/tls-$broker" 2>/dev/null || true
  [ "$rc" -le 1 ] || { echo "warren-perf failed ($broker $transport):" >&2; cat "$scratch/perf.err" >&2; exit 2; }
  printf '{"broker":"%s","transport":"%s","round":%s,"broker_cpu_ticks":%s,"report":%s}\n' \
    "$broker" "$transport" "$round" "$((after - before))" "$(tail -n 1 <<<"$out")" >> "$results"
  sleep 1   # let the broker finish closing the last round's connections
}

# One unrecorded round of 100 warms each broker and listener up.
for spec in "Warren plain $w_port $warren_pid" "Warren tls $w_tls $warren_pid" \
  "RabbitMQ plain $r_port $rabbit_pid" "RabbitMQ tls $r_tls $rabbit_pid"; do
  set -- $spec
  "$perf" --uri "$([ "$2" = tls ] && echo amqps://guest:guest@localhost || echo amqp://guest:guest@127.0.0.1):$3/%2f" \
    --ca-cert "$pki/ca.pem" --connections 100 --hold 0 --quiet > /dev/null 2>&1 || true
done
for round in $(seq "$rounds"); do
  echo "round $round of $rounds… ($(date +%T))" >&2
  run Warren plain "$w_port" "$warren_pid" "$round"
  run Warren tls "$w_tls" "$warren_pid" "$round"
  run RabbitMQ plain "$r_port" "$rabbit_pid" "$round"
  run RabbitMQ tls "$r_tls" "$rabbit_pid" "$round"
done
for b in Warren RabbitMQ; do echo "$b: $(cat "$scratch/tls-$b" 2>/dev/null)" >&2; done
echo "load average at the end ($(date +%T)): $(cut -d' ' -f1-3 /proc/loadavg)" >&2

CLK_TCK=$(getconf CLK_TCK) python3 - "$results" <<'PY'
import json, os, statistics, sys
tick = 1000.0 / int(os.environ["CLK_TCK"])
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["broker"], r["transport"]), []).append(r)
print("| broker | transport | connections/s (median) | set-up p50 | set-up p99 "
      "| broker CPU per connection | warren-perf CPU per connection | opened | runs (conn/s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
med = statistics.median
for (broker, transport), runs in rows.items():
    reps = [r["report"] for r in runs]
    opened = [p["opened"] for p in reps]
    rate = med(p["opens_per_sec"] for p in reps)
    lat = [p["open_latency"] for p in reps if p["open_latency"]]
    p50 = med(l["p50_ms"] for l in lat) if lat else float("nan")
    p99 = med(l["p99_ms"] for l in lat) if lat else float("nan")
    bcpu = med(r["broker_cpu_ticks"] * tick / max(r["report"]["opened"], 1) for r in runs)
    tcpu = med((p["tool_cpu_secs"] or 0) * 1e3 / max(p["opened"], 1) for p in reps)
    each = ", ".join(f"{p['opens_per_sec']:,.0f}" for p in reps)
    print(f"| {broker} | {'TLS' if transport == 'tls' else 'plain TCP'} | {rate:,.0f} "
          f"| {p50:.1f} ms | {p99:.1f} ms | {bcpu:.2f} ms | {tcpu:.2f} ms "
          f"| {min(opened)}–{max(opened)} of {reps[0]['requested']} | {each} |")
PY
