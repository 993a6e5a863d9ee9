"""A stream read by several readers, each from its own place (Warren's README, "Streams").

Declares the stream `events`, publishes 100 events with publisher confirms (tagged with
an `x-stream-filter-value` of `eu` or `us`), then:

- reader `audit` replays the stream from its first offset and sees every event, each
  with its `x-stream-offset`;
- reader `eu-only` asks for the `eu` events only (`x-stream-filter`) and gets exactly
  those;
- reader `billing` has the broker track its offset
  (`x-stream-automatic-offset-tracking`): it acks 20 events, leaves the next ones
  unacked and disconnects; when it comes back under the same consumer tag it resumes
  at the first event it had not acked, whatever `x-stream-offset` it asks for.

Prints a `summary:` line and exits 0 if all of that held. Connects to `AMQP_URL`
(default `amqp://guest:guest@localhost:5672/%2F`).
"""

import os
import sys
import uuid

import pika

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
STREAM = "events-" + uuid.uuid4().hex[:8]
EVENTS = 100


def connect():
    return pika.BlockingConnection(pika.URLParameters(URL))


def region(i):
    return "eu" if i % 3 == 0 else "us"


def read(channel, count, arguments, tag, ack_first=None):
    """The first `count` deliveries to a consumer with these arguments: (offset, body)
    pairs. Acks the first `ack_first` of them (all when None)."""
    channel.basic_qos(prefetch_count=50)
    got = []

    def on_message(ch, method, properties, body):
        got.append((properties.headers["x-stream-offset"], body.decode()))
        if ack_first is None or len(got) <= ack_first:
            ch.basic_ack(method.delivery_tag)
        if len(got) == count:
            ch.stop_consuming()

    channel.basic_consume(STREAM, on_message, consumer_tag=tag, arguments=arguments)
    channel.connection.call_later(10, channel.stop_consuming)
    channel.start_consuming()
    return got


def main():
    conn = connect()
    channel = conn.channel()
    channel.queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream"})
    channel.confirm_delivery()
    for i in range(EVENTS):
        channel.basic_publish(
            "",
            STREAM,
            f"event-{i}".encode(),
            pika.BasicProperties(headers={"x-stream-filter-value": region(i)}),
        )
    conn.close()
    failures = []

    conn = connect()
    audit = read(conn.channel(), EVENTS, {"x-stream-offset": "first"}, "audit")
    if audit != [(i, f"event-{i}") for i in range(EVENTS)]:
        failures.append(f"audit saw {len(audit)} events, not all 100 in order")
    eu = read(
        conn.channel(),
        sum(1 for i in range(EVENTS) if region(i) == "eu"),
        {"x-stream-offset": "first", "x-stream-filter": "eu"},
        "eu-only",
    )
    if [offset for offset, _ in eu] != [i for i in range(EVENTS) if region(i) == "eu"]:
        failures.append("eu-only saw other events than the eu ones")
    conn.close()

    tracked = {"x-stream-automatic-offset-tracking": True}
    conn = connect()
    first = read(conn.channel(), 30, {**tracked, "x-stream-offset": "first"}, "billing", 20)
    conn.close()
    conn = connect()
    again = read(conn.channel(), 10, {**tracked, "x-stream-offset": "next"}, "billing")
    conn.close()
    if len(first) != 30 or not again or again[0][0] != 20:
        failures.append(f"billing resumed at {again[:1]} after acking 20 events")

    conn = connect()
    conn.channel().queue_delete(STREAM)
    conn.close()
    print(
        f"summary: audit {len(audit)}/{EVENTS}, eu-only {len(eu)}, "
        f"billing resumed at {again[0][0] if again else None}, "
        f"{'ok' if not failures else 'FAILED: ' + '; '.join(failures)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
