"""The Celery app of tests/test_inventory*.py and tests/test_missed_events_e2e.py: a sleeping task and
a quick one. The broker comes from INFLIGHT_BROKER."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("inflight", broker=os.environ.get("INFLIGHT_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                task_send_sent_event=True)


@app.task(name="inflight.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="inflight.quick")
def quick() -> None:
    return None
