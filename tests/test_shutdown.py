"""Shutdown under load: SIGTERM to the real daemon while a publisher floods the Redis ``celeryev``
channels with captured Celery events exits 0 within 5 s; in-process, ``App.stop()`` leaves no thread of
the exporter running and no non-daemon thread at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from exporter.app import App
from exporter.config import load_config
from tests._broker_helpers import RedisServer
from tests._reliability_helpers import publisher
from tests._support import Daemon, free_port, wait_for

pytestmark = pytest.mark.integration


def events_total(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("celery_exporter_events_total"))


def test_sigterm_during_heavy_ingest_exits_0_within_5s(redis_server: RedisServer,
                                                      exporter_process: Callable[..., Daemon]) -> None:
    daemon = exporter_process(["--broker-url", redis_server.url(), "--log-format", "json"])
    wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the event stream to connect")
    with publisher(redis_server.port) as sent:
        wait_for(lambda: events_total(daemon.metrics()) > 5_000, 30, what="heavy ingest")
        assert daemon.proc is not None
        started = time.monotonic()
        rc = daemon.terminate(timeout=10)
        took = time.monotonic() - started
        assert sent["sent"] > 5_000
    assert rc == 0, daemon.output()
    assert took < 5.0, f"took {took:.1f}s to exit"
    logs = daemon.log_lines()
    assert any(line.get("event") == "celery-exporter stopped" for line in logs)
    assert not any(line.get("level") in ("error", "critical") for line in logs), daemon.output()


def test_app_stop_leaves_no_thread_behind(redis_server: RedisServer) -> None:
    before = set(threading.enumerate())
    config = load_config(["--broker-url", redis_server.url(), "--listen-address", "127.0.0.1",
                          "--port", str(free_port()), "--poll-interval", "1"], environ={})
    app = App(config)
    app.start()
    try:
        wait_for(lambda: app.status.connected, 20, what="the event stream to connect")
        with publisher(redis_server.port):
            wait_for(lambda: sum(app.state.take_snapshot().events_by_type.values()) > 5_000, 30,
                     what="heavy ingest")
            started = time.monotonic()
            app.stop()
            took = time.monotonic() - started
    finally:
        app.stop_event.set()
    assert took < 5.0, f"App.stop() took {took:.1f}s"
    # Threads that finish on their own (a publisher's connection, a poll in flight) get a moment.
    wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], 5,
             what="the exporter's threads to end")
    left = [t for t in threading.enumerate() if t not in before]
    assert left == [], [t.name for t in left]
    assert [t for t in threading.enumerate() if not t.daemon] == [threading.main_thread()]
