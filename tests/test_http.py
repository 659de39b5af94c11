"""The HTTP server over a real socket: negotiation, gzip, probes, methods, index page."""

from __future__ import annotations

import gzip
import http.client

import pytest
from prometheus_client import CollectorRegistry

from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.events.ingest import Ingest, StreamStatus
from exporter.http import Health, MetricsServer
from exporter.state import ClusterState
from tests._events import T0, redis_envelope, sent
from tests._support import FakeClock


@pytest.fixture
def server():
    clock = FakeClock(T0)
    state = ClusterState(clock=clock)
    status = StreamStatus(clock)
    Ingest(state, clock).feed_redis([redis_envelope([sent("u", "proj.add", T0, queue="default")])])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(state.take_snapshot))
    registry.register(StreamCollector(state.take_snapshot, status))
    ready = {"ok": False}
    health = Health(lambda: (True, "ok"), lambda: (ready["ok"], "connected" if ready["ok"] else "down"),
                    lambda: {"broker": "redis://127.0.0.1:6379"})
    srv = MetricsServer("127.0.0.1", 0, registry, health)
    srv.start()
    yield srv, ready
    srv.stop()


def get(srv, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_metrics_text_format(server) -> None:
    srv, _ = server
    resp, body = get(srv, "/metrics")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert b'celery_task_sent_total{task_name="proj.add",queue="default"} 1.0' in body


def test_openmetrics_by_negotiation_and_gzip(server) -> None:
    srv, _ = server
    resp, body = get(srv, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0",
                                       "Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Type").startswith("application/openmetrics-text")
    assert resp.getheader("Content-Encoding") == "gzip"
    text = gzip.decompress(body)
    assert text.rstrip().endswith(b"# EOF")
    assert b'celery_task_sent_total{task_name="proj.add",queue="default"} 1.0' in text


def test_probes(server) -> None:
    srv, ready = server
    assert get(srv, "/healthz")[0].status == 200
    resp, body = get(srv, "/readyz")
    assert resp.status == 503 and b"down" in body
    ready["ok"] = True
    assert get(srv, "/readyz")[0].status == 200


def test_index_404_405_and_head(server) -> None:
    srv, _ = server
    resp, body = get(srv, "/")
    assert resp.status == 200 and b'href="/metrics"' in body and b"redis://127.0.0.1:6379" in body
    assert get(srv, "/nope")[0].status == 404
    assert get(srv, "/metrics", method="POST")[0].status == 405
    resp, body = get(srv, "/metrics", method="HEAD")
    assert resp.status == 200 and body == b"" and int(resp.getheader("Content-Length")) > 0


def test_request_body_is_refused(server) -> None:
    srv, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/metrics", body=b"x" * 10)
    assert conn.getresponse().status == 413
    conn.close()
