"""seeds/004's Celery app (``celery -A tests._seed004_app worker``, all three queues), broker from
``SEED004_BROKER``: the ``default`` queue dead-letters through the ``dlx`` exchange into ``dead_letters``,
and ``dead_letter`` is a plain work queue whose task, ``handle_dead_letter``, stores failures for review."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

app = Celery("seed004", broker=os.environ.get("SEED004_BROKER", "memory://"))
dlx = Exchange("dlx", type="direct")
app.conf.update(
    task_queues=(
        Queue("default", queue_arguments={"x-dead-letter-exchange": "dlx",
                                          "x-dead-letter-routing-key": "dead_letter"}),
        Queue("dead_letters", exchange=dlx, routing_key="dead_letter"),
        Queue("dead_letter"),
    ),
    task_default_queue="default",
    broker_connection_retry_on_startup=True,
)


@app.task(name="seed004.handle_dead_letter", queue="dead_letter")
def handle_dead_letter(task_name: str, exception: str) -> None:
    print("dead letter", task_name, exception)
