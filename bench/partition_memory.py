#!/usr/bin/env python3
"""Measures what idle partitions cost a broker: resident memory and file descriptors
per partition of --queues durable queues of --partitions partitions each.

It reads the broker's VmRSS and open descriptors (/proc/PID), declares the queues
(`x-partitions`), reads them again and prints the difference per partition. With
--rabbitmq it declares RabbitMQ's nearest equivalent instead: --partitions quorum queues
per "queue" (a super stream's partitions are streams, heavier still), which is what a
consistent-hash exchange in front of single-active-consumer queues needs.

usage: bench/partition_memory.py --pid PID [--port 5672] [--queues 1000]
                                 [--partitions 256] [--rabbitmq]
"""
import argparse
import os
import time

import pika


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=256)
    parser.add_argument("--rabbitmq", action="store_true")
    args = parser.parse_args()
    params = pika.ConnectionParameters(host=args.host, port=args.port, heartbeat=0)
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    time.sleep(1)
    rss0, fds0 = rss_bytes(args.pid), fds(args.pid)
    started = time.monotonic()
    for q in range(args.queues):
        if args.rabbitmq:
            for p in range(args.partitions):
                channel.queue_declare(f"pm.{q}.{p}", durable=True,
                                      arguments={"x-queue-type": "quorum",
                                                 "x-single-active-consumer": True})
        else:
            channel.queue_declare(f"pm.{q}", durable=True,
                                  arguments={"x-partitions": args.partitions})
    declared = time.monotonic() - started
    time.sleep(2)
    rss1, fds1 = rss_bytes(args.pid), fds(args.pid)
    total = args.queues * args.partitions
    print(f"queues={args.queues} partitions={args.partitions} total={total} "
          f"declare_s={declared:.1f}")
    print(f"rss_before={rss0} rss_after={rss1} bytes_per_partition={(rss1 - rss0) / total:.0f}")
    print(f"fds_before={fds0} fds_after={fds1}")
    conn.close()


if __name__ == "__main__":
    main()
