#!/usr/bin/env python3
"""Issue 16's management benchmarks against one broker (bench/management.sh runs it for
Warren and then for RabbitMQ). Python's standard library only: a small pipelining AMQP
0-9-1 client declares the queues and the consumer group, http.client times the calls.

  management.py run --broker NAME --amqp-port P --api-port P --metrics-port P --pid PID \
                    --out RESULTS.jsonl [--perf warren-perf] [--phases list,ui,groups,scrape]
  management.py report RESULTS.jsonl      markdown tables of medians

Phases, in the order given (each adds to the queues the one before left):
  list    declare LIST_QUEUES (10,000) non-durable, non-exclusive queues, then time
          GET /api/queues (whole list) and GET /api/queues?page=1&page_size=100&sort=name
  ui      warren-perf -z DURATION (1 producer, 1 consumer) with no poller, with the web
          UI's 5 s poll (api/overview, then the queues page) and with the same every 1 s;
          the three interleaved, ROUNDS (5) times, the order rotated each round; first,
          the broker CPU one poll costs (20 polls back to back, less the idle broker's)
  groups  a queue with x-partitions: 1000, MESSAGES in it, a group of MEMBERS members;
          time GET /api/queues/%2F/NAME/groups (Warren only)
  scrape  grow the queues to SCRAPE_QUEUES (100,000; or as many as DECLARE_LIMIT seconds
          allow), then time GET /metrics and GET /metrics/per-object
"""

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

# --- a minimal AMQP 0-9-1 client: enough to declare, publish and consume, pipelined -----

FRAME_END = b"\xce"


def shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def longstr(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def field_value(v):
    if isinstance(v, bool):
        return b"t" + struct.pack("B", v)
    if isinstance(v, int):
        return b"I" + struct.pack(">i", v) if -(2**31) <= v < 2**31 else b"l" + struct.pack(">q", v)
    if isinstance(v, str):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    raise TypeError(f"no AMQP field type for {v!r}")


def table(d):
    body = b"".join(shortstr(k) + field_value(v) for k, v in (d or {}).items())
    return struct.pack(">I", len(body)) + body


class AmqpError(Exception):
    pass


class Amqp:
    """One connection with channel 1 open; heartbeats off."""

    def __init__(self, host, port, user="guest", password="guest", vhost="/"):
        self.sock = socket.create_connection((host, port), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(10, 10)  # connection.start
        props = table({"product": "warren bench/management.py", "capabilities": {"basic.nack": True}})
        self.method(0, 10, 11, props + shortstr("PLAIN") + longstr(f"\0{user}\0{password}") + shortstr("en_US"))
        args = self.expect(10, 30)  # connection.tune
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
        self.frame_max = frame_max or 131072
        self.method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, 0))
        self.method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00")
        self.expect(10, 41)
        self.method(1, 20, 10, shortstr(""))
        self.expect(20, 11)

    @staticmethod
    def frame(kind, channel, payload):
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END

    @classmethod
    def method_frame(cls, channel, class_id, method_id, args):
        return cls.frame(1, channel, struct.pack(">HH", class_id, method_id) + args)

    def method(self, channel, class_id, method_id, args):
        self.sock.sendall(self.method_frame(channel, class_id, method_id, args))

    def read_frame(self):
        head = self.rfile.read(7)
        if len(head) < 7:
            raise AmqpError("the broker closed the connection")
        kind, channel, size = struct.unpack(">BHI", head)
        payload = self.rfile.read(size)
        if self.rfile.read(1) != FRAME_END:
            raise AmqpError("bad frame end")
        return kind, channel, payload

    def expect(self, class_id, method_id):
        """Reads frames until the method (class_id, method_id); returns its arguments.
        Deliveries, content and heartbeats on the way are skipped."""
        while True:
            kind, _channel, payload = self.read_frame()
            if kind != 1:
                continue
            c, m = struct.unpack(">HH", payload[:4])
            if (c, m) == (class_id, method_id):
                return payload[4:]
            if (c, m) in ((10, 50), (20, 40)):  # connection.close, channel.close
                code = struct.unpack(">H", payload[4:6])[0]
                text = payload[7 : 7 + payload[6]].decode(errors="replace")
                raise AmqpError(f"{code} {text}")

    def declare_many(self, names, arguments=None, batch=500):
        """queue.declare of each name (non-durable, non-exclusive, not auto-delete),
        `batch` at a time in flight."""
        args = table(arguments)
        for i in range(0, len(names), batch):
            chunk = names[i : i + batch]
            self.sock.sendall(b"".join(
                self.method_frame(1, 50, 10, b"\x00\x00" + shortstr(n) + b"\x00" + args) for n in chunk))
            for _ in chunk:
                self.expect(50, 11)

    def passive_count(self, name):
        """(messages, consumers) by a passive queue.declare."""
        self.method(1, 50, 10, b"\x00\x00" + shortstr(name) + b"\x01" + table({}))
        ok = self.expect(50, 11)
        n = ok[0]
        return struct.unpack(">II", ok[1 + n : 9 + n])

    def delete(self, name):
        self.method(1, 50, 40, b"\x00\x00" + shortstr(name) + b"\x00")
        self.expect(50, 41)

    def publish_many(self, routing_key, count, body, batch=1000):
        """`count` transient messages to the default exchange."""
        one = (self.method_frame(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr(routing_key) + b"\x00")
               + self.frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
               + self.frame(3, 1, body))
        for i in range(0, count, batch):
            self.sock.sendall(one * min(batch, count - i))

    def consume(self, queue, prefetch, arguments):
        self.method(1, 60, 10, struct.pack(">IH", 0, prefetch) + b"\x00")
        self.expect(60, 11)
        self.method(1, 60, 20, b"\x00\x00" + shortstr(queue) + shortstr("") + b"\x00" + table(arguments))
        self.expect(60, 21)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- HTTP ---------------------------------------------------------------------------------

class Http:
    """Keep-alive GETs (as a browser makes them), Basic auth, timed to the last body byte."""

    def __init__(self, port, auth=True, timeout=600):
        self.port, self.timeout = port, timeout
        self.headers = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()} if auth else {}
        self.conn = None

    def get(self, path):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                start = time.perf_counter()
                self.conn.request("GET", path, headers=self.headers)
                reply = self.conn.getresponse()
                body = reply.read()
                took = time.perf_counter() - start
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if reply.status != 200:
                raise RuntimeError(f"GET {path}: {reply.status} {body[:300]!r}")
            if reply.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return took, body


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# --- the phases ---------------------------------------------------------------------------

QUEUE_PREFIX = "bench-mgmt-q-"


def queue_name(i):
    return f"{QUEUE_PREFIX}{i:06d}"


class Bench:
    def __init__(self, a):
        self.a = a
        self.api = Http(a.api_port)
        self.metrics = Http(a.metrics_port, auth=False)
        self.declared = 0
        self.out = open(a.out, "a")

    def record(self, test, **fields):
        row = {"broker": self.a.broker, "test": test, "load": loadavg(), **fields}
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()

    def grow(self, target, limit=None):
        """Declares queues up to `target` in all (stopping after `limit` seconds)."""
        conn = Amqp("127.0.0.1", self.a.amqp_port)
        start = time.monotonic()
        before = self.declared
        step = 5000
        while self.declared < target:
            n = min(step, target - self.declared)
            conn.declare_many([queue_name(i) for i in range(self.declared, self.declared + n)])
            self.declared += n
            took = time.monotonic() - start
            if self.declared % 20000 == 0 or self.declared == target:
                log(f"{self.a.broker}: {self.declared:,} queues declared ({took:.0f} s)")
            if limit is not None and took > limit and self.declared < target:
                log(f"{self.a.broker}: stopped declaring at {self.declared:,} queues after {took:.0f} s")
                break
        took = time.monotonic() - start
        conn.close()
        self.record("declare", queues=self.declared, added=self.declared - before, seconds=took,
                    rss_mb=rss_mb(self.a.pid))

    def phase_list(self):
        self.grow(self.a.list_queues)
        whole, paged = "/api/queues", "/api/queues?page=1&page_size=100&sort=name"
        _, body = self.api.get(whole)  # warm-up, and check
        listed = len(json.loads(body))
        _, pbody = self.api.get(paged)
        page = json.loads(pbody)
        assert page["item_count"] == 100 and page["items"][0]["name"] <= page["items"][-1]["name"], pbody[:300]
        times = {whole: [], paged: []}
        sizes = {whole: len(body), paged: len(pbody)}
        for _ in range(self.a.list_runs):
            times[whole].append(self.api.get(whole)[0])
            for _ in range(3):
                times[paged].append(self.api.get(paged)[0])
        for path, kind in ((whole, "list_whole"), (paged, "list_paged")):
            self.record(kind, path=path, queues=self.declared, listed=listed if path == whole else page["total_count"],
                        bytes=sizes[path], seconds=times[path])
            log(f"{self.a.broker}: GET {path} median {statistics.median(times[path]) * 1e3:.1f} ms "
                f"({sizes[path]:,} bytes, {len(times[path])} calls)")

    # The calls the web UI makes on the queues page at each poll (app.js tick():
    # sampleOverview(), then the page's refresh(): pagedList's withQuery(page, page_size,
    # name, use_regex, sort, sort_reverse), empty ones left out). The page size is the
    # UI's default (20); the list sorted by Incoming, largest first, as one click on that
    # column's header leaves it (figures sort largest first): the dearest sort, by a rate.
    UI_CALLS = ("/api/overview",
                "/api/queues?page=1&page_size=20&sort=message_stats.publish_details.rate&sort_reverse=true")

    def poller(self, interval, stop, took):
        api = Http(self.a.api_port)
        tick = time.monotonic()
        while not stop.is_set():
            for path in self.UI_CALLS:
                took.append(api.get(path)[0])
            tick += interval
            # setInterval: a tick that finds the last one still running is skipped.
            while tick < time.monotonic():
                tick += interval
            stop.wait(tick - time.monotonic())

    def poll_cost(self, polls=20):
        """The broker's CPU per UI poll, less what it spends idle over the same time."""
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        api = Http(self.a.api_port)
        for path in self.UI_CALLS:
            api.get(path)
        c0, t0 = cpu_ticks(self.a.pid), time.monotonic()
        time.sleep(5)
        idle = (cpu_ticks(self.a.pid) - c0) / (time.monotonic() - t0)
        c0, t0 = cpu_ticks(self.a.pid), time.monotonic()
        for _ in range(polls):
            for path in self.UI_CALLS:
                api.get(path)
        wall = time.monotonic() - t0
        used = cpu_ticks(self.a.pid) - c0 - idle * wall
        per_poll = max(used, 0) * tick / polls
        self.record("poll_cost", queues=self.declared, polls=polls, cpu_per_poll=per_poll,
                    wall_per_poll=wall / polls, idle_cpu_share=idle * tick)
        log(f"{self.a.broker}: one UI poll costs {per_poll * 1e3:.0f} ms of broker CPU "
            f"({wall / polls * 1e3:.0f} ms wall; idle the broker uses {idle * tick * 100:.1f} % of a core)")

    def phase_ui(self):
        if not self.a.perf:
            raise SystemExit("the ui phase needs --perf")
        self.poll_cost()
        conditions = [0, 5, 1]
        uri = f"amqp://guest:guest@127.0.0.1:{self.a.amqp_port}/%2f"
        for r in range(self.a.rounds):
            order = conditions[r % 3:] + conditions[:r % 3]
            for interval in order:
                stop, took = threading.Event(), []
                thread = None
                if interval:
                    thread = threading.Thread(target=self.poller, args=(interval, stop, took), daemon=True)
                load = loadavg()
                before = cpu_ticks(self.a.pid)
                if thread:
                    thread.start()
                out = subprocess.run([self.a.perf, "--uri", uri, "-z", str(self.a.duration), "--json", "--quiet",
                                      "-u", f"bench-mgmt-perf-{r}-{interval}"],
                                     capture_output=True, text=True)
                stop.set()
                if thread:
                    thread.join()
                cpu = cpu_ticks(self.a.pid) - before
                if out.returncode > 1 or not out.stdout.strip():
                    raise SystemExit(f"warren-perf failed: {out.stderr[-2000:]}")
                rep = json.loads(out.stdout.strip().splitlines()[-1])
                self.record("ui", round=r, poll_every=interval, publish=rep["publish"]["msgs_per_sec"],
                            published=rep["publish"]["messages"],
                            consume=rep["consume"]["msgs_per_sec"], verdict=rep["verdict"],
                            broker_cpu_ticks=cpu, poll_seconds=took, load_before=load)
                log(f"{self.a.broker}: round {r + 1}, poll every {interval or '-'} s: publish "
                    f"{rep['publish']['msgs_per_sec']:,.0f} msg/s, {len(took)} API calls"
                    + (f", median {statistics.median(took) * 1e3:.1f} ms" if took else ""))
                time.sleep(2)

    def phase_groups(self):
        a = self.a
        name = "bench-mgmt-groups"
        conn = Amqp("127.0.0.1", a.amqp_port)
        conn.declare_many([name], {"x-partitions": a.partitions})
        conn.publish_many(name, a.messages, b"0123456789abcdef")
        ready, _ = conn.passive_count(name)
        members = []
        for _ in range(a.members):
            m = Amqp("127.0.0.1", a.amqp_port)
            m.consume(name, a.prefetch, {"x-consumer-group": "bench"})
            members.append(m)
        path = f"/api/queues/%2F/{name}/groups"
        deadline = time.monotonic() + 60
        while True:
            _, body = self.api.get(path)
            g = json.loads(body)["groups"]
            if g and len(g[0]["members"]) == a.members and \
                    sum(len(m["assigned"]) for m in g[0]["members"]) == a.partitions:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the group did not settle: {body[:500]!r}")
            time.sleep(0.2)
        lag = sum(p["lag"] for p in g[0]["partition_states"])
        for _ in range(5):
            self.api.get(path)
        times = []
        for _ in range(a.group_calls):
            took, body = self.api.get(path)
            times.append(took)
        self.record("groups", partitions=a.partitions, members=a.members, messages=ready, lag=lag,
                    bytes=len(body), seconds=times)
        log(f"{a.broker}: GET {path} median {statistics.median(times) * 1e3:.1f} ms ({len(body):,} bytes, "
            f"{a.partitions} partitions, {a.members} members, lag {lag:,})")
        for m in members:
            m.close()
        conn.delete(name)
        conn.close()

    def phase_scrape(self):
        self.grow(self.a.scrape_queues, limit=self.a.declare_limit)
        log(f"{self.a.broker}: letting the stats settle for {self.a.settle} s")
        time.sleep(self.a.settle)
        paths = ["/metrics", "/metrics/per-object"]
        seen = {}
        for path in paths:  # warm-up, and how many queues the scrape shows
            _, body = self.metrics.get(path)
            seen[path] = sum(1 for line in body.split(b"\n") if line.startswith(b"rabbitmq_queue_messages_ready{"))
        times = {p: [] for p in paths}
        sizes = {}
        for _ in range(self.a.scrape_runs):
            for path in paths:
                took, body = self.metrics.get(path)
                times[path].append(took)
                sizes[path] = len(body)
        for path in paths:
            self.record("scrape", path=path, queues=self.declared, queues_in_scrape=seen[path],
                        bytes=sizes[path], seconds=times[path], rss_mb=rss_mb(self.a.pid))
            log(f"{self.a.broker}: GET {path} median {statistics.median(times[path]) * 1e3:.0f} ms "
                f"({sizes[path]:,} bytes, {seen[path]:,} queues in it)")
        # For information: the paged list, and the UI's queues-page call, at this count.
        for path in ("/api/queues?page=1&page_size=100&sort=name", self.UI_CALLS[1]):
            took = []
            for _ in range(3):
                t, body = self.api.get(path)
                took.append(t)
            self.record("list_paged", path=path, queues=self.declared, listed=json.loads(body)["total_count"],
                        bytes=len(body), seconds=took, rss_mb=rss_mb(self.a.pid))
            log(f"{self.a.broker}: GET {path} median {statistics.median(took) * 1e3:.0f} ms at {self.declared:,} queues")


# --- the report ---------------------------------------------------------------------------

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def ms(s):
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def report(path):
    rows = [json.loads(line) for line in open(path)]
    med = statistics.median
    brokers = list(dict.fromkeys(r["broker"] for r in rows))

    def of(test, **match):
        return [r for r in rows if r["test"] == test and all(r.get(k) == v for k, v in match.items())]

    out = []
    lists = of("list_whole") + of("list_paged")
    if lists:
        out += ["### 1. Listing queues", "",
                "| broker | queues | call | median | min – max | calls | reply size | load (1 min) |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for b in brokers:
            for r in [r for r in lists if r["broker"] == b]:
                s = r["seconds"]
                out.append(f"| {b} | {r['queues']:,} | `GET {r['path']}` | {ms(med(s))} | {ms(min(s))} – {ms(max(s))} "
                           f"| {len(s)} | {r['bytes'] / 1e6:,.2f} MB | {r['load'].split()[0]} |")
        out.append("")
    scrapes = of("scrape")
    if scrapes:
        out += ["### 2. Prometheus scrape", "",
                "| broker | queues declared | call | median | min – max | scrapes | queues in the scrape | size | load (1 min) |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for b in brokers:
            for r in [r for r in scrapes if r["broker"] == b]:
                s = r["seconds"]
                seen = f"{r['queues_in_scrape']:,}" if r["queues_in_scrape"] else "–"
                out.append(f"| {b} | {r['queues']:,} | `GET {r['path']}` | {ms(med(s))} | {ms(min(s))} – {ms(max(s))} "
                           f"| {len(s)} | {seen} | {r['bytes'] / 1e6:,.1f} MB | {r['load'].split()[0]} |")
        out.append("")
    uis = of("ui")
    if uis:
        out += ["### 3. Publishing while the web UI polls", "",
                "| broker | poller | publish msg/s (median) | vs no poller | runs (publish msg/s) "
                "| API calls, median | broker CPU per message | load (1 min) at the starts |",
                "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        for b in brokers:
            base = None
            for every in (0, 5, 1):
                runs = [r for r in uis if r["broker"] == b and r["poll_every"] == every]
                if not runs:
                    continue
                rate = med(r["publish"] for r in runs)
                base = rate if every == 0 else base
                vs = "" if every == 0 or not base else f"{(rate / base - 1) * 100:+.1f} %"
                calls = [t for r in runs for t in r["poll_seconds"]]
                cpu = med(r["broker_cpu_ticks"] * tick / max(r["published"], 1) for r in runs)
                each = ", ".join(f"{r['publish']:,.0f}" for r in runs)
                loads = ", ".join(r["load_before"].split()[0] for r in runs)
                out.append(f"| {b} | {'none' if every == 0 else f'every {every} s'} | {rate:,.0f} | {vs} "
                           f"| {each} | {ms(med(calls)) if calls else ''} | {cpu * 1e6:.2f} µs | {loads} |")
        for r in of("poll_cost"):
            out.append(f"- {r['broker']}, {r['queues']:,} queues: one poll (`{'` + `'.join(Bench.UI_CALLS)}`) costs "
                       f"{r['cpu_per_poll'] * 1e3:.0f} ms of broker CPU ({r['wall_per_poll'] * 1e3:.0f} ms wall, "
                       f"{r['polls']} back to back, less the idle broker's {r['idle_cpu_share'] * 100:.1f} % of a core): "
                       f"{r['cpu_per_poll'] / 5 * 100:.2f} % of one core at one poll per 5 s, "
                       + (f"{r['cpu_per_poll'] * 100:.1f} % at one per second." if r["cpu_per_poll"] < 1 else
                          "more than a core at one per second (the polls then run back to back)."))
        out.append("")
    groups = of("groups")
    if groups:
        out += ["### 4. A consumer group's page", "",
                "| broker | partitions | members | messages | median | p99 | max | calls | reply size | load (1 min) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in groups:
            s = r["seconds"]
            out.append(f"| {r['broker']} | {r['partitions']:,} | {r['members']} | {r['messages']:,} | {ms(med(s))} "
                       f"| {ms(pct(s, 0.99))} | {ms(max(s))} | {len(s)} | {r['bytes'] / 1e3:,.0f} kB "
                       f"| {r['load'].split()[0]} |")
        out.append("")
    declares = of("declare")
    if declares:
        out.append("Declaring (pipelined, 500 in flight, one channel), and the broker's resident memory "
                   "after: " + "; ".join(
                       f"{r['broker']} {r['added']:,} queues in {ms(r['seconds'])} (to {r['queues']:,}: "
                       f"{r['rss_mb']:,.0f} MB)" for r in declares) + ".")
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--broker", required=True)
    r.add_argument("--amqp-port", type=int, required=True)
    r.add_argument("--api-port", type=int, required=True)
    r.add_argument("--metrics-port", type=int, required=True)
    r.add_argument("--pid", type=int, required=True, help="the broker's, for its CPU time")
    r.add_argument("--out", required=True)
    r.add_argument("--perf", help="warren-perf")
    r.add_argument("--phases", default="list,ui,groups,scrape")
    r.add_argument("--list-queues", type=int, default=10_000)
    r.add_argument("--list-runs", type=int, default=10, help="whole lists (and 3 times as many pages)")
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--duration", type=int, default=30)
    r.add_argument("--partitions", type=int, default=1000)
    r.add_argument("--members", type=int, default=4)
    r.add_argument("--prefetch", type=int, default=10)
    r.add_argument("--messages", type=int, default=100_000)
    r.add_argument("--group-calls", type=int, default=50)
    r.add_argument("--scrape-queues", type=int, default=100_000)
    r.add_argument("--declare-limit", type=float, default=300)
    r.add_argument("--settle", type=float, default=12)
    r.add_argument("--scrape-runs", type=int, default=5)
    sub.add_parser("report").add_argument("results")
    a = p.parse_args()
    if a.cmd == "report":
        report(a.results)
        return
    bench = Bench(a)
    for phase in a.phases.split(","):
        getattr(bench, f"phase_{phase}")()


if __name__ == "__main__":
    main()
