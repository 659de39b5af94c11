"""The Celery app of tests/test_stalls_e2e.py: a quick task and a sleeping one. The broker comes from
STALLS_BROKER; STALLS_SENT_EVENT=0 turns producers' task-sent events off (workers' task-sent events for
retries follow the same setting)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("stalls", broker=os.environ.get("STALLS_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_send_sent_event=os.environ.get("STALLS_SENT_EVENT", "1") == "1",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="stalls.quick")
def quick() -> None:
    return None


@app.task(name="stalls.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)
