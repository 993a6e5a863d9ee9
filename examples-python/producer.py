import pika

def send_message(message):
    connection = pika.BlockingConnection(pika.ConnectionParameters('localhost'))
    channel = connection.channel()

    channel.queue_declare(queue='example_queue', durable=True)
    channel.basic_publish(exchange='',
                          routing_key='example_queue',
                          body=message,
                          properties=pika.BasicProperties(delivery_mode=2))

    connection.close()

send_message('Hello, World!')
