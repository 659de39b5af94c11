"""The demo's Celery application: four sample tasks in the patterns of ``shared/seeds/``, and the mix a
producer keeps sending.

* ``demo.send_email`` (queue ``email``) succeeds after a short, variable run time;
* ``demo.parse_invoice`` fails with ``ValueError`` on a malformed invoice and is not retried ("invalid
  data: don't retry");
* ``demo.call_external_api`` retries on ``ConnectionError``/``TimeoutError`` with ``autoretry_for``,
  ``retry_backoff`` (exponential), ``retry_backoff_max`` and ``retry_jitter``; the simulated upstream
  fails ``outages`` times, so most calls succeed after a retry or two and a few exhaust ``max_retries``;
* ``demo.important_task`` retries by hand with the same jittered exponential countdown Celery's
  ``retry_backoff`` computes, and once its retries are exhausted moves itself to the Redis-list style
  dead-letter queue ``dlq:demo.important_task`` (``move_to_dlq`` of seed 002, same JSON entry) and fails.

Every ``BURST_EVERY`` seconds (first after ``BURST_FIRST``) the producer also sends a newsletter:
``BURST_SIZE`` emails at once, more than the worker's four threads clear in a few seconds, so
``celery_queue_length{queue="email"}`` (the metric the Kubernetes HPA scales on) climbs and drains back
to zero while you watch.

Backoff is scaled down (1 s base, 8 s cap instead of the seeds' 600 s) so a demo shows every outcome in
seconds. Workers send task events and producers send ``task-sent`` events, as the exporter needs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import Celery, Task
from celery.utils.time import get_exponential_backoff_interval
from kombu import Queue

SEND_EMAIL = "demo.send_email"
PARSE_INVOICE = "demo.parse_invoice"
CALL_API = "demo.call_external_api"
IMPORTANT = "demo.important_task"
TASK_NAMES = (SEND_EMAIL, PARSE_INVOICE, CALL_API, IMPORTANT)
QUEUES = ("default", "email")
DLQ_KEY = f"dlq:{IMPORTANT}"

BACKOFF_BASE = 1  # seconds; the seeds use retry_backoff=True (also 1 s) with a 600 s cap
BACKOFF_MAX = 8
API_MAX_RETRIES = 4
IMPORTANT_MAX_RETRIES = 3
BURST_SIZE = 200  # at ~25 emails/s for 4 threads: ~8 s of backlog, several 2 s polls see it
BURST_FIRST = 5.0
BURST_EVERY = 60.0


class ListStore(Protocol):
    """Where dead letters go: a Redis client, or the demo's in-process stand-in for the memory broker."""

    def lpush(self, name: str, *values: Any) -> Any: ...


@dataclass
class DemoApp:
    app: Celery
    tasks: dict[str, Task]


def move_to_dlq(store: ListStore, task: Task, data: Any, error: BaseException) -> None:
    """Move a failed task to the dead letter queue for manual review (shared/seeds/002's entry)."""
    dlq_entry = {
        "task_name": task.name,
        "task_id": task.request.id,
        "args": data,
        "error": str(error),
        "retries": task.request.retries,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    store.lpush(f"dlq:{task.name}", json.dumps(dlq_entry))


def build_app(broker_url: str, dlq: ListStore, transport_options: dict[str, Any] | None = None) -> DemoApp:
    """A Celery app on ``broker_url`` with the four demo tasks registered; dead letters go to ``dlq``."""
    app = Celery("demo", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=dict(transport_options or {}),
        broker_connection_retry_on_startup=True,
        task_queues=tuple(Queue(q, routing_key=q) for q in QUEUES),
        task_default_queue="default",
        task_routes={SEND_EMAIL: {"queue": "email"}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_send_task_events=True,  # task-received/started/succeeded/failed/retried (celery -E)
        task_send_sent_event=True,  # task-sent: gives the exporter each task's queue and the wait time
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )

    @app.task(name=SEND_EMAIL)
    def send_email(to: str, subject: str) -> dict[str, str]:
        time.sleep(random.uniform(0.02, 0.3))
        return {"status": "sent", "to": to}

    @app.task(name=PARSE_INVOICE)
    def parse_invoice(invoice: dict[str, Any]) -> float:
        time.sleep(random.uniform(0.005, 0.05))
        try:
            return float(invoice["amount"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed invoice {invoice.get('id')!r}") from None

    @app.task(
        name=CALL_API,
        bind=True,
        autoretry_for=(ConnectionError, TimeoutError),
        retry_backoff=BACKOFF_BASE,  # exponential: up to 1, 2, 4, 8 s
        retry_backoff_max=BACKOFF_MAX,
        retry_jitter=True,  # each countdown drawn from [0, backoff] so retries do not stampede
        max_retries=API_MAX_RETRIES,
    )
    def call_external_api(self: Task, endpoint: str, outages: int) -> dict[str, Any]:
        time.sleep(random.uniform(0.01, 0.15))
        attempt = self.request.retries
        if attempt < outages:
            error = ConnectionError if attempt % 2 == 0 else TimeoutError
            raise error(f"{endpoint} unavailable (attempt {attempt + 1})")
        return {"endpoint": endpoint, "attempts": attempt + 1}

    @app.task(name=IMPORTANT, bind=True, max_retries=IMPORTANT_MAX_RETRIES)
    def important_task(self: Task, data: dict[str, Any]) -> dict[str, Any]:
        try:
            if data.get("poison"):
                raise RuntimeError(f"cannot process record {data.get('id')}")
            time.sleep(random.uniform(0.01, 0.1))
            return {"processed": data.get("id")}
        except Exception as exc:
            if self.request.retries >= self.max_retries:
                move_to_dlq(dlq, self, data, exc)
                raise  # let Celery mark it failed
            countdown = get_exponential_backoff_interval(
                BACKOFF_BASE, self.request.retries, BACKOFF_MAX, full_jitter=True
            )
            raise self.retry(exc=exc, countdown=countdown) from exc

    tasks = {t.name: t for t in (send_email, parse_invoice, call_external_api, important_task)}
    return DemoApp(app, tasks)


Send = Callable[[DemoApp, int], Any]


def _email(demo: DemoApp, n: int) -> Any:
    return demo.tasks[SEND_EMAIL].delay(f"user{n}@example.com", "Welcome")


def _invoice(demo: DemoApp, n: int) -> Any:
    amount = "oops" if random.random() < 0.35 else round(random.uniform(5, 500), 2)
    return demo.tasks[PARSE_INVOICE].delay({"id": n, "amount": amount})


def _api(demo: DemoApp, n: int) -> Any:
    outages = random.choices((0, 1, 2, 3, API_MAX_RETRIES + 1), weights=(40, 30, 15, 10, 5))[0]
    return demo.tasks[CALL_API].delay("https://api.example.com/rates", outages)


def _important(demo: DemoApp, n: int) -> Any:
    return demo.tasks[IMPORTANT].delay({"id": n, "poison": random.random() < 0.15})


# (weight, send): a busy, mostly healthy application.
MIX: tuple[tuple[float, Send], ...] = ((40, _email), (20, _invoice), (25, _api), (15, _important))


def send_first_round(demo: DemoApp) -> None:
    """One of each outcome right away, so every series appears within seconds of starting."""
    demo.tasks[SEND_EMAIL].delay("first@example.com", "Welcome")
    demo.tasks[PARSE_INVOICE].delay({"id": 0, "amount": "not-a-number"})
    demo.tasks[CALL_API].delay("https://api.example.com/rates", 1)
    demo.tasks[IMPORTANT].delay({"id": 0, "poison": True})


def send_burst(demo: DemoApp, n: int, size: int = BURST_SIZE) -> int:
    """A newsletter: ``size`` emails in one go, a backlog the worker takes seconds to clear."""
    for i in range(size):
        _email(demo, n + i)
    return size


def send_one(demo: DemoApp, n: int) -> None:
    random.choices(MIX, weights=[w for w, _ in MIX])[0][1](demo, n)
