#!/usr/bin/env python3
"""Resume after kill -9 (issue 14's goal): a tracked stream reader (pika, prefetch 100,
`x-stream-automatic-offset-tracking` or a consumer group on a partitioned stream) is
SIGKILLed and restarted again and again while a publisher keeps publishing, and now and
then the broker itself is SIGKILLed and restarted on the same data directory. At the end,
a fresh reader of every offset checks what was confirmed against what the tracked readers
got: skipped (confirmed, never received by any incarnation) must be 0, and each resume
may bring back at most what the killed reader had not acked (a prefetch's worth).

    bench/stream_resume.py --warren target/release/warren [--secs 60] [--partitions 4]

Prints one JSON line per kill and a summary (JSON) at the end; exits 1 if anything was
skipped.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pika

READER = r"""
import sys, pika
uri, stream, tag, group, prefetch, out, life = sys.argv[1:8]
conn = pika.BlockingConnection(pika.URLParameters(uri))
ch = conn.channel()
ch.basic_qos(prefetch_count=int(prefetch))
args = {"x-stream-offset": "first"}
if group:
    args["x-consumer-group"] = group
else:
    args["x-stream-automatic-offset-tracking"] = True
log = open(out, "a", buffering=1)
def on_message(channel, method, props, body):
    h = props.headers or {}
    log.write("%s %d %d\n" % (life, h.get("x-partition", 0), h["x-stream-offset"]))
    channel.basic_ack(method.delivery_tag)
ch.basic_consume(stream, on_message, consumer_tag=tag, arguments=args)
ch.start_consuming()
"""


def wait_port(port, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"broker not listening on {port}")


class Broker:
    def __init__(self, binary, port, data):
        self.binary, self.port, self.data, self.proc = binary, port, data, None

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data, "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        # Listening may come before recovery ends: wait until AMQP answers.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                pika.BlockingConnection(self.params()).close()
                return
            except pika.exceptions.AMQPError:
                time.sleep(0.05)
        raise SystemExit("broker never answered AMQP")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def params(self):
        return pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{self.port}/%2f")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warren", required=True)
    ap.add_argument("--port", type=int, default=5697)
    ap.add_argument("--secs", type=float, default=60)
    ap.add_argument("--partitions", type=int, default=0, help="0: a plain stream, tracked by tag")
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--broker-kill-every", type=int, default=4, help="every Nth kill is the broker's")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    scratch = tempfile.mkdtemp(prefix="warren-resume.")
    broker = Broker(opts.warren, opts.port, os.path.join(scratch, "data"))
    broker.start()
    uri = f"amqp://guest:guest@127.0.0.1:{opts.port}/%2f"
    stream = "resume"
    args = {"x-queue-type": "stream"}
    if opts.partitions:
        args["x-partitions"] = opts.partitions
    conn = pika.BlockingConnection(broker.params())
    ch = conn.channel()
    ch.queue_declare(stream, durable=True, arguments=args)
    conn.close()

    received = os.path.join(scratch, "received.log")
    group = "g" if opts.partitions else ""
    def reader_cmd(life):
        return [sys.executable, "-c", READER, uri, stream, "tracker", group,
                str(opts.prefetch), received, str(life)]
    confirmed = 0
    kills = []
    end = time.time() + opts.secs
    reader = subprocess.Popen(reader_cmd(len(kills)), stderr=subprocess.DEVNULL)
    pub = None
    n = 0
    while time.time() < end:
        try:
            if pub is None:
                pub = pika.BlockingConnection(broker.params())
                pch = pub.channel()
                pch.confirm_delivery()
            for _ in range(200):
                pch.basic_publish("", stream, b"x" * 16,
                                  pika.BasicProperties(headers={"k": str(n % 97)}))
                n += 1
                confirmed += 1
        except pika.exceptions.AMQPError:
            pub = None
            continue
        if rng.random() < 0.05:
            kills.append(len(kills))
            if len(kills) % opts.broker_kill_every == 0:
                broker.kill()
                reader.kill()
                reader.wait()
                pub = None
                broker.start()
                what = "broker"
            else:
                reader.send_signal(signal.SIGKILL)
                reader.wait()
                what = "reader"
            print(json.dumps({"kill": what, "confirmed": confirmed}), flush=True)
            reader = subprocess.Popen(reader_cmd(len(kills)), stderr=subprocess.DEVNULL)
    # Let the last reader catch up, then stop it.
    def read_log():
        with open(received) as f:
            return [tuple(map(int, line.split())) for line in f if line.count(" ") == 2]
    deadline = time.time() + 60
    while time.time() < deadline:
        if len({(p, o) for _, p, o in read_log()}) >= confirmed:
            break
        time.sleep(0.2)
    reader.kill()
    reader.wait()
    entries = read_log()
    got = set()
    again_by_life = {}
    for life, p, o in entries:
        if (p, o) in got:
            again_by_life[life] = again_by_life.get(life, 0) + 1
        got.add((p, o))
    # Offsets run from 0 in each partition: a hole below the highest one received is a
    # message the readers skipped.
    parts = max(1, opts.partitions)
    per = {p: 0 for p in range(parts)}
    for p, o in got:
        per[p] = max(per[p], o + 1)
    skipped = sum(per.values()) - len(got)
    again = sorted(again_by_life.values())
    summary = {
        "seed": opts.seed, "secs": opts.secs, "partitions": opts.partitions,
        "prefetch": opts.prefetch, "confirmed": confirmed, "distinct_received": len(got),
        "missing_at_end": max(0, confirmed - len(got)), "skipped_inside": skipped,
        "deliveries": len(entries), "duplicates": len(entries) - len(got),
        "kills": len(kills),
        "duplicates_per_resume_median": again[len(again) // 2] if again else 0,
        "duplicates_per_resume_max": again[-1] if again else 0,
    }
    print(json.dumps(summary), flush=True)
    broker.kill()
    sys.exit(1 if skipped or summary["missing_at_end"] else 0)


if __name__ == "__main__":
    main()
