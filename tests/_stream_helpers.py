"""Shared pieces of the event-stream tests: the captured payloads and their documented counts, a stream
running in a thread, and a real Celery worker as a subprocess. Everything started here is stopped by the
same helper, with a time-out on every wait.

This module is also the Celery app of the worker tests: ``celery -A _stream_helpers worker`` with the
broker in ``STREAM_TEST_BROKER``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from exporter.brokers.settings import StreamSettings
from exporter.config import Config, state_settings, stream_settings
from exporter.events.ingest import Ingest
from exporter.state import ClusterState
from exporter.status import StreamStatus
from tests._support import celery_worker as support_worker
from tests._support import wait_for

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "testdata" / "events"

# The 96 events of every capture (tests/testdata/events/README.md).
EXPECTED_TYPES = {"task-sent": 23, "task-received": 23, "task-started": 23, "task-succeeded": 10,
                  "task-failed": 5, "task-retried": 8, "worker-online": 1, "worker-heartbeat": 2,
                  "worker-offline": 1}
EXPECTED_TOTAL = sum(EXPECTED_TYPES.values())


def lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (EVENTS / name).read_text().splitlines() if line.strip()]


def events_in(body: str | bytes) -> int:
    obj = json.loads(body)
    return len(obj) if isinstance(obj, list) else 1


def total(state: ClusterState) -> int:
    with state.lock:
        return sum(state.events_by_type.values())


def invalid(state: ClusterState) -> dict[str, int]:
    with state.lock:
        return dict(state.invalid_by_reason)


def by_type(state: ClusterState) -> dict[str, int]:
    with state.lock:
        return dict(state.events_by_type)


def settings(url: str, **config: Any) -> StreamSettings:
    """The stream settings the app would build for ``url`` and these Config options (defaults otherwise)."""
    return stream_settings(Config(broker_url=url, **config))


def pipeline() -> tuple[ClusterState, Ingest, StreamStatus]:
    state = ClusterState(state_settings())
    return state, Ingest(state), StreamStatus()


@contextlib.contextmanager
def running(stream: Any, status: StreamStatus, connect: bool = True) -> Iterator[threading.Thread]:
    """Run ``stream.run(stop)`` in a thread; on exit stop it and insist it ends within 2 s."""
    stop = threading.Event()
    thread = threading.Thread(target=stream.run, args=(stop,), name="stream-under-test", daemon=True)
    thread.start()
    try:
        if connect:
            wait_for(lambda: status.connected, 15, what="the stream to connect")
        yield thread
    finally:
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive(), "the stream did not stop within 2 s of stop being set"




# ---------------------------------------------------------------- a real Celery worker
app = Celery("stream_tests", broker=os.environ.get("STREAM_TEST_BROKER", "memory://"), set_as_current=False)
app.conf.update(task_send_sent_event=True, worker_send_task_events=True, task_default_queue="stream-tests",
                broker_connection_retry_on_startup=True)


@app.task(name="stream_tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="stream_tests.fail")
def fail() -> None:
    raise ValueError("boom")


@contextlib.contextmanager
def celery_worker(broker: str, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real prefork worker (2 processes, events on) for ``broker``; warm-shut-down on exit."""
    env = dict(STREAM_TEST_BROKER=broker,
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with support_worker("_stream_helpers", "stream-tests", f"{name}@%h", env, ROOT / "tests") as proc:
        yield proc


def send_tasks(broker: str, n_ok: int, n_fail: int) -> None:
    """Send ``n_ok`` succeeding and ``n_fail`` failing tasks through ``broker`` (task-sent events on)."""
    client = Celery("stream_tests", broker=broker, set_as_current=False)
    client.conf.update(task_send_sent_event=True, task_default_queue="stream-tests")
    try:
        for i in range(n_ok):
            client.send_task("stream_tests.add", (i, i))
        for _ in range(n_fail):
            client.send_task("stream_tests.fail")
    finally:
        client.close()


def check_real_worker_events(stream: Any, state: ClusterState, status: StreamStatus, broker: str,
                             name: str) -> None:
    """A real worker's full event sequence through ``stream``: exact counts per type, nothing refused."""
    with running(stream, status):
        with celery_worker(broker, name):
            wait_for(lambda: by_type(state).get("worker-online"), 60, what="worker-online")
            send_tasks(broker, n_ok=3, n_fail=1)
            wait_for(lambda: by_type(state).get("task-succeeded") == 3
                       and by_type(state).get("task-failed") == 1, 60, what="the tasks")
        wait_for(lambda: by_type(state).get("worker-offline"), 30, what="worker-offline")
    seen = by_type(state)
    seen.pop("worker-heartbeat", None)  # one every 2 s: how many depends on timing
    assert seen == {"worker-online": 1, "task-sent": 4, "task-received": 4, "task-started": 4,
                    "task-succeeded": 3, "task-failed": 1, "worker-offline": 1}
    assert invalid(state) == {}
