#!/usr/bin/env python3
"""Measures a broker's resident memory per queued small message when each message
arrives in a read of its own (a publisher that waits for each confirm), the case where a
message kept as a slice of its read buffer pins the whole buffer.

It declares a fresh queue with no consumer, publishes --count messages of --size bytes
one at a time in confirm mode, and reads the broker's VmRSS (/proc/PID/status) before
and after; it repeats --runs times (a fresh queue each time, deleted afterwards) and
prints each run and the median bytes per message. Works against Warren or RabbitMQ (give
the Erlang VM's PID). Standard library only: speaks AMQP 0-9-1 over a plain socket.
Give each measurement a fresh broker (--runs 1, repeated): a later run on the same broker
reuses the memory an earlier run's deleted queue gave back to the allocator, and reads low.

usage: bench/queued_memory.py --pid PID [--host 127.0.0.1] [--port 5672]
                              [--count 50000] [--size 16] [--runs 3]
"""
import argparse
import socket
import statistics
import struct
import time


def sstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel, class_id, method_id, args=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


class Client:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(10, 10)  # start
        self.sock.sendall(method(0, 10, 11, struct.pack(">I", 0) + sstr("PLAIN")
                                 + struct.pack(">I", 12) + b"\x00guest\x00guest" + sstr("en_US")))
        tune = self.expect(10, 30)
        channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
        self.sock.sendall(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        self.sock.sendall(method(0, 10, 40, sstr("/") + sstr("") + b"\x00"))
        self.expect(10, 41)
        self.sock.sendall(method(1, 20, 10, sstr("")))
        self.expect(20, 11)

    def frame(self):
        while True:
            if len(self.buf) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= size + 8:
                    payload = self.buf[7:7 + size]
                    self.buf = self.buf[size + 8:]
                    return kind, channel, payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.buf += data

    def expect(self, class_id, method_id):
        while True:
            kind, _, payload = self.frame()
            if kind == 1:
                got = struct.unpack(">HH", payload[:4])
                if got == (class_id, method_id):
                    return payload
                raise RuntimeError(f"expected {(class_id, method_id)}, got {got}: {payload!r}")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run(a, queue):
    c = Client(a.host, a.port)
    c.sock.sendall(method(1, 50, 10, b"\x00\x00" + sstr(queue) + b"\x00" + struct.pack(">I", 0)))
    c.expect(50, 11)
    c.sock.sendall(method(1, 85, 10, b"\x00"))
    c.expect(85, 11)
    body = b"x" * a.size
    publish = (method(1, 60, 40, b"\x00\x00" + sstr("") + sstr(queue) + b"\x00")
               + frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
               + frame(3, 1, body))
    time.sleep(0.5)
    before = rss_bytes(a.pid)
    started = time.time()
    for _ in range(a.count):
        c.sock.sendall(publish)
        c.expect(60, 80)  # the confirm: the broker read and queued this one message
    elapsed = time.time() - started
    time.sleep(0.5)
    after = rss_bytes(a.pid)
    c.sock.sendall(method(1, 50, 40, b"\x00\x00" + sstr(queue) + b"\x00"))
    c.expect(50, 41)
    c.sock.close()
    return (after - before) / a.count, elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5672)
    p.add_argument("--count", type=int, default=50000)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    per_message = []
    for i in range(a.runs):
        queue = f"queued-memory-{int(time.time() * 1000)}-{i}"
        bytes_per, elapsed = run(a, queue)
        per_message.append(bytes_per)
        print(f"run {i + 1}: {bytes_per:.0f} bytes/message ({a.count} x {a.size} B in {elapsed:.1f} s)")
    print(f"median: {statistics.median(per_message):.0f} bytes per queued {a.size}-byte message")


if __name__ == "__main__":
    main()
