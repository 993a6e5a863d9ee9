import pika

def callback(ch, method, properties, body):
    print(f'Received {body}')

def consume():
    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost'))
    channel = connection.channel()

    channel.queue_declare(queue='example_queue', durable=True)
    channel.basic_consume(queue='example_queue',
                          auto_ack=True,
                          on_message_callback=callback)

    print('Waiting for messages...')
    channel.start_consuming()

consume()
