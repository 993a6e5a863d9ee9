"""A tiny Celery app for checking that Celery runs against Warren as against RabbitMQ.

Start a worker with ``python -m celery -A celery_app worker``, from ``examples-python/``,
and send it tasks with ``python -m celery_app.client``. Both read the broker from
``CELERY_BROKER_URL`` (default ``amqp://guest:guest@127.0.0.1:5672//``). Results come
back through the ``rpc://`` backend, that is, over AMQP too; the worker sends task
events (as ``-E`` would) and the client sends ``task-sent`` events.
"""

import os

from celery import Celery

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

app = Celery("celery_app", broker=BROKER_URL)
app.conf.update(
    result_backend="rpc://",
    worker_send_task_events=True,
    task_send_sent_event=True,
    # The worker retries the broker until it answers, without Celery 6's deprecation
    # warning about the setting left unset.
    broker_connection_retry_on_startup=True,
    # One task at a time per worker process: nothing waits behind a slow one.
    worker_prefetch_multiplier=1,
)


@app.task
def add(x, y):
    """Returns x + y."""
    return x + y


@app.task
def fail(message):
    """Raises ValueError(message): the client sees the failure through the backend."""
    raise ValueError(message)
