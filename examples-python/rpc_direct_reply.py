"""An RPC round trip over direct reply-to with pika.

The server side answers requests on its own queue; the client consumes the
pseudo-queue amq.rabbitmq.reply-to (no acks) and names it as reply_to, so no reply
queue is declared. Usage: python rpc_direct_reply.py [AMQP_URL]
"""
import sys
import time
import uuid

import pika

URL = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost:5672/%2F"
REPLY_TO = "amq.rabbitmq.reply-to"


def main():
    connection = pika.BlockingConnection(pika.URLParameters(URL))

    server = connection.channel()
    requests = server.queue_declare(queue="", exclusive=True).method.queue

    def on_request(channel, method, properties, body):
        channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            properties=pika.BasicProperties(correlation_id=properties.correlation_id),
            body=b"echo:" + body,
        )

    server.basic_consume(queue=requests, on_message_callback=on_request, auto_ack=True)

    client = connection.channel()
    replies = {}

    def on_reply(channel, method, properties, body):
        replies[properties.correlation_id] = body

    client.basic_consume(queue=REPLY_TO, on_message_callback=on_reply, auto_ack=True)
    correlation_id = str(uuid.uuid4())
    client.basic_publish(
        exchange="",
        routing_key=requests,
        properties=pika.BasicProperties(reply_to=REPLY_TO, correlation_id=correlation_id),
        body=b"hello",
    )

    deadline = time.monotonic() + 10
    while correlation_id not in replies and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    connection.close()
    if replies.get(correlation_id) != b"echo:hello":
        print(f"no reply: {replies!r}", flush=True)
        return 1
    print(f"reply: {replies[correlation_id].decode()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
