#!/usr/bin/env python3
"""Runs warren-perf scenarios against Warren and RabbitMQ, interleaved (A B A B A B),
and prints a markdown table of medians with the ratio Warren / RabbitMQ.

Besides the rates warren-perf reports, it reads each broker's CPU time (user + system,
from /proc/<pid>/stat) before and after every run, giving CPU microseconds per message,
and samples the broker's resident memory during the run (peak VmRSS).

usage: bench/compare.py --warren-pid PID --warren-uri URI --rabbit-pid PID --rabbit-uri URI
                        [--runs 3] [--duration 5] [--scenario NAME ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "target", "release", "warren-perf")
TICKS = os.sysconf("SC_CLK_TCK")

SCENARIOS = {
    "1p1c-16B-ack": ["--size", "16"],
    "1p1c-16B-noack": ["--size", "16", "--no-ack"],
    "1p1c-1KiB-ack": ["--size", "1024"],
    "4p4c-4q-16B-ack": ["--size", "16", "--producers", "4", "--consumers", "4", "--queues", "4"],
    "confirm-persistent-1KiB-1p": ["--size", "1024", "--persistent", "--confirm", "256"],
    "confirm-persistent-1KiB-4p": ["--size", "1024", "--persistent", "--confirm", "256", "--producers", "4"],
    "fanout-50q-16B": ["--size", "16", "--exchange-type", "fanout", "--queues", "50",
                       "--consumers", "50"],
    "latency-1000rps-1KiB": ["--size", "1024", "--rate", "1000"],
    # Publish 1,000,000 persistent 128-byte messages with confirms and no consumer, then
    # drain them: "publish" is the fill rate, "consume" the drain rate.
    "backlog-1M-128B": ["--backlog", "--count", "1000000", "--size", "128", "--persistent",
                        "--confirm", "256", "--duration", "600"],
}


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


def run_once(uri, pid, args, duration):
    peak = [rss_mb(pid)]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = cpu_seconds(pid)
    if "--duration" in args:
        duration = int(args[args.index("--duration") + 1])
    else:
        args = ["--duration", str(duration), *args]
    out = subprocess.run(
        [PERF, "--uri", uri, "--json", *args],
        capture_output=True, text=True, timeout=duration * 2 + 120,
    )
    cpu = cpu_seconds(pid) - cpu_before
    stop.set()
    sampler.join()
    if out.returncode != 0:
        raise SystemExit(f"warren-perf failed against {uri}:\n{out.stdout}\n{out.stderr}")
    report = json.loads(out.stdout)
    consumed = report["consume"]["messages"]
    return {
        "publish": report["publish"]["msgs_per_sec"],
        "consume": report["consume"]["msgs_per_sec"],
        "p50_ms": report["latency"]["p50_us"] / 1000,
        "p99_ms": report["latency"]["p99_us"] / 1000,
        "cpu_us_per_msg": cpu * 1e6 / consumed if consumed else float("nan"),
        "peak_rss_mb": peak[0],
        "verdict": report["verdict"]["status"],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--warren-pid", type=int, required=True)
    p.add_argument("--warren-uri", required=True)
    p.add_argument("--rabbit-pid", type=int, required=True)
    p.add_argument("--rabbit-uri", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--scenario", action="append")
    p.add_argument("--svg", help="also write the consume-rate ratios as an SVG bar chart here")
    a = p.parse_args()
    names = a.scenario or list(SCENARIOS)
    rows = []
    for name in names:
        results = {"warren": [], "rabbitmq": []}
        for _ in range(a.runs):
            for broker, uri, pid in (("warren", a.warren_uri, a.warren_pid),
                                     ("rabbitmq", a.rabbit_uri, a.rabbit_pid)):
                r = run_once(uri, pid, SCENARIOS[name], a.duration)
                print(f"{name} {broker}: {json.dumps(r)}", file=sys.stderr)
                results[broker].append(r)
        med = {b: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "verdict"}
               for b, rs in results.items()}
        verdicts = {b: ",".join(sorted({r["verdict"] for r in rs})) for b, rs in results.items()}
        rows.append((name, med, verdicts))
    print(f"| scenario | metric | Warren | RabbitMQ | Warren / RabbitMQ |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, med, verdicts in rows:
        for metric, label in (("consume", "consume msg/s"), ("publish", "publish msg/s"),
                              ("cpu_us_per_msg", "broker CPU µs/msg"),
                              ("p99_ms", "latency p99 ms"), ("peak_rss_mb", "broker RSS MB")):
            w, r = med["warren"][metric], med["rabbitmq"][metric]
            ratio = w / r if r else float("nan")
            print(f"| {name} | {label} | {w:,.1f} | {r:,.1f} | {ratio:.2f} |")
        print(f"| {name} | verified | {verdicts['warren']} | {verdicts['rabbitmq']} | |")
    if a.svg:
        write_svg(a.svg, [(name, med["warren"]["consume"], med["rabbitmq"]["consume"])
                          for name, med, _ in rows])


def write_svg(path, bars):
    """A horizontal bar chart of Warren / RabbitMQ consume-rate ratios, one bar per
    scenario, on a log scale so that 1x and 30x both read."""
    import math
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
