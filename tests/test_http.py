"""The HTTP server over a real socket: negotiation (with the Accept headers Prometheus 2 and 3 send), gzip,
probes, methods, index page."""

from __future__ import annotations

import gzip
import http.client

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.exposition import negotiate
from exporter.http import Health, MetricsServer
from exporter.state import ClusterState
from exporter.status import StreamStatus
from tests._events import T0, redis_envelope, sent
from tests._support import FakeClock


@pytest.fixture
def server():
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
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


# Literal Accept headers. Prometheus 2 (before scrape_protocols, e.g. Debian's 2.42; the real one is
# checked in tests/test_http_prometheus.py) and Prometheus 3 (scrape/scrape.go acceptHeader() over
# config.DefaultScrapeProtocols, with model.EscapingKey added to the 1.0.0 formats), and Prometheus 3
# with scrape_protocols set to text only and to protobuf first.
PROM2_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROM3_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                "application/openmetrics-text;version=0.0.1;q=0.5,"
                "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
PROM3_TEXT_ONLY = "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.5,*/*;q=0.4"
PROM3_PROTO_FIRST = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
                     "q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize(("accept", "want"), [
    (PROM2_ACCEPT, OM), (PROM3_ACCEPT, OM), (PROM3_TEXT_ONLY, TEXT), (PROM3_PROTO_FIRST, OM),
    ("", TEXT), ("*/*", TEXT), ("text/plain", TEXT), ("application/json", TEXT),
    ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5", TEXT),
    ("application/openmetrics-text;q=0", TEXT), ("application/openmetrics-text;version=2.0.0", TEXT),
    ("application/openmetrics-text", OM), ("application/openmetrics-text;version=0.0.1", OM),
])
def test_negotiation_announces_only_what_the_renderer_implements(server, accept: str, want: str) -> None:
    srv, _ = server
    resp, body = get(srv, "/metrics", {"Accept": accept} if accept else {})
    # Exactly one of the two variants the renderer writes: no escaping=allow-utf-8, no text 1.0.0.
    assert resp.status == 200 and resp.getheader("Content-Type") == want
    text = body.decode()
    if want == OM:
        fams = {f.name for f in parse_openmetrics(text)}
        assert text.endswith("# EOF\n")
    else:
        fams = {f.name for f in parse_text(text)}
    assert "celery_task_sent" in fams


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_negotiate_never_answers_another_variant(accept: str) -> None:
    assert negotiate(accept) in (OM, TEXT)
