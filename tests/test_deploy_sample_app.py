"""The sample Celery app of the Compose stack (deploy/compose/sample_app): its tasks run eagerly; in the
integration tests, its worker (the command of its image) runs on the real RabbitMQ to show the seed's
dead-letter exchange at work, and on the real Redis next to the exporter configured as in the Compose
file, whose metrics then show the sample tasks and the dead-letter list."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import requests
from celery import signals

from tests._broker_helpers import amqp_url, management_available, rabbit_vhost
from tests._deploy_helpers import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DEPLOY_NOT_UP,
    REPO,
    load_yaml,
    parse_dockerfile,
    stop_processes,
)
from tests._support import wait_for


def _import_sample_app(monkeypatch: pytest.MonkeyPatch, broker: str, dlq: str) -> ModuleType:
    monkeypatch.setenv("CELERY_BROKER_URL", broker)
    monkeypatch.setenv("DLQ_REDIS_URL", dlq)
    monkeypatch.syspath_prepend(str(COMPOSE_DIR))
    for mod in [m for m in sys.modules if m == "sample_app" or m.startswith("sample_app.")]:
        monkeypatch.delitem(sys.modules, mod)
    return importlib.import_module("sample_app.tasks")


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    tasks = _import_sample_app(monkeypatch, "memory://", "redis://127.0.0.1:6379/13")
    tasks.app.conf.task_always_eager = True
    yield tasks
    tasks.app.close()


def test_sample_tasks_are_registered_and_the_producer_sends_each_of_them(sample: ModuleType) -> None:
    names = {n for n in sample.app.tasks if n.startswith("sample.")}
    assert names == {"sample.add", "sample.sleepy", "sample.always_fails", "sample.flaky", "sample.poison"}
    producer = importlib.import_module("sample_app.producer")
    sent: list[str] = []

    def record(sender: str | None = None, **_: Any) -> None:
        sent.append(str(sender))

    sample.app.conf.task_always_eager = False  # publish to the in-memory broker, run nothing
    signals.before_task_publish.connect(record)
    try:
        for _, send in producer.MIX:
            send()
    finally:
        signals.before_task_publish.disconnect(record)
    assert set(sent) == names


def test_sample_app_sends_events_and_uses_queue_default(sample: ModuleType) -> None:
    conf = sample.app.conf
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_default_queue == "default"  # the queue the seed's HPA scales on


def test_sample_flaky_retries_with_backoff_and_jitter(sample: ModuleType) -> None:
    flaky = sample.flaky
    assert flaky.autoretry_for == (ConnectionError,)
    assert flaky.retry_backoff and flaky.retry_jitter is True and flaky.max_retries == 3
    assert flaky.retry_backoff_max >= flaky.retry_backoff


def test_sample_topology_is_the_seed_dlx(sample: ModuleType) -> None:
    assert sample.DEFAULT_QUEUE.queue_arguments == {
        "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"}
    dlq = sample.DEAD_LETTER_QUEUE
    assert (dlq.name, dlq.exchange.name, dlq.exchange.type, dlq.routing_key) == (
        "dead_letters", "dlx", "direct", "dead_letter")


def test_sample_tasks_succeed_fail_and_reject_eagerly(sample: ModuleType) -> None:
    assert sample.add.delay(2, 3).get() == 5
    failed = sample.always_fails.delay("boom")
    assert failed.state == "FAILURE" and isinstance(failed.result, ValueError)
    assert sample.poison.delay().state == "REJECTED"


@pytest.mark.integration
def test_sample_flaky_dead_letters_into_redis_after_its_retries(sample: ModuleType) -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    key = "dlq:sample.flaky"
    client.delete(key)
    try:
        result = sample.flaky.delay(1.0)
        assert result.state == "FAILURE" and isinstance(result.result, ConnectionError)
        (raw,) = client.lrange(key, 0, -1)
        entry = json.loads(raw)
        # The entry shape of shared/seeds/002 move_to_dlq.
        assert set(entry) == {"task_name", "task_id", "args", "error", "retries", "timestamp"}
        assert entry["task_name"] == "sample.flaky" and entry["retries"] == 3
        assert "attempt 4" in entry["error"]
        assert sample.flaky.delay(0.0).get() == "ok"
        assert client.llen(key) == 1  # a success dead-letters nothing
    finally:
        client.delete(key)


def _ready_count(conn: Any, queue: str) -> int | None:
    """Ready messages in a queue, or None while it does not exist (a fresh channel each time: a failed
    passive declare closes its channel)."""
    from amqp.exceptions import NotFound

    with conn.channel() as channel:
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except NotFound:
            return None


@pytest.mark.integration
def test_poison_task_is_dead_lettered_by_rabbitmq_on_a_real_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker command of the sample image, on the real RabbitMQ: a rejected task goes through the
    dlx exchange into dead_letters, which the worker declares when it is ready."""
    from kombu import Connection

    if not management_available():
        pytest.skip("RabbitMQ management API unavailable")
    with rabbit_vhost("deploy-test") as vhost:  # the demo's queue names cannot clash with anything else
        broker = amqp_url(vhost)
        tasks = _import_sample_app(monkeypatch, broker, "redis://127.0.0.1:6379/13")
        image = parse_dockerfile((COMPOSE_DIR / "sample_app" / "Dockerfile").read_text(encoding="utf-8"))
        command = image[-1].all("CMD")[-1].exec_form()
        assert command and command[:4] == ["celery", "-A", "sample_app.tasks", "worker"]
        argv = [sys.executable, "-m", *command, "--pool=solo", "--without-mingle", "--without-gossip"]
        env = {**os.environ, "CELERY_BROKER_URL": broker, "PYTHONPATH": str(COMPOSE_DIR)}
        worker = subprocess.Popen(argv, cwd=COMPOSE_DIR, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            with Connection(broker) as conn:
                deadline = time.monotonic() + 30

                def declared() -> bool:
                    assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
                    return _ready_count(conn, "dead_letters") is not None

                # errors=(): a dead worker or a broker error fails at once
                wait_for(declared, 30, every=0.2, what="the worker to declare dead_letters", errors=())
                tasks.poison.delay()
                tasks.add.delay(1, 2)
                wait_for(lambda: _ready_count(conn, "dead_letters") == 1, deadline - time.monotonic(), every=0.2,
                         what="the rejected task to be dead-lettered", errors=())
                with conn.channel() as channel:
                    message = channel.basic_get("dead_letters", no_ack=True)
                assert message is not None
                assert message.headers["task"] == "sample.poison"
                assert message.headers["x-death"][0]["reason"] == "rejected"
                assert _ready_count(conn, "default") == 0
        finally:
            stop_processes([worker])
            tasks.app.close()


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


@pytest.mark.integration
@pytest.mark.slow
def test_redis_cluster_of_the_stack_shows_up_in_the_exporter(monkeypatch: pytest.MonkeyPatch,
                                                              free_tcp_port: int) -> None:
    """The Redis half of the stack without Docker: the sample worker (its image's command) and the
    exporter (its service's environment), on the real Redis; sample tasks appear with queue "default",
    and the exhausted flaky task's dlq:sample.flaky list as a dead-letter queue."""
    import redis

    broker = "redis://127.0.0.1:6379/12"
    client = redis.Redis.from_url(broker)
    existing = set(client.keys("*"))  # db 12 is the deploy tests'; remove only what this test creates
    client.delete("dlq:sample.flaky")
    tasks = _import_sample_app(monkeypatch, broker, broker)
    image = parse_dockerfile((COMPOSE_DIR / "sample_app" / "Dockerfile").read_text(encoding="utf-8"))
    command = image[-1].all("CMD")[-1].exec_form()
    assert command
    service = load_yaml(COMPOSE_FILE)["services"]["exporter-redis"]
    exporter_env = {k: str(v) for k, v in service["environment"].items()}
    exporter_env["CELERY_EXPORTER_BROKER_URL"] = broker
    port = free_tcp_port
    env = {**os.environ, "CELERY_BROKER_URL": broker, "DLQ_REDIS_URL": broker, "PYTHONPATH": str(COMPOSE_DIR)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "exporter"], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, **exporter_env,
                                                         "CELERY_EXPORTER_PORT": str(port),
                                                         "CELERY_EXPORTER_POLL_INTERVAL": "1"}),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        # Subscribed before the worker's first events.
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=2).ok, deadline - time.monotonic(), every=0.3,
                 what="the exporter to be ready", errors=DEPLOY_NOT_UP)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", *command, "--pool=solo", "--without-mingle", "--without-gossip"],
            cwd=COMPOSE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        tasks.add.delay(1, 2)
        tasks.always_fails.delay()
        tasks.flaky.apply_async((1.0,), retries=tasks.flaky.max_retries)  # the last attempt: dead-letters
        want = {
            ("celery_task_succeeded_total", frozenset({("task_name", "sample.add"), ("queue", "default")})),
            ("celery_task_failed_total", frozenset({("task_name", "sample.always_fails"), ("queue", "default"),
                                                    ("exception", "ValueError")})),
            ("celery_dead_letter_queue_length", frozenset({("queue", "dlq:sample.flaky")})),
        }
        while True:
            samples = _scrape(f"{url}/metrics")
            if all(samples.get(key, 0) >= 1 for key in want):
                break
            assert all(p.poll() is None for p in procs), "the exporter or the worker died"
            assert time.monotonic() < deadline, f"missing: {[k for k in want if not samples.get(k)]}"
            time.sleep(0.5)
        assert requests.get(f"{url}/healthz", timeout=5).ok
    finally:
        stop_processes(procs)
        tasks.app.close()
        created = set(client.keys("*")) - existing
        if created:
            client.delete(*created)

