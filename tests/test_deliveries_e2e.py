"""The real daemon (``python -m exporter``) against real prefork workers on the real Redis and RabbitMQ,
for every ending of issue 12: Reject (through seed 000's DLX ladder on RabbitMQ), a hard and a soft time
limit, Ignore, retries with jitter, a pool child killed, revoke with terminate, an expired task, and a
worker SIGKILLed mid-task. Exact counts per task name on the live /metrics, no task_name="unknown",
celery_tasks_active 0 at the end, celery_task_lost_total 1 for the killed worker's task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._broker_helpers import amqp_url, rabbit_vhost
from tests._deliveries_driver import expected, kill_victim, send_plan, workers
from tests._support import Daemon, wait_for

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/9"
METRIC = {"sent": "celery_task_sent_total", "received": "celery_task_received_total",
          "started": "celery_task_started_total", "succeeded": "celery_task_succeeded_total",
          "rejected": "celery_task_rejected_total", "active": "celery_tasks_active", "lost": "celery_task_lost_total",
          "failed": "celery_task_failed_total", "retried": "celery_task_retried_total",
          "revoked": "celery_task_revoked_total", "duration": "celery_task_duration_seconds_count"}
EXTRA = {"failed": "exception", "retried": "exception", "revoked": "reason", "duration": "state"}


def sample(task: str, what: str) -> str:
    kind, _, extra = what.partition(":")
    queue = "deliveries-victim" if task == "deliveries.victim" else "deliveries"
    labels = {"task_name": task, "queue": queue}
    if extra:
        labels[EXTRA[kind]] = extra
    return METRIC[kind] + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def run(broker: str, rabbitmq: bool, tmp_path: Path) -> None:
    want = {sample(t, w): v for t, truth in expected(rabbitmq).items() for w, v in truth.items()}
    expired = sample("deliveries.sleep", "revoked:expired")
    if rabbitmq:
        # Celery turns ``expires`` into the AMQP per-message ``expiration``: RabbitMQ itself may drop (or
        # dead-letter) the already-expired message before any worker sees it, and then no task-revoked
        # is ever sent. Whether a worker got it first is a race; checked below either way.
        del want[expired]
    args = ["--broker-url", broker, "--worker-timeout", "5", "--poll-interval", "1",
            "--task-routes", "deliveries.victim=deliveries-victim,deliveries.*=deliveries",
            "--default-queue", "not-this-one"]
    tag = str(os.getpid())
    with Daemon(args) as daemon:
        daemon.start()
        wait_for(lambda: daemon.metrics().get("celery_exporter_broker_connected") == 1, 20, what="connected")
        with workers(broker, tmp_path, tag) as (main, victim, vproc):
            def online() -> bool:
                m = daemon.metrics()
                return all(m.get(f'celery_worker_up{{worker="{w}"}}') == 1 for w in (main, victim))

            send_plan(broker, tmp_path, online)
            kill_victim(tmp_path, vproc)

            def done() -> bool:
                m = daemon.metrics()
                return all(m.get(k, 0) == v for k, v in want.items())

            try:
                wait_for(done, 90, every=0.5, what="exact per-name counts")
            except AssertionError:
                m = daemon.metrics()
                pytest.fail(f"mismatch: { {k: (m.get(k), v) for k, v in want.items() if m.get(k, 0) != v} }; "
                            + "revoked and unknown: " + repr({k: v for k, v in m.items() if "revoked" in k or "unknown" in k}))
            m = daemon.metrics()
        if rabbitmq:  # one task-revoked for the terminated task, and one more if a worker saw the expired one
            assert m.get(expired, 0) == m['celery_exporter_events_total{type="task-revoked"}'] - 1, m
        assert not any('task_name="unknown"' in k for k in m), [k for k in m if "unknown" in k]
        assert m["celery_exporter_unknown_tasks_total"] == 0
        assert sum(v for k, v in m.items() if k.startswith("celery_tasks_active{")) == 0
        assert not any(k.startswith("celery_exporter_events_invalid_total{") and v for k, v in m.items())
        assert daemon.terminate() == 0


def test_every_delivery_counted_on_redis(tmp_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        run(REDIS_URL, False, tmp_path)
    finally:
        client.flushdb()


def test_every_delivery_counted_on_rabbitmq_with_the_dlx_ladder(tmp_path: Path) -> None:
    with rabbit_vhost("exporter-deliveries") as vhost:
        run(amqp_url(vhost), True, tmp_path)
