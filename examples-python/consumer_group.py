import pika
import os
import sys

def on_reply(ch, method, props, body):
    print(f'Received {body}')
    ch.stop_consuming()

def consume_with_group(group_name):
    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost'))
    channel = connection.channel()

    channel.queue_declare(queue='example_queue', durable=True)
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue='example_queue',
                          auto_ack=True,
                          on_message_callback=on_reply)

    channel.start_consuming()

if __name__ == '__main__':
    group_name = os.environ.get('CONSUMER_GROUP_NAME', 'example_group')
    consume_with_group(group_name)
