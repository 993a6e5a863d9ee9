#!/usr/bin/env python3
"""Scenario 9 of the comparison: start-up time, from exec to accepting AMQP
connections, for an empty broker and for one holding 10,000 durable queues with
1,000,000 persistent 128-byte messages (100 per queue), Warren beside RabbitMQ.

Run through bench/startup.sh, which builds the binaries and sets the open-file limits.
Each start is timed by polling every millisecond until the broker answers the AMQP
protocol header with connection.start; the table gives the
median of --runs starts (the loaded state is filled once per broker, then restarted).
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARREN = os.path.join(ROOT, "target", "release", "warren")
PERF = os.environ.get("WARREN_PERF", os.path.join(ROOT, "target", "release", "warren-perf"))
RABBIT = os.path.join(ROOT, "..", "shared", "tools", "rabbitmq.sh")


def accepting(port):
    """Whether the broker answers AMQP: a listening socket alone is not enough (Warren
    binds before it recovers, and the kernel queues connections meanwhile)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05) as s:
            s.settimeout(0.05)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return len(s.recv(7)) > 0
    except OSError:
        return False


def time_until_accepting(start, port, bound):
    """Runs start() (which spawns the broker) and returns (seconds until the port
    accepts, whatever start() returned)."""
    t0 = time.monotonic()
    handle = start()
    while not accepting(port):
        if time.monotonic() - t0 > bound:
            raise SystemExit(f"nothing accepted on {port} within {bound} s")
        time.sleep(0.001)
    return time.monotonic() - t0, handle


def warren_start(data_dir, port):
    return lambda: subprocess.Popen(
        [WARREN, "--bind", "127.0.0.1", "--port", str(port), "--data-dir", data_dir,
         "--log-level", "warn"])


def warren_stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def fill(uri, queues, messages):
    """Declares durable queues and publishes persistent messages with confirms, leaving
    them there (no consumers, queues kept)."""
    producers = 4
    cmd = [PERF, "--uri", uri, "--producers", str(producers), "--consumers", "0",
           "--queues", str(queues), "--count", str(messages // producers), "--size", "128",
           "--persistent", "--confirm", "256", "--keep", "--queue", "startup",
           "--duration", "3600", "--quiet"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    print(f"  filled {queues} queues with {messages} messages in "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr)


def measure_warren(runs, port, queues, messages):
    empty = []
    for _ in range(runs):
        data = tempfile.mkdtemp(prefix="warren-startup-")
        took, proc = time_until_accepting(warren_start(data, port), port, 30)
        empty.append(took)
        warren_stop(proc)
        shutil.rmtree(data, ignore_errors=True)
    data = tempfile.mkdtemp(prefix="warren-startup-loaded-")
    proc = warren_start(data, port)()
    while not accepting(port):
        time.sleep(0.01)
    fill(f"amqp://guest:guest@127.0.0.1:{port}/%2f", queues, messages)
    warren_stop(proc)
    loaded = []
    for _ in range(runs):
        took, proc = time_until_accepting(warren_start(data, port), port, 300)
        loaded.append(took)
        warren_stop(proc)
    shutil.rmtree(data, ignore_errors=True)
    return empty, loaded


def rabbit(cmd, port):
    return subprocess.run([RABBIT, cmd, str(port)], check=True, capture_output=True)


def time_rabbit_starts(runs, port, cmd, limit):
    """Start-up times of `runs` starts with rabbitmq.sh `cmd` (start: fresh; resume: on
    the data it has), each stopped again."""
    times = []
    for _ in range(runs):
        took, proc = time_until_accepting(
            lambda: subprocess.Popen([RABBIT, cmd, str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL), port, limit)
        proc.wait(timeout=limit)
        times.append(took)
        rabbit("stop", port)
    return times


def measure_rabbit(runs, port, queues, messages):
    empty = time_rabbit_starts(runs, port, "start", 300)
    rabbit("start", port)
    fill(f"amqp://guest:guest@127.0.0.1:{port}/%2f", queues, messages)
    rabbit("stop", port)
    loaded = time_rabbit_starts(runs, port, "resume", 900)
    return empty, loaded


def fmt(seconds):
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--queues", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--warren-port", type=int, default=5692)
    p.add_argument("--rabbit-port", type=int, default=5674)
    p.add_argument("--skip-rabbitmq", action="store_true")
    a = p.parse_args()
    print("Warren…", file=sys.stderr)
    w_empty, w_loaded = measure_warren(a.runs, a.warren_port, a.queues, a.messages)
    r_empty = r_loaded = None
    if not a.skip_rabbitmq:
        print("RabbitMQ…", file=sys.stderr)
        r_empty, r_loaded = measure_rabbit(a.runs, a.rabbit_port, a.queues, a.messages)
    med = statistics.median
    loaded_label = f"{a.queues:,} durable queues, {a.messages:,} persistent messages"
    print("| start-up (exec to accepting AMQP), median of "
          f"{a.runs} | Warren | RabbitMQ | Warren / RabbitMQ |")
    print("| --- | ---: | ---: | ---: |")
    for label, w, r in (("empty", w_empty, r_empty), (loaded_label, w_loaded, r_loaded)):
        if r:
            print(f"| {label} | {fmt(med(w))} | {fmt(med(r))} | 1/{med(r) / med(w):,.0f} |")
        else:
            print(f"| {label} | {fmt(med(w))} | | |")


if __name__ == "__main__":
    main()
