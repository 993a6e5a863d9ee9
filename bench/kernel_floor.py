#!/usr/bin/env python3
"""The kernel's share of relaying one small message, measured without any broker.

A broker that hands each message on as it arrives does, per message, at least what the
relay process here does: wake on the producer's socket, read the publish, write the
delivery to the consumer's socket, wake on the consumer's acknowledgement and read it.
This script runs that pattern over loopback TCP at a fixed rate (the producer and the
consumer are separate processes, like warren-perf's) and prints the relay's system CPU
time per message: the floor under any broker's CPU per message at that rate, whatever
its code does in user space. The relay's own user time (Python) is printed apart and is
not part of the floor.

    python3 bench/kernel_floor.py [--rate 15000] [--seconds 5]
                                  [--publish-bytes 45] [--delivery-bytes 84] [--ack-bytes 21]

The default sizes are those of a 16-byte message in AMQP 0-9-1 frames.
"""
import argparse
import os
import select
import socket
import time
from multiprocessing import Process


def producer(port, rate, seconds, size):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chunk = b"p" * size
    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        while True:
            now = time.perf_counter()
            if now >= due:
                break
            if due - now > 0.0002:
                time.sleep(due - now - 0.0001)
        s.sendall(chunk)
    s.close()


def consumer(port, delivery, ack):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = b"a" * ack
    pending = 0
    while True:
        data = s.recv(65536)
        if not data:
            break
        pending += len(data)
        # One acknowledgement per read, as warren-perf's consumer does.
        if pending >= delivery:
            pending %= delivery
            s.sendall(reply)
    s.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=15000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--publish-bytes", type=int, default=45)
    p.add_argument("--delivery-bytes", type=int, default=84)
    p.add_argument("--ack-bytes", type=int, default=21)
    a = p.parse_args()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    port = listener.getsockname()[1]
    prod = Process(target=producer, args=(port, a.rate, a.seconds, a.publish_bytes))
    cons = Process(target=consumer, args=(port, a.delivery_bytes, a.ack_bytes))
    cons.start()
    downstream, _ = listener.accept()
    prod.start()
    upstream, _ = listener.accept()
    for s in (upstream, downstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)

    poll = select.epoll()
    poll.register(upstream.fileno(), select.EPOLLIN)
    poll.register(downstream.fileno(), select.EPOLLIN)
    delivery = b"d" * a.delivery_bytes
    messages = 0
    partial = 0
    before = os.times()
    open_up = True
    while open_up:
        for fd, _ in poll.poll():
            if fd == upstream.fileno():
                data = upstream.recv(65536)
                if not data:
                    open_up = False
                    break
                partial += len(data)
                whole, partial = divmod(partial, a.publish_bytes)
                if whole:
                    downstream.sendall(delivery * whole)
                    messages += whole
            else:
                downstream.recv(65536)
    after = os.times()
    prod.join()
    downstream.close()
    cons.join()
    sys_us = (after.system - before.system) / messages * 1e6
    user_us = (after.user - before.user) / messages * 1e6
    print(f"relayed {messages} messages at {a.rate:.0f} msg/s: relay system CPU "
          f"{sys_us:.1f} µs/msg (the floor), user {user_us:.1f} µs/msg (Python, not counted)")


if __name__ == "__main__":
    main()
