#!/usr/bin/env python3
"""One pika member of the consumer-group churn benchmark (`warren-perf groups
--pika-member "PYTHON bench/group_member.py"`): the twin of `warren-perf group-member`,
with the same options and the same JSON lines on stdout, each stamped with
time.monotonic_ns() (CLOCK_MONOTONIC, the clock of the controller and lapin members).

A delivery is stamped when pika hands it over, an ack before it is sent. A line
`cancel` on stdin (or stdin closing) makes it leave gracefully: it stops working,
sends basic.cancel, acks every delivery it holds or that arrives before cancel-ok, and
closes. The cancel goes through pika's underlying channel, because BlockingChannel's
basic_cancel nacks (requeues) the deliveries still pending in the client, which would
show as redeliveries the broker did not cause.
"""

import argparse
import random
import sys
import threading
import time

import pika


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--id", type=int, required=True)
    ap.add_argument("--queue", action="append", required=True)
    ap.add_argument("--prefetch", type=int, default=10)
    ap.add_argument("--work-max-us", type=int, default=2000)
    ap.add_argument("--group")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    me = opts.id
    rng = random.Random(opts.seed ^ me)

    conn = pika.BlockingConnection(pika.URLParameters(opts.uri))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=opts.prefetch)
    leaving = threading.Event()
    cancel_ok = []

    def consumer(queue_partition):
        def on_message(channel, method, props, body):
            t = time.monotonic_ns()
            try:
                key, seq = (int(x) for x in body.decode().split(":", 1))
            except ValueError:
                key, seq = 4294967295, 4294967295
            headers = props.headers or {}
            partition = headers.get("x-partition", queue_partition)
            emit(
                '{"m":%d,"ev":"deliver","key":%d,"seq":%d,"partition":%d,"redelivered":%s,"t":%d}'
                % (me, key, seq, partition, "true" if method.redelivered else "false", t)
            )
            if opts.work_max_us > 0 and not leaving.is_set():
                time.sleep(rng.randint(0, opts.work_max_us) / 1e6)
            emit(
                '{"m":%d,"ev":"ack","key":%d,"seq":%d,"partition":%d,"t":%d}'
                % (me, key, seq, partition, time.monotonic_ns())
            )
            channel.basic_ack(method.delivery_tag)

        return on_message

    arguments = {"x-consumer-group": opts.group} if opts.group else None
    tags = []
    for i, queue in enumerate(opts.queue):
        suffix = queue.rsplit("-", 1)[-1]
        tag = "member-%d-%d" % (me, i)
        ch.basic_consume(
            queue,
            consumer(int(suffix) if suffix.isdigit() else 0),
            consumer_tag=tag,
            arguments=arguments,
        )
        tags.append(tag)
    emit('{"m":%d,"ev":"consume-ok","t":%d}' % (me, time.monotonic_ns()))

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        leaving.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not leaving.is_set():
        conn.process_data_events(time_limit=0.05)

    emit('{"m":%d,"ev":"cancel","t":%d}' % (me, time.monotonic_ns()))
    for tag in tags:
        ch._impl.basic_cancel(tag, callback=lambda _frame: cancel_ok.append(1))
    while len(cancel_ok) < len(tags):
        conn.process_data_events(time_limit=0.05)
    emit('{"m":%d,"ev":"cancel-ok","t":%d}' % (me, time.monotonic_ns()))
    # Deliveries that came before cancel-ok may still wait in pika's buffer.
    conn.process_data_events(time_limit=0)
    conn.process_data_events(time_limit=0.1)
    emit('{"m":%d,"ev":"closed","t":%d}' % (me, time.monotonic_ns()))
    # The broker has cancelled them: let BlockingChannel.close not cancel them again.
    for tag in tags:
        ch._consumer_infos.pop(tag, None)
    conn.close()


if __name__ == "__main__":
    main()
