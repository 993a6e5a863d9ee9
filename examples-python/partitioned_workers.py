"""A partitioned queue shared by a consumer group of worker processes (Warren, issue 13).

The queue `partitioned_workers` has 8 partitions (`x-partitions: 8`). Orders for 10
customers arrive through the direct exchange `partitioned_workers` with the customer as
routing key; the broker hashes the key to pick a partition, so all orders of a customer
sit in one partition, in order. Three worker processes, each with its own connection,
consume the queue: together they are its consumer group, and the broker gives each
worker 2 or 3 of the 8 partitions. Every worker prints

    worker W got customer-K:SEQ from partition P

Halfway through, worker 1 is killed (SIGKILL: no goodbye to the broker). Its partitions
move to the two survivors, which first get its unacknowledged orders again (flagged
redelivered) and then the rest, so each customer's orders are still processed in order.

At the end the script checks that every order was received, that each customer's orders
were first received in sequence, and that only orders of the killed worker were
redelivered, prints one summary line and exits 0 (or 1 if a check failed).

Run it against a Warren on localhost:5672 (or set AMQP_URL):

    python partitioned_workers.py
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pika

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
NAME = "partitioned_workers"
PARTITIONS = 8
CUSTOMERS = 10
MESSAGES = 200
WORKERS = 3
KILLED = 1
PREFETCH = 5
BOUND = 30.0


def worker(number):
    """One member of the group: prints each delivery for the parent, then acks it."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_message(ch, method, properties, body):
        partition = (properties.headers or {}).get("x-partition")
        # For the parent: when (a clock all processes share), what, where, redelivered.
        print(
            f"R {time.monotonic_ns()} {number} {body.decode()} {partition} "
            f"{int(method.redelivered)}",
            flush=True,
        )
        time.sleep(0.005)  # some work, so that a kill finds deliveries unacked
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(
        queue=NAME,
        on_message_callback=on_message,
        arguments={"x-consumer-group": "workers"},
    )
    print("ready", flush=True)
    channel.start_consuming()


class Worker:
    """A worker process and the thread that reads what it prints."""

    def __init__(self, number, records, lock):
        self.number = number
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--worker", str(number)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(
            target=self._read, args=(records, lock), daemon=True
        )
        self.reader.start()

    def _read(self, records, lock):
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
                continue
            _, stamp, number, message, partition, redelivered = line.split()
            key, seq = message.split(":")
            flag = " (redelivered)" if redelivered == "1" else ""
            print(f"worker {number} got {message} from partition {partition}{flag}")
            with lock:
                records.append(
                    (int(stamp), int(number), key, int(seq), int(partition), redelivered == "1")
                )

    def stop(self, sig):
        self.process.send_signal(sig)
        self.process.wait(timeout=BOUND)
        self.reader.join(timeout=BOUND)


def wait_until(condition, what):
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"summary: FAILED: {what} not within {BOUND:.0f} s")
        time.sleep(0.02)


def setup():
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_delete(queue=NAME)
    channel.exchange_declare(exchange=NAME, exchange_type="direct")
    channel.queue_declare(queue=NAME, arguments={"x-partitions": PARTITIONS})
    for k in range(CUSTOMERS):
        channel.queue_bind(queue=NAME, exchange=NAME, routing_key=f"customer-{k}")
    channel.confirm_delivery()
    return connection, channel


def publish(channel, first, last):
    for i in range(first, last):
        key = f"customer-{i % CUSTOMERS}"
        channel.basic_publish(exchange=NAME, routing_key=key, body=f"{key}:{i // CUSTOMERS}")


def check(records, killed_at):
    """Every order received, each customer's first receptions in sequence, each customer
    in one partition, redeliveries only after the kill, and only the killed worker's
    orders received twice (the second time flagged redelivered)."""
    records = sorted(records)
    first = {}
    order = {}
    problems = []
    twice = 0
    for stamp, number, key, seq, partition, again in records:
        if again and stamp < killed_at:
            problems.append(f"{key}:{seq} redelivered before the kill")
        if (key, seq) in first:
            twice += 1
            earlier = first[(key, seq)]
            if not again or earlier[0] != KILLED or earlier[1] > killed_at:
                problems.append(f"{key}:{seq} received twice without a failure")
            continue
        first[(key, seq)] = (number, stamp)
        order.setdefault(key, []).append(seq)
    per_key = MESSAGES // CUSTOMERS
    missing = CUSTOMERS * per_key - len(first)
    if missing:
        problems.append(f"{missing} orders never received")
    for key, seqs in order.items():
        if seqs != sorted(seqs):
            problems.append(f"{key} out of order: {seqs}")
    partitions = {}
    for _, _, key, _, partition, _ in records:
        partitions.setdefault(key, set()).add(partition)
    for key, seen in partitions.items():
        if len(seen) != 1:
            problems.append(f"{key} in partitions {sorted(seen)}")
    redelivered = sum(1 for record in records if record[5])
    return problems, redelivered, twice


def main():
    connection, channel = setup()
    records, lock = [], threading.Lock()
    workers = [Worker(n, records, lock) for n in range(WORKERS)]
    try:
        for w in workers:
            wait_until(w.ready.is_set, f"worker {w.number} consuming")
        publish(channel, 0, MESSAGES // 2)
        wait_until(lambda: len(records) >= MESSAGES // 4, "a quarter of the orders")
        killed_at = time.monotonic_ns()
        workers[KILLED].stop(signal.SIGKILL)
        print(f"worker {KILLED} killed")
        publish(channel, MESSAGES // 2, MESSAGES)

        def all_received():
            with lock:
                return len({(r[2], r[3]) for r in records}) == MESSAGES

        wait_until(all_received, "every order received")
        # Stopping the workers below is no part of the run: a worker stopped between
        # printing an order and acking it has that order redelivered to another.
        with lock:
            run = list(records)
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.stop(signal.SIGTERM)
        channel.queue_delete(queue=NAME)
        channel.exchange_delete(exchange=NAME)
        connection.close()
    problems, redelivered, twice = check(run, killed_at)
    by_worker = {}
    for _, number, _, _, _, _ in run:
        by_worker[number] = by_worker.get(number, 0) + 1
    if problems:
        print(f"summary: FAILED: {'; '.join(problems[:5])}")
        return 1
    print(
        f"summary: {MESSAGES} messages for {CUSTOMERS} keys on {PARTITIONS} partitions, "
        f"{WORKERS} workers (worker {KILLED} killed midway), all received, "
        f"per-key order kept, {redelivered} redelivered after fail-over "
        f"({twice} of them seen by the killed worker); "
        f"deliveries per worker {dict(sorted(by_worker.items()))}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]))
    else:
        sys.exit(main())
