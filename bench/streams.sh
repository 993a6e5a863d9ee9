#!/usr/bin/env bash
# Streams (issue 14, docs/streams-design.md) beside RabbitMQ's streams over AMQP 0-9-1, in
# the same sitting: builds Warren and warren-perf (release), starts Warren on a scratch data
# directory and, when rabbitmq-server is installed, a throwaway RabbitMQ node
# (../shared/tools/rabbitmq.sh; apt-get install -y rabbitmq-server), and runs, interleaved
# (Warren, RabbitMQ, Warren, ...), medians of STREAMS_RUNS runs:
#   1. publish with confirms (window 256, as bench/compare.sh) into a fresh stream, 1
#      producer, 1 consumer reading it from first, 16 B and 1 KiB bodies, STREAMS_SECS s of
#      publishing: publish and consume msg/s and p50 latency. Issue 14's goal: Warren
#      >= 10x RabbitMQ.
#   2. a replay: STREAMS_MESSAGES confirmed messages of STREAMS_REPLAY_SIZE bytes into a
#      fresh stream, then STREAMS_READERS consumers reading it from first at once
#      (warren-perf --stream --backlog): the aggregate delivery rate, and the broker's RSS
#      (VmRSS sampled every 0.1 s): idle before the run, peak while filling, peak while
#      replaying, and its VmHWM. Each broker is restarted on empty data before each replay
#      run, so that these are that run's alone.
# warren-perf checks every run: each consumer must receive every message exactly once.
# The markdown summary goes to stdout, progress to stderr.
#
#   bench/streams.sh                         the default sitting: about 10 minutes
#   STREAMS_RUNS=1 STREAMS_SECS=2 STREAMS_MESSAGES=20000 bench/streams.sh    a quick look
#   STREAMS_RABBITMQ=0 bench/streams.sh      Warren only
#
# Also read: STREAMS_SIZES ("16 1024": body sizes of part 1), STREAMS_READERS (10),
# STREAMS_REPLAY_SIZE (1024), STREAMS_CONFIRM (256), STREAMS_PREFETCH (200: each consumer's
# basic.qos, which is its credit on a stream), STREAMS_RABBITMQ (auto: RabbitMQ when
# rabbitmq-server is installed; 1 requires it, 0 skips it), STREAMS_PROFILE (release;
# debug only tries the script out, its numbers mean nothing), WARREN_BENCH_PORT (5693),
# RABBIT_BENCH_PORT (5673), CARGO_TARGET_DIR.
# Exits non-zero if a run against Warren failed or was not verified.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
rabbit="$root/../shared/tools/rabbitmq.sh"
warren_port=${WARREN_BENCH_PORT:-5693}
rabbit_port=${RABBIT_BENCH_PORT:-5673}
profile=${STREAMS_PROFILE:-release}
with_rabbit=${STREAMS_RABBITMQ:-auto}

case $profile in
  release) cargo build --release -p warren -p integration-tests --bin warren --bin warren-perf ;;
  debug) cargo build -p warren -p integration-tests --bin warren --bin warren-perf ;;
  *) echo "STREAMS_PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin="$target/$profile"

if [ "$with_rabbit" = auto ]; then
  if command -v rabbitmq-server >/dev/null && [ -x "$rabbit" ]; then
    with_rabbit=1
  else
    echo "no rabbitmq-server (apt-get install -y rabbitmq-server) or no $rabbit: Warren only" >&2
    with_rabbit=0
  fi
fi

scratch=$(mktemp -d -t warren-streams.XXXXXX)
chmod 755 "$scratch"
rabbit_started=
# fresh.sh warren|rabbitmq (re)starts that broker on empty data and prints its PID.
cat > "$scratch/fresh.sh" <<SCRIPT
#!/usr/bin/env bash
set -euo pipefail
case \$1 in
  warren)
    if [ -f "$scratch/warren.pid" ]; then
      old=\$(cat "$scratch/warren.pid")
      kill "\$old" 2>/dev/null || true
      while kill -0 "\$old" 2>/dev/null; do sleep 0.1; done
    fi
    rm -rf "$scratch/data"
    "$bin/warren" --bind 127.0.0.1 --port $warren_port --data-dir "$scratch/data" \\
      --log-level warn </dev/null >>"$scratch/warren.log" 2>&1 &
    echo \$! > "$scratch/warren.pid"
    for _ in \$(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$warren_port") 2>/dev/null; then break; fi
      sleep 0.1
    done
    cat "$scratch/warren.pid" ;;
  rabbitmq)
    "$rabbit" stop $rabbit_port >&2 || true
    "$rabbit" start $rabbit_port | tail -n 1 ;;
esac
SCRIPT
chmod 755 "$scratch/fresh.sh"
cleanup() {
  if [ -f "$scratch/warren.pid" ]; then kill "$(cat "$scratch/warren.pid")" 2>/dev/null || true; fi
  if [ -s "$scratch/warren.log" ]; then
    echo "Warren's log:" >&2
    tail -n 50 "$scratch/warren.log" >&2
  fi
  if [ -n "$rabbit_started" ]; then "$rabbit" stop "$rabbit_port" || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

"$scratch/fresh.sh" warren >/dev/null
brokers=("warren=amqp://guest:guest@127.0.0.1:$warren_port/%2f")
if [ "$with_rabbit" = 1 ]; then
  rabbit_started=1
  if "$scratch/fresh.sh" rabbitmq >/dev/null; then
    brokers+=("rabbitmq=amqp://guest:guest@127.0.0.1:$rabbit_port/%2f")
  elif [ "${STREAMS_RABBITMQ:-auto}" = 1 ]; then
    echo "RabbitMQ did not start" >&2
    exit 2
  else
    echo "RabbitMQ did not start: Warren only" >&2
  fi
fi

cat > "$scratch/streams.py" <<'PY'
"""Runs the scenarios of bench/streams.sh and prints the markdown summary."""
import json
import os
import statistics
import subprocess
import sys
import threading
import time

PERF, FRESH = sys.argv[1], sys.argv[2]
BROKERS = dict(arg.split("=", 1) for arg in sys.argv[3:])
ENV = os.environ
RUNS = int(ENV.get("STREAMS_RUNS", "3"))
SECS = float(ENV.get("STREAMS_SECS", "10"))
SIZES = [int(s) for s in ENV.get("STREAMS_SIZES", "16 1024").split()]
MESSAGES = int(ENV.get("STREAMS_MESSAGES", "1000000"))
READERS = int(ENV.get("STREAMS_READERS", "10"))
REPLAY_SIZE = int(ENV.get("STREAMS_REPLAY_SIZE", "1024"))
CONFIRM = ENV.get("STREAMS_CONFIRM", "256")
PREFETCH = ENV.get("STREAMS_PREFETCH", "200")
NAMES = {"warren": "Warren", "rabbitmq": "RabbitMQ"}
failed = False


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """VmRSS of a process every 0.1 s, with the monotonic time of each sample."""

    def __init__(self, pid):
        self.pid = pid
        self.samples = [(time.monotonic(), status_kb(pid, "VmRSS"))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic(), status_kb(self.pid, "VmRSS")))

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), status_kb(self.pid, "VmRSS")))

    def peak_mb(self, start, end):
        """Largest sample in [start, end]; the one nearest the window if none falls in it."""
        inside = [kb for t, kb in self.samples if start <= t <= end]
        if not inside:
            inside = [min(self.samples, key=lambda s: abs(s[0] - (start + end) / 2))[1]]
        return max(inside) / 1024


def perf(broker, args, timeout):
    """One warren-perf run: its JSON report and exit status, or None if it failed."""
    global failed
    cmd = [PERF, "--uri", BROKERS[broker], "--json", "--quiet", "--stream",
           "--prefetch", PREFETCH, *args]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        log(f"  {broker}: warren-perf failed ({out.returncode}): {out.stderr.strip()}")
        failed = failed or broker == "warren"
        return None
    report = json.loads(out.stdout)
    if report["verdict"]["status"] != "verified":
        log(f"  {broker}: NOT VERIFIED: {json.dumps(report['verdict'])}")
        failed = failed or broker == "warren"
    return report


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def ratio(w, r):
    if w is None or not r:
        return "–"
    return f"{w / r:.1f}×" if w / r >= 0.95 else f"{w / r:.2g}×"


def verified(reports):
    ok = sum(1 for r in reports if r and r["verdict"]["status"] == "verified")
    return f"{ok}/{len(reports)}"


def publish_runs():
    results = {(b, s): [] for b in BROKERS for s in SIZES}
    for run in range(RUNS):
        for size in SIZES:
            for broker in BROKERS:
                log(f"publish+consume {size} B, run {run + 1}/{RUNS}: {broker}")
                results[broker, size].append(perf(
                    broker, ["--confirm", CONFIRM, "--duration", str(SECS), "--size", str(size)],
                    timeout=SECS * 3 + 600))
    return results


def replay_runs():
    results = {b: [] for b in BROKERS}
    for run in range(RUNS):
        for broker in BROKERS:
            log(f"replay, run {run + 1}/{RUNS}: {broker} (restarting it on empty data)")
            pid = int(subprocess.run([FRESH, broker], stdin=subprocess.DEVNULL, check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
            time.sleep(1)
            idle = status_kb(pid, "VmRSS") / 1024
            sampler = Sampler(pid)
            start = time.monotonic()
            report = perf(broker, ["--backlog", "--count", str(MESSAGES), "--confirm", CONFIRM,
                                   "--size", str(REPLAY_SIZE), "--consumers", str(READERS)],
                          timeout=3600)
            end = time.monotonic()
            hwm = status_kb(pid, "VmHWM") / 1024
            sampler.stop()
            if report is None:
                results[broker].append(None)
                continue
            # The replay is the last consume.seconds of the run (then only the close and
            # the stream's deletion follow): what comes before it is the fill.
            split = end - report["consume"]["seconds"]
            results[broker].append({
                "report": report,
                "fill": report["publish"]["msgs_per_sec"],
                "replay": report["consume"]["msgs_per_sec"],
                "replay_mb": report["consume"]["mb_per_sec"],
                "idle_mb": idle,
                "fill_peak_mb": sampler.peak_mb(start, split),
                "replay_peak_mb": sampler.peak_mb(split, end),
                "hwm_mb": hwm,
            })
    return results


def main():
    brokers = " and ".join(NAMES[b] for b in BROKERS)
    publish = publish_runs() if SIZES and SECS > 0 else {}
    replay = replay_runs() if MESSAGES > 0 and READERS > 0 else {}
    print(f"# Streams over AMQP 0-9-1: {brokers}\n")
    print(f"{ENV.get('STREAMS_VERSIONS', '')}; {os.cpu_count()} cores; medians of {RUNS} "
          "run(s), interleaved; every run checked by warren-perf (each consumer receives "
          "every message once).\n")
    rabbit = "rabbitmq" in BROKERS
    if publish:
        print(f"## Publish with confirms (window {CONFIRM}), 1 producer, 1 consumer from "
              f"`first` (prefetch {PREFETCH}), {SECS:g} s\n")
        head = "| body | Warren publish msg/s | Warren consume msg/s | Warren p50 ms |"
        rule = "| ---: | ---: | ---: | ---: |"
        if rabbit:
            head += (" RabbitMQ publish msg/s | RabbitMQ consume msg/s | RabbitMQ p50 ms "
                     "| publish ratio | consume ratio | goal ≥ 10× |")
            rule += " ---: | ---: | ---: | ---: | ---: | --- |"
        print(head + " verified |")
        print(rule + " --- |")
        for size in SIZES:
            m = {}
            for b in BROKERS:
                reports = [r for r in publish[b, size] if r]
                m[b] = (median([r["publish"]["msgs_per_sec"] for r in reports]),
                        median([r["consume"]["msgs_per_sec"] for r in reports]),
                        median([(r["latency"] or {}).get("p50_us", 0) / 1000 for r in reports]))
            row = f"| {size} B | {num(m['warren'][0])} | {num(m['warren'][1])} | {num(m['warren'][2], 2)} |"
            checks = f"Warren {verified(publish['warren', size])}"
            if rabbit:
                r = m["rabbitmq"]
                pub, con = m["warren"][0], m["warren"][1]
                goal = ("met" if pub and con and r[0] and r[1] and pub >= 10 * r[0]
                        and con >= 10 * r[1] else "not met")
                row += (f" {num(r[0])} | {num(r[1])} | {num(r[2], 2)} | {ratio(pub, r[0])} "
                        f"| {ratio(con, r[1])} | {goal} |")
                checks += f", RabbitMQ {verified(publish['rabbitmq', size])}"
            print(f"{row} {checks} |")
        print()
    if replay:
        print(f"## Replay: {MESSAGES:,} messages of {REPLAY_SIZE} B (confirmed), then "
              f"{READERS} consumers from `first` at once (prefetch {PREFETCH} each)\n")
        print("| broker | fill msg/s | replay deliveries/s (all consumers) | replay MB/s "
              "| RSS idle MB | peak RSS filling MB | peak RSS replaying MB | VmHWM MB | verified |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        m = {}
        for b in BROKERS:
            runs = [r for r in replay[b] if r]
            m[b] = {k: median([r[k] for r in runs]) for k in
                    ("fill", "replay", "replay_mb", "idle_mb", "fill_peak_mb",
                     "replay_peak_mb", "hwm_mb")}
            checks = verified([r["report"] if r else None for r in replay[b]])
            x = m[b]
            print(f"| {NAMES[b]} | {num(x['fill'])} | {num(x['replay'])} | {num(x['replay_mb'], 1)} "
                  f"| {num(x['idle_mb'], 1)} | {num(x['fill_peak_mb'], 1)} "
                  f"| {num(x['replay_peak_mb'], 1)} | {num(x['hwm_mb'], 1)} | {checks} |")
        if rabbit:
            w, r = m["warren"], m["rabbitmq"]
            print(f"| Warren / RabbitMQ | {ratio(w['fill'], r['fill'])} "
                  f"| {ratio(w['replay'], r['replay'])} | {ratio(w['replay_mb'], r['replay_mb'])} "
                  f"| {ratio(w['idle_mb'], r['idle_mb'])} | {ratio(w['fill_peak_mb'], r['fill_peak_mb'])} "
                  f"| {ratio(w['replay_peak_mb'], r['replay_peak_mb'])} | {ratio(w['hwm_mb'], r['hwm_mb'])} | |")
        print("\nRSS: the broker's VmRSS sampled every 0.1 s, each replay run on a broker just "
              "restarted on empty data; the replay is the run's last `consume.seconds`, the fill "
              "what comes before. VmHWM is the kernel's peak over the broker's whole life "
              "(start-up, fill and replay), which catches what falls between samples; its "
              "counters lag by a few pages per thread, so it may read a little below a sample.")
    sys.exit(1 if failed else 0)


main()
PY

versions="Warren $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?') ($profile)"
if [ "${#brokers[@]}" -gt 1 ]; then
  versions+=", RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')"
fi
STREAMS_VERSIONS=$versions python3 "$scratch/streams.py" "$bin/warren-perf" "$scratch/fresh.sh" \
  "${brokers[@]}"
