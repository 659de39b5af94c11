"""Restarts and gaps, on the live /metrics of the real daemon with real prefork workers
(tests/_inflight_app.py):

* ten tasks of 60 s run; the exporter is restarted mid-run. Within 5 s of its start the new process
  shows the ten as active, with a running age within 2 s of the truth (the age the first process had
  from their task-started events), and when they finish they count under their own name, nothing under
  ``unknown`` (Redis, a private server, and RabbitMQ, a private vhost);
* a flood of 10,000 tasks on Redis, with the exporter's own pub/sub connection killed mid-flood
  (``CLIENT KILL ID`` of the connections that appeared when the exporter started, so the workers' own
  subscriptions stay up): ``celery_exporter_task_events_missed_total`` is within 2% of the task-started
  events actually lost (10,000 tasks ran, each sent one; the exporter counted the rest), and 0 on the
  same flood without the cut.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from tests._broker_helpers import RedisServer, amqp_url, rabbit_vhost
from tests._support import ROOT, Daemon, celery_worker, wait_for

pytestmark = pytest.mark.integration
APP = "tests._inflight_app"
QUEUE = "inflight-q"
SLEEP = 'task_name="inflight.sleep"'
QUICK = 'task_name="inflight.quick"'


def _sum(metrics: dict[str, float], name: str, *parts: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name + "{") and all(p in k for p in parts))


@contextlib.contextmanager
def _workers(broker: str, concurrency: int, n: int = 1) -> Iterator[list[str]]:
    names = [f"inflight{i}-{os.getpid()}@localhost" for i in range(n)]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(celery_worker(APP, QUEUE, name, {"INFLIGHT_BROKER": broker}, ROOT,
                                              concurrency=concurrency))
        yield names


def _daemon(broker: str, *extra: str) -> Daemon:
    d = Daemon(["--broker-url", broker, "--poll-interval", "1", "--queues", QUEUE, *extra])
    d.start()
    return d


def _restart_mid_run(broker: str) -> None:
    app = Celery("inflight-producer", broker=broker)
    try:
        with _workers(broker, concurrency=10) as (node,):
            with _daemon(broker) as first:
                wait_for(lambda: first.metrics().get(f'celery_worker_up{{worker="{node}"}}') == 1, 40,
                         what="worker up")
                for _ in range(10):
                    app.send_task("inflight.sleep", args=[60], queue=QUEUE)
                m = wait_for(first.metrics, 30, ok=lambda m: _sum(m, "celery_tasks_active", SLEEP) == 10,
                             what="ten running", context=first.output)
                # The truth, from the task-started events: when the oldest of the ten started.
                started_at = time.time() - _sum(m, "celery_task_oldest_running_age_seconds", SLEEP)
                assert first.terminate() == 0
            time.sleep(2)  # mid-run: the tasks run on, unseen
            with _daemon(broker) as second:
                born = time.monotonic()
                m = wait_for(second.metrics, 5, every=0.2,
                             ok=lambda m: _sum(m, "celery_tasks_active", SLEEP) == 10,
                             what="the ten active within 5 s of start", context=second.output)
                assert time.monotonic() - born <= 5.5
                age = _sum(m, "celery_task_oldest_running_age_seconds", SLEEP)
                truth = time.time() - started_at
                assert abs(age - truth) <= 2, f"running age {age:.1f}s, truth {truth:.1f}s"
                m = wait_for(second.metrics, 90, every=0.5,
                             ok=lambda m: _sum(m, "celery_task_succeeded_total", SLEEP) == 10,
                             what="the ten finished", context=second.output)
                assert _sum(m, "celery_tasks_active") == 0
                assert m["celery_exporter_unknown_tasks_total"] == 0
                assert not _sum(m, "celery_task_succeeded_total", 'task_name="unknown"')
                assert _sum(m, "celery_task_succeeded_total", SLEEP, f'queue="{QUEUE}"') == 10
    finally:
        app.close()


def test_tasks_in_flight_across_an_exporter_restart_on_redis() -> None:
    with RedisServer() as server:
        _restart_mid_run(server.url())


def test_tasks_in_flight_across_an_exporter_restart_on_rabbitmq() -> None:
    with rabbit_vhost("exporter-inflight") as vhost:
        _restart_mid_run(amqp_url(vhost))


# ------------------------------------------------------------------ missed events
FLOOD = 10_000


def _flood(cut: bool) -> None:
    with RedisServer() as server:
        broker = server.url()
        client = server.client()
        app = Celery("inflight-flood", broker=broker)
        try:
            with _workers(broker, concurrency=4, n=2) as nodes:
                before = {c["id"] for c in client.client_list(_type="pubsub")}
                with _daemon(broker, "--worker-timeout", "30") as d:
                    wait_for(lambda: all(d.metrics().get(f'celery_worker_up{{worker="{n}"}}') == 1
                                         for n in nodes), 40, what="workers up")
                    ours = [c["id"] for c in client.client_list(_type="pubsub") if c["id"] not in before]
                    assert ours, "the exporter's subscription was not found"
                    with app.producer_or_acquire() as producer:
                        for i in range(FLOOD):
                            app.send_task("inflight.quick", queue=QUEUE, producer=producer)
                            if cut and i == FLOOD // 3:
                                for client_id in ours:
                                    client.client_kill_filter(_id=client_id)

                    def accepted() -> float:
                        return _sum(d.metrics(), "celery_worker_tasks_accepted_total")

                    wait_for(accepted, 180, every=1, ok=lambda n: n >= FLOOD, what="flood accepted",
                             context=d.output)
                    # Three heartbeats, and the hold of nameless events (a task-started whose task-received
                    # was lost waits up to 15 s for a name before it counts under unknown).
                    time.sleep(16)
                    m = d.metrics()
                    received = _sum(m, "celery_task_started_total")
                    lost = FLOOD - received
                    missed = m["celery_exporter_task_events_missed_total"]
                    per_worker = _sum(m, "celery_worker_task_events_missed_total")
                    print(f"flood cut={cut}: {received:.0f} starts received, {lost:.0f} lost, {missed:.0f} missed")
                    assert per_worker == missed
                    if cut:
                        assert m["celery_exporter_broker_reconnects_total"] >= 1
                        assert lost > 0, "the cut lost nothing: nothing to measure"
                        assert abs(missed - lost) <= 0.02 * lost, f"missed {missed}, lost {lost}"
                    else:
                        assert lost == 0 and missed == 0, f"missed {missed}, lost {lost}"
        finally:
            app.close()


def test_missed_starts_counted_after_a_redis_pubsub_cut() -> None:
    _flood(cut=True)


def test_no_missed_starts_on_a_clean_redis_flood() -> None:
    _flood(cut=False)
