"""The real Prometheus (the Debian package's version) scrapes the HTTP server: the Accept header it sends
is the literal one the negotiation tests use, the answer is a variant the renderer implements, and
Prometheus ingests it (target up, a sample with its value, no parse error)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter.collectors.render import RenderErrorsCollector
from exporter.collectors.tasks import TaskCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.exposition import negotiate
from exporter.http import Health, MetricsServer
from exporter.state import ClusterState
from tests._events import T0, redis_envelope, sent
from tests._prom_helpers import PROMETHEUS
from tests._support import FakeClock, free_port, wait_for
from tests.test_http import OM, PROM2_ACCEPT

pytestmark = pytest.mark.integration


def prometheus_version() -> str:
    out = subprocess.run([PROMETHEUS or "prometheus", "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).split()[2]  # "prometheus, version 2.42.0 (...)"


class HeaderCatcher:
    """A scrape target that records the request headers and answers an empty text page."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: dict[str, str] = {}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                for line in data.decode("latin-1").split("\r\n")[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        self.headers[name.lower()] = value.strip()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def exporter() -> Iterator[MetricsServer]:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
    Ingest(state, clock).feed_redis([redis_envelope([sent("u", "proj.add", T0, queue="default")])])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(state.take_snapshot))
    registry.register(RenderErrorsCollector())
    srv = MetricsServer("127.0.0.1", 0, registry, Health(lambda: (True, "ok"), lambda: (True, "ok")))
    srv.start()
    yield srv
    srv.stop()


def test_real_prometheus_scrapes_a_variant_the_renderer_implements(tmp_path: Path, exporter: MetricsServer) -> None:
    if PROMETHEUS is None:
        pytest.fail("prometheus is required (Debian package prometheus); scripts/test.sh installs it")
    catcher = HeaderCatcher()
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
        f"  - job_name: celery\n    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
        f"  - job_name: catcher\n    static_configs:\n      - targets: ['127.0.0.1:{catcher.port}']\n"
    )
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list[Any]:
        return list(requests.get(f"{base}/query", params={"query": expr}, timeout=5).json()["data"]["result"])

    try:
        wait_for(lambda: query('celery_task_sent_total{job="celery",task_name="proj.add"} == 1'), 60,
                 what="the exporter scraped and its sample stored")
        wait_for(lambda: catcher.headers.get("accept"), 30, what="the catcher scraped")
        targets = requests.get(f"{base}/targets", timeout=5).json()["data"]["activeTargets"]
        celery = next(t for t in targets if t["labels"]["job"] == "celery")
        assert celery["health"] == "up" and celery["lastError"] == "", celery
        # The real header matches the literal the negotiation tests use for Prometheus 2 (the Prometheus 3
        # literal is taken from its source; Debian's package is 2.x), and negotiation answers OpenMetrics.
        if prometheus_version().startswith("2."):
            assert catcher.headers["accept"] == PROM2_ACCEPT
        assert negotiate(catcher.headers["accept"]) == OM
        assert query('scrape_samples_scraped{job="celery"} > 0')
    finally:
        catcher.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
