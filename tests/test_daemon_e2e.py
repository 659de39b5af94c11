"""The real daemon (``python -m exporter``) against a real Celery worker on the real Redis and RabbitMQ:
exact counts per task and state on the live /metrics, duration histogram counts, worker up then down."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests._broker_helpers import amqp_url, rabbit_vhost
from tests._support import Daemon, celery_worker, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/8"

def k(name: str, task: str, **labels: str) -> str:
    """A sample key as parse_samples() spells it (labels sorted)."""
    items = sorted({"task_name": task, "queue": "daemon-e2e", **labels}.items())
    return name + "{" + ",".join(f'{a}="{b}"' for a, b in items) + "}"


# 5 add, 3 fail, 2 flaky (two retries each, then success), 2 exhaust (two retries each, then failure).
EXPECTED = {
    k("celery_task_sent_total", "daemon_e2e.add"): 5,
    k("celery_task_succeeded_total", "daemon_e2e.add"): 5,
    k("celery_task_failed_total", "daemon_e2e.add", exception=""): 0,
    k("celery_task_received_total", "daemon_e2e.fail"): 3,
    k("celery_task_failed_total", "daemon_e2e.fail", exception="ValueError"): 3,
    k("celery_task_retries_exhausted_total", "daemon_e2e.fail"): 0,
    k("celery_task_sent_total", "daemon_e2e.flaky"): 6,
    k("celery_task_started_total", "daemon_e2e.flaky"): 6,
    k("celery_task_retried_total", "daemon_e2e.flaky", exception="ConnectionError"): 4,
    k("celery_task_succeeded_total", "daemon_e2e.flaky"): 2,
    k("celery_task_sent_total", "daemon_e2e.exhaust"): 6,
    k("celery_task_retried_total", "daemon_e2e.exhaust", exception="TimeoutError"): 4,
    k("celery_task_failed_total", "daemon_e2e.exhaust", exception="TimeoutError"): 2,
    k("celery_task_retries_exhausted_total", "daemon_e2e.exhaust"): 2,
    k("celery_task_duration_seconds_count", "daemon_e2e.add", state="succeeded"): 5,
    k("celery_task_duration_seconds_count", "daemon_e2e.flaky", state="retried"): 4,
    k("celery_task_duration_seconds_count", "daemon_e2e.exhaust", state="failed"): 2,
    k("celery_task_duration_seconds_count", "daemon_e2e.fail", state="failed"): 3,
    k("celery_task_queue_wait_seconds_count", "daemon_e2e.flaky"): 6,
    k("celery_tasks_active", "daemon_e2e.exhaust"): 0,
}


def worker(broker: str, name: str) -> AbstractContextManager[subprocess.Popen[bytes]]:
    return celery_worker("tests._daemon_e2e_app", "daemon-e2e", name, {"E2E_BROKER": broker}, ROOT)


def send_all(broker: str) -> None:
    code = (
        "from tests._daemon_e2e_app import add, fail, flaky, exhaust\n"
        "for i in range(5): add.delay(i, i)\n"
        "for _ in range(3): fail.delay()\n"
        "for _ in range(2): flaky.delay(); exhaust.delay()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "E2E_BROKER": broker},
                   check=True, timeout=60)


def run_scenario(broker: str, extra: list[str]) -> None:
    node = f"daemon-e2e-{os.getpid()}@localhost"
    # --task-routes: the first task of a name whose task-received overtakes its task-sent (different
    # connections) would otherwise take --default-queue; docs/troubleshooting.md says so.
    args = ["--broker-url", broker, "--worker-timeout", "30", "--poll-interval", "1",
            "--task-routes", "daemon_e2e.*=daemon-e2e", "--default-queue", "not-this-one", *extra]
    with Daemon(args) as daemon:
        daemon.start()
        wait_for(lambda: daemon.metrics().get("celery_exporter_broker_connected") == 1, 20, what="connected")
        with worker(broker, node):
            wait_for(lambda: daemon.metrics().get(f'celery_worker_up{{worker="{node}"}}') == 1, 60,
                     what="worker online")
            send_all(broker)

            def done() -> bool:
                m = daemon.metrics()
                return all(m.get(k) == v for k, v in EXPECTED.items())

            try:
                wait_for(done, 90, every=0.5, what="exact task counts")
            except AssertionError:
                m = daemon.metrics()
                pytest.fail(f"mismatch: { {k: (m.get(k), v) for k, v in EXPECTED.items() if m.get(k) != v} }")
        # Warm shutdown sends worker-offline: the worker is reported down at once.
        wait_for(lambda: daemon.metrics().get(f'celery_worker_up{{worker="{node}"}}') == 0, 30,
                 what="worker down after shutdown")
        m = daemon.metrics()
        assert m[f'celery_worker_online{{worker="{node}"}}'] == 0  # a clean shutdown, not a lost worker
        assert not any(k.startswith("celery_exporter_events_invalid_total{") and v for k, v in m.items())
        assert daemon.terminate() == 0


def test_exact_metrics_from_a_real_worker_on_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        run_scenario(REDIS_URL, [])
    finally:
        client.flushdb()


def test_exact_metrics_from_a_real_worker_on_rabbitmq() -> None:
    with rabbit_vhost("exporter-e2e") as vhost:
        run_scenario(amqp_url(vhost), [])
