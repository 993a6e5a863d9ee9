#!/usr/bin/env python3
"""Runs warren-perf scenarios against Warren and RabbitMQ, interleaved (A B A B A B),
and prints a markdown table of medians with the ratio Warren / RabbitMQ.

Besides the rates warren-perf reports, it reads each broker's CPU time (user + system,
from /proc/<pid>/stat) before and after every run, giving CPU microseconds per message,
and samples the broker's resident memory during the run (peak VmRSS).

Connection scenarios (warren-perf --connections N) open N connections, each with one
channel and one consumer on its own exclusive queue; the table gives the time to open
them all, and the broker's RSS before, once they are all open (the largest sample over
--settle seconds), and per connection. If a broker refuses some connections, the table
says how many it accepted.

Two groups of scenarios:
  main    (default) the named scenarios below, one table row per metric;
  growth  "how cost grows": the same work at growing sizes (queues, consumers on one
          queue, topic bindings, backlog, connections), one table row per size with
          both brokers' rate and RSS (--sweep picks some). The 10,000,000-message
          backlog only runs with --with-10m (it takes minutes and GBs per broker).

warren-perf is target/release/warren-perf unless $WARREN_PERF names another binary.

usage: bench/compare.py --warren-pid PID --warren-uri URI --rabbit-pid PID --rabbit-uri URI
                        [--group main|growth] [--runs 3] [--duration 5] [--scenario NAME ...]
                        [--sweep NAME ...] [--with-10m] [--settle 1.0] [--svg FILE]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.environ.get("WARREN_PERF", os.path.join(ROOT, "target", "release", "warren-perf"))
TICKS = os.sysconf("SC_CLK_TCK")


class Messages:
    """A message scenario: warren-perf with these arguments."""

    def __init__(self, *args):
        self.args = list(args)


class Connections:
    """A connection scenario: warren-perf --connections n."""

    def __init__(self, n):
        self.n = n


def backlog(count):
    # Publish `count` persistent 128-byte messages with confirms and no consumer, then
    # drain them: "publish" is the fill rate, "consume" the drain rate.
    return Messages("--backlog", "--count", str(count), "--size", "128", "--persistent",
                    "--confirm", "256", "--duration", "900")


SCENARIOS = {
    # First: without --fresh, memory a broker keeps after earlier runs would absorb the
    # connections' allocations and hide their cost.
    "connections-10k": Connections(10_000),
    "1p1c-16B-ack": Messages("--size", "16"),
    "1p1c-16B-noack": Messages("--size", "16", "--no-ack"),
    # A rate both brokers sustain, so that CPU per message compares like for like.
    "1p1c-16B-ack-15krps": Messages("--size", "16", "--rate", "15000"),
    "1p1c-1KiB-ack": Messages("--size", "1024"),
    "4p4c-4q-16B-ack": Messages("--size", "16", "--producers", "4", "--consumers", "4",
                                "--queues", "4"),
    "confirm-persistent-1KiB-1p": Messages("--size", "1024", "--persistent", "--confirm", "256"),
    "confirm-persistent-1KiB-4p": Messages("--size", "1024", "--persistent", "--confirm", "256",
                                           "--producers", "4"),
    # Bounded by count: a broker that takes publishes faster than it delivers them would
    # otherwise build a backlog the run has to wait for.
    "fanout-50q-16B": Messages("--size", "16", "--exchange-type", "fanout", "--queues", "50",
                               "--consumers", "50", "--count", "20000"),
    "latency-1000rps-1KiB": Messages("--size", "1024", "--rate", "1000"),
    "backlog-1M-128B": backlog(1_000_000),
}


SWEEPS = ("connections", "queues", "durable queues, confirms", "consumers on one queue",
          "topic bindings", "backlog")


def growth_scenarios(with_10m):
    """(sweep, size, scenario) for the growth group, in run order."""
    rows = []
    # First: without --fresh, memory a broker keeps after earlier runs would absorb the
    # connections' allocations and hide their cost.
    for n in (10, 100, 1000, 10_000):
        rows.append(("connections", n, Connections(n)))
    # 1 -> 1,000 queues at a fixed 4 connections: 2 producers take turns over their
    # share of the queues; 2 consuming connections carry one consumer per queue.
    for q in (1, 10, 100, 1000):
        rows.append(("queues", q, Messages(
            "--size", "16", "--producers", "2", "--consumers", "2", "--queues", str(q),
            "--consumers-per-connection", str(math.ceil(q / 2)))))
    # The same with persistent messages, durable queues and publisher confirms: one
    # group commit then covers appends to many queue logs.
    for q in (1, 10, 100, 1000):
        rows.append(("durable queues, confirms", q, Messages(
            "--size", "1024", "--persistent", "--confirm", "256", "--producers", "2",
            "--consumers", "2", "--queues", str(q),
            "--consumers-per-connection", str(math.ceil(q / 2)))))
    # 1 -> 1,000 consumers on one queue, on at most 2 connections.
    for c in (1, 10, 100, 1000):
        conns = min(c, 2)
        rows.append(("consumers on one queue", c, Messages(
            "--size", "16", "--consumers", str(conns),
            "--consumers-per-connection", str(c // conns))))
    # 1 -> 10,000 bindings on a topic exchange: the queue's own binding matches, the
    # other n - 1 never do (they lead to a queue that must stay empty).
    for b in (1, 10, 100, 1000, 10_000):
        rows.append(("topic bindings", b, Messages(
            "--size", "16", "--exchange-type", "topic", "--bindings", str(b - 1))))
    for n in (10_000, 100_000, 1_000_000) + ((10_000_000,) if with_10m else ()):
        rows.append(("backlog", n, backlog(n)))
    return rows


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS every 0.1 s in the background; `peak` is the largest."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def run_messages(uri, pid, scenario, duration):
    args = scenario.args
    if "--duration" in args:
        duration = int(args[args.index("--duration") + 1])
    else:
        args = ["--duration", str(duration), *args]
    rss = PeakRss(pid)
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [PERF, "--uri", uri, "--json", "--quiet", *args],
        capture_output=True, text=True, timeout=duration * 2 + 600,
    )
    cpu = cpu_seconds(pid) - cpu_before
    peak = rss.stop()
    if out.returncode not in (0, 1):
        raise SystemExit(f"warren-perf failed against {uri}:\n{out.stdout}\n{out.stderr}")
    report = json.loads(out.stdout)
    consumed = report["consume"]["messages"]
    latency = report["latency"] or {}
    return {
        "publish": report["publish"]["msgs_per_sec"],
        "consume": report["consume"]["msgs_per_sec"],
        "p50_ms": latency.get("p50_us", float("nan")) / 1000,
        "p99_ms": latency.get("p99_us", float("nan")) / 1000,
        "cpu_us_per_msg": cpu * 1e6 / consumed if consumed else float("nan"),
        "peak_rss_mb": peak,
        "verdict": report["verdict"]["status"],
    }


def run_connections(uri, pid, scenario, settle):
    """Opens scenario.n connections, reads the broker's RSS once they are all open
    (largest sample over `settle` seconds), then lets warren-perf close them."""
    n = scenario.n
    time.sleep(0.5)
    base = rss_mb(pid)
    rss = PeakRss(pid)
    cpu_before = cpu_seconds(pid)
    proc = subprocess.Popen(
        [PERF, "--uri", uri, "--json", "--quiet", "--connections", str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # warren-perf bounds every set-up (30 s) and stops trying after 100 failures, so
    # this only guards against a wedged tool.
    watchdog = threading.Timer(n / 50 + 300, proc.kill)
    watchdog.start()
    ready = proc.stdout.readline().split()
    held = base
    deadline = time.monotonic() + settle
    while True:
        held = max(held, rss_mb(pid))
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    cpu = cpu_seconds(pid) - cpu_before
    out, err = proc.communicate(input="")
    watchdog.cancel()
    peak = rss.stop()
    if proc.returncode not in (0, 1) or not ready or ready[0] != "ready":
        raise SystemExit(f"warren-perf --connections {n} failed against {uri}:\n{out}\n{err}")
    report = json.loads(out.strip().splitlines()[-1])
    opened = report["opened"]
    # Let the broker finish tearing the connections down before the next run.
    time.sleep(2)
    verdict = "verified" if proc.returncode == 0 else f"{opened} of {n} opened"
    if report["errors"]:
        print(f"  errors: {json.dumps(report['errors'])}", file=sys.stderr)
    return {
        "opened": opened,
        "open_s": report["open_secs"],
        "opens_per_sec": report["opens_per_sec"],
        "p99_open_ms": (report["open_latency"] or {}).get("p99_ms", float("nan")),
        "rss_base_mb": base,
        "rss_held_mb": held,
        "rss_delta_mb": held - base,
        "kb_per_conn": (held - base) * 1024 / opened if opened else float("nan"),
        "peak_rss_mb": peak,
        "broker_cpu_s": cpu,
        "verdict": verdict,
    }


def run_once(uri, pid, scenario, a):
    if isinstance(scenario, Connections):
        return run_connections(uri, pid, scenario, a.settle)
    return run_messages(uri, pid, scenario, a.duration)


def interleaved(label, scenario, a):
    """Runs a scenario a.runs times per broker, alternating; medians and verdicts."""
    results = {"warren": [], "rabbitmq": []}
    for _ in range(a.runs):
        for broker, uri, pid in (("warren", a.warren_uri, a.warren_pid),
                                 ("rabbitmq", a.rabbit_uri, a.rabbit_pid)):
            r = run_once(uri, pid, scenario, a)
            print(f"{label} {broker}: {json.dumps(r)}", file=sys.stderr)
            results[broker].append(r)
    med = {b: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "verdict"}
           for b, rs in results.items()}
    verdicts = {b: ",".join(sorted({r["verdict"] for r in rs})) for b, rs in results.items()}
    return med, verdicts


MESSAGE_METRICS = (("consume", "consume msg/s"), ("publish", "publish msg/s"),
                   ("cpu_us_per_msg", "broker CPU µs/msg"), ("p99_ms", "latency p99 ms"),
                   ("peak_rss_mb", "broker RSS MB"))
CONNECTION_METRICS = (("opened", "connections opened"), ("open_s", "time to open all, s"),
                      ("opens_per_sec", "connections/s"), ("p99_open_ms", "set-up p99 ms"),
                      ("rss_delta_mb", "broker RSS growth MB"),
                      ("kb_per_conn", "broker RSS KB/connection"),
                      ("rss_held_mb", "broker RSS with all open MB"),
                      ("broker_cpu_s", "broker CPU s (open + hold)"))


def ratio(w, r):
    return f"{w / r:.2f}" if r and not math.isnan(r) and not math.isnan(w) else "n/a"


def main_group(a):
    names = a.scenario or list(SCENARIOS)
    rows = []
    for i, name in enumerate(names):
        if i > 0:
            restart(a)
        med, verdicts = interleaved(name, SCENARIOS[name], a)
        rows.append((name, med, verdicts))
    print("| scenario | metric | Warren | RabbitMQ | Warren / RabbitMQ |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, med, verdicts in rows:
        conns = isinstance(SCENARIOS[name], Connections)
        for metric, label in CONNECTION_METRICS if conns else MESSAGE_METRICS:
            w, r = med["warren"][metric], med["rabbitmq"][metric]
            digits = 0 if metric == "opened" else 1
            print(f"| {name} | {label} | {w:,.{digits}f} | {r:,.{digits}f} | {ratio(w, r)} |")
        print(f"| {name} | verified | {verdicts['warren']} | {verdicts['rabbitmq']} | |")
    if a.svg:
        write_svg(a.svg, [(name, med["warren"]["consume"], med["rabbitmq"]["consume"])
                          for name, med, _ in rows
                          if not isinstance(SCENARIOS[name], Connections)])


def restart(a):
    """Starts both brokers afresh with a.fresh, if given, and takes their new PIDs."""
    if a.fresh:
        pids = subprocess.run(a.fresh, shell=True, check=True, stdout=subprocess.PIPE,
                              text=True).stdout.split()
        a.warren_pid, a.rabbit_pid = int(pids[-2]), int(pids[-1])


def growth_group(a):
    rows = []
    for sweep, size, scenario in growth_scenarios(a.with_10m):
        if a.sweep and sweep not in a.sweep:
            continue
        if rows:
            restart(a)
        med, verdicts = interleaved(f"{sweep} {size:,}", scenario, a)
        rows.append((sweep, size, scenario, med, verdicts))
    print("| work | size | rate | Warren | RabbitMQ | Warren / RabbitMQ "
          "| Warren RSS MB | RabbitMQ RSS MB | verified (Warren; RabbitMQ) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for sweep, size, scenario, med, verdicts in rows:
        w, r = med["warren"], med["rabbitmq"]
        verified = f"{verdicts['warren']}; {verdicts['rabbitmq']}"
        if isinstance(scenario, Connections):
            rss = {b: f"{m['rss_held_mb']:,.1f} ({m['kb_per_conn']:,.1f} KB/conn)"
                   for b, m in med.items()}
            print(f"| {sweep} | {size:,} | opened/s | {w['opens_per_sec']:,.0f} "
                  f"| {r['opens_per_sec']:,.0f} | {ratio(w['opens_per_sec'], r['opens_per_sec'])} "
                  f"| {rss['warren']} | {rss['rabbitmq']} | {verified} |")
            continue
        metrics = [("consume", "consume msg/s")]
        if sweep == "backlog":
            metrics = [("publish", "fill msg/s"), ("consume", "drain msg/s")]
        for metric, label in metrics:
            print(f"| {sweep} | {size:,} | {label} | {w[metric]:,.0f} | {r[metric]:,.0f} "
                  f"| {ratio(w[metric], r[metric])} | {w['peak_rss_mb']:,.1f} "
                  f"| {r['peak_rss_mb']:,.1f} | {verified} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--warren-pid", type=int, required=True)
    p.add_argument("--warren-uri", required=True)
    p.add_argument("--rabbit-pid", type=int, required=True)
    p.add_argument("--rabbit-uri", required=True)
    p.add_argument("--group", choices=("main", "growth"), default="main")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                   help="main group: run only these scenarios")
    p.add_argument("--sweep", action="append", choices=SWEEPS,
                   help="growth group: run only these sweeps")
    p.add_argument("--with-10m", action="store_true",
                   help="growth group: also fill and drain a 10,000,000-message backlog")
    p.add_argument("--settle", type=float, default=1.0,
                   help="connection scenarios: seconds to sample RSS once all are open")
    p.add_argument("--svg", help="main group: also write the consume-rate ratios as an SVG "
                                 "bar chart here")
    p.add_argument("--fresh", help="a command run before every scenario (or growth row) but "
                                   "the first that starts both brokers afresh and prints "
                                   "their PIDs (Warren's, then RabbitMQ's)")
    a = p.parse_args()
    if a.group == "growth":
        growth_group(a)
    else:
        main_group(a)


def write_svg(path, bars):
    """A horizontal bar chart of Warren / RabbitMQ consume-rate ratios, one bar per
    scenario, on a log scale so that 1x and 30x both read."""
    width, left, bar_h, gap = 760, 230, 22, 10
    height = 60 + len(bars) * (bar_h + gap)
    top_ratio = max([w / r for _, w, r in bars if r] + [10])
    scale = (width - left - 80) / math.log10(top_ratio * 1.2)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="13">',
           f'<text x="10" y="22" font-size="15" font-weight="bold">Warren / RabbitMQ, '
           f'consume rate (log scale; 1x = parity)</text>']
    for i, (name, w, r) in enumerate(bars):
        ratio = w / r if r else 0
        y = 40 + i * (bar_h + gap)
        length = max(2, scale * math.log10(max(ratio, 1.0001)))
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{name}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{length:.0f}" height="{bar_h}" fill="#3b7dd8"/>')
        out.append(f'<text x="{left + length + 6:.0f}" y="{y + 16}">{ratio:.1f}x '
                   f'({w:,.0f} vs {r:,.0f} msg/s)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
