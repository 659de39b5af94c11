"""The Celery app of the daemon end-to-end tests (``celery -A tests._daemon_e2e_app worker``), broker from
``E2E_BROKER``. Tasks follow the seeds: plain success, a failure, autoretry with exponential backoff that
succeeds on the third attempt, and autoretry that exhausts ``max_retries``."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("e2e", broker=os.environ.get("E2E_BROKER", "memory://"))
app.conf.update(
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_default_queue="daemon-e2e",
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="daemon_e2e.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="daemon_e2e.fail")
def fail() -> None:
    raise ValueError("boom")


@app.task(name="daemon_e2e.flaky", bind=True, autoretry_for=(ConnectionError,), retry_backoff=1, retry_jitter=False,
          max_retries=3)
def flaky(self) -> str:
    if self.request.retries < 2:
        raise ConnectionError("upstream down")
    return "ok"


@app.task(name="daemon_e2e.exhaust", autoretry_for=(TimeoutError,), retry_backoff=1, retry_jitter=False, max_retries=2)
def exhaust() -> None:
    raise TimeoutError("never answers")
