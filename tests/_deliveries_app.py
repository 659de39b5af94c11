"""The Celery app of the delivery tests (``celery -A tests._deliveries_app worker``), broker from
``DELIVERIES_BROKER``: every way a task ends that issue 12 found miscounted. Each task records its own
ground truth (attempts) in files under ``DELIVERIES_DIR``, so the tests compare the exporter with what the
tasks really did.

On RabbitMQ the task queue dead-letters into a 1 s TTL queue that dead-letters back (seed 000's ladder),
so ``Reject(requeue=False)`` comes back as a new delivery; on Redis those queue arguments are ignored and
the rejected message is gone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject
from kombu import Exchange, Queue

QUEUE = "deliveries"
VICTIM_QUEUE = "deliveries-victim"
REJECTS = 2  # deliveries rejected before the one that succeeds (RabbitMQ's ladder brings them back)

app = Celery("deliveries", broker=os.environ.get("DELIVERIES_BROKER", "memory://"))
_main = Exchange(QUEUE, type="direct")
_ladder = Exchange(f"{QUEUE}.ladder", type="direct")
app.conf.update(
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_queues=(
        Queue(QUEUE, _main, routing_key=QUEUE,
              queue_arguments={"x-dead-letter-exchange": _ladder.name, "x-dead-letter-routing-key": "1s"}),
        Queue(f"{QUEUE}.retry_1s", _ladder, routing_key="1s",
              queue_arguments={"x-message-ttl": 1000, "x-dead-letter-exchange": _main.name,
                               "x-dead-letter-routing-key": QUEUE}),
        Queue(VICTIM_QUEUE, Exchange(VICTIM_QUEUE, type="direct"), routing_key=VICTIM_QUEUE),
    ),
    task_routes={"deliveries.victim": {"queue": VICTIM_QUEUE}},
)


def _attempt(task_id: str, name: str) -> int:
    """This delivery's number (0, 1, ...) for ``task_id``, recorded in the ground-truth directory."""
    path = Path(os.environ.get("DELIVERIES_DIR", "/tmp")) / f"{name}.{task_id}"
    with path.open("a") as fh:
        fh.write("x")
    return path.stat().st_size - 1


@app.task(name="deliveries.reject", bind=True, acks_late=True)
def reject(self: Any) -> str:
    if _attempt(self.request.id, "reject") < REJECTS:
        raise Reject("not now", requeue=False)
    return "ok"


@app.task(name="deliveries.hard_limit", time_limit=1)
def hard_limit() -> None:
    time.sleep(30)


@app.task(name="deliveries.soft_limit", soft_time_limit=0.5)
def soft_limit() -> None:
    time.sleep(30)


@app.task(name="deliveries.ignore")
def ignore() -> None:
    raise Ignore()


@app.task(name="deliveries.jitter", bind=True, autoretry_for=(ConnectionError,), retry_backoff=1,
          retry_backoff_max=1, retry_jitter=True, max_retries=3)
def jitter(self: Any) -> str:
    if self.request.retries < 2:
        raise ConnectionError("upstream down")
    return "ok"


@app.task(name="deliveries.child_killed")
def child_killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # the pool child dies: WorkerLostError


@app.task(name="deliveries.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="deliveries.victim")
def victim() -> None:
    Path(os.environ.get("DELIVERIES_DIR", "/tmp"), "victim.started").touch()
    time.sleep(60)
