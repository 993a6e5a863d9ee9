"""Connects to Warren over AMQPS with a client certificate and logs in with SASL
EXTERNAL: the certificate's subject is the user, no password is sent.

    AMQP_URL=amqps://localhost:5671/%2f TLS_CA=ca.pem TLS_CERT=client.pem \
        TLS_KEY=client.key python tls_external.py

Declares a queue, publishes a message and gets it back; prints `summary: <body>`.
"""

import os
import ssl

import pika


def main():
    context = ssl.create_default_context(cafile=os.environ["TLS_CA"])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    params = pika.URLParameters(os.environ["AMQP_URL"])
    params.ssl_options = pika.SSLOptions(context, "localhost")
    params.credentials = pika.credentials.ExternalCredentials()
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare("tls-pika")
    channel.basic_publish("", "tls-pika", b"over tls with EXTERNAL")
    body = None
    for _ in range(100):
        method, _props, body = channel.basic_get("tls-pika", auto_ack=True)
        if method is not None:
            break
        connection.sleep(0.01)
    connection.close()
    print("summary:", body.decode() if body else "nothing")


if __name__ == "__main__":
    main()
