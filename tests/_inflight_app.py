"""The Celery app of tests/test_inventory.py and tests/test_inflight_e2e.py: a sleeping task and a quick
one. The broker comes from INFLIGHT_BROKER; INFLIGHT_REMOTE_CONTROL=0 turns the workers' remote control
off (they then never answer an inspect)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("inflight", broker=os.environ.get("INFLIGHT_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                task_send_sent_event=True,
                worker_enable_remote_control=os.environ.get("INFLIGHT_REMOTE_CONTROL", "1") == "1")


@app.task(name="inflight.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="inflight.quick")
def quick() -> None:
    return None
