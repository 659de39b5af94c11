"""The Celery app of tests/test_doctor_e2e.py, configured the way users get it wrong, one variable each:

DOCTOR_BROKER          the broker URL (workers and producers)
DOCTOR_SENT_EVENT=0    producers send no task-sent events (task_send_sent_event off)
DOCTOR_KEYPREFIX       kombu's global_keyprefix (Redis)
DOCTOR_SEP             kombu's sep (Redis)
DOCTOR_CLOCK_SHIFT     seconds this process's clock runs ahead (freezegun, ticking)
DOCTOR_DLX             RabbitMQ: the task queue dead-letters into this exchange (and nobody bound a queue)
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from celery import Celery
from kombu import Exchange, Queue

_shift = float(os.environ.get("DOCTOR_CLOCK_SHIFT", "0") or 0)
if _shift:
    import freezegun

    # Ticking: the worker's clock runs, only shifted, so its timers and timeouts still work.
    freezegun.freeze_time(datetime.now(UTC) + timedelta(seconds=_shift), tick=True).start()

options: dict[str, object] = {}
if os.environ.get("DOCTOR_KEYPREFIX"):
    options["global_keyprefix"] = os.environ["DOCTOR_KEYPREFIX"]
if os.environ.get("DOCTOR_SEP"):
    options["sep"] = os.environ["DOCTOR_SEP"]

app = Celery("doctor", broker=os.environ.get("DOCTOR_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_send_sent_event=os.environ.get("DOCTOR_SENT_EVENT", "1") == "1",
    broker_transport_options=options,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
if os.environ.get("DOCTOR_DLX"):
    app.conf.task_queues = [Queue("celery", Exchange("celery"), routing_key="celery",
                                  queue_arguments={"x-dead-letter-exchange": os.environ["DOCTOR_DLX"]})]


@app.task(name="doctor.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="doctor.mul")
def mul(x: int, y: int) -> int:
    return x * y
