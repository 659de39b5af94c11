"""The real alerting stack the end-to-end tests run: a private redis-server as the broker, the exporter,
Celery workers, Prometheus loading rules rendered by tools/rules.py, Alertmanager, and a webhook that
records every notification. Used by tests/test_rules_e2e.py (rules and dashboards) and
tests/test_alertmanager_e2e.py (routing and inhibition).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests
import yaml

from tests._broker_helpers import RedisServer
from tests._prom_helpers import ALERTMANAGER, PROMETHEUS, ROOT, Processes
from tests._support import wait_for
from tools import rules

REDIS_SERVER = shutil.which("redis-server")
# Without the binary: db 14 of the shared Redis (flushed before and after).
SHARED_BROKER = "redis://127.0.0.1:6379/14"
# What a server that is not up yet raises, for wait_for; anything else (a child died) fails at once.
NOT_UP = (OSError, ValueError, KeyError)


class _Webhook(BaseHTTPRequestHandler):
    """Alertmanager's webhook receiver: keeps every notification it gets, with the receiver's path."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append({"path": self.path, **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def webhook() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(port, notifications received so far) of a local HTTP server standing in for pager and tickets."""
    received: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Webhook", (_Webhook,), {"received": received}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def private_redis() -> Iterator[tuple[str, redis.Redis, RedisServer | None]]:
    """(broker URL, client, server) of an empty Redis database this test alone uses: a private
    redis-server (which a test may kill) or, without the binary, db 14 of the shared one (server None)."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer()) if REDIS_SERVER else None
        url = server.url() if server is not None else SHARED_BROKER
        client = redis.Redis.from_url(url, socket_timeout=5)
        stack.callback(client.close)
        wait_for(client.ping, 10, what="redis", errors=(redis.RedisError,))
        client.flushdb()
        yield url, client, server
        if server is None:
            client.flushdb()


def render_rules(tmp: Path, **overrides: Any) -> Path:
    """The rules as a user would render them (tools.generate rules --config) with test-sized values."""
    override = tmp / "alerts-config.yaml"
    override.write_text(yaml.safe_dump(overrides))
    path = tmp / "rules.yml"
    path.write_text(rules.render_rules(rules.load_config(override)))
    return path


def write_prometheus_config(tmp: Path, rule_file: Path, exporter_port: int, am_port: int | None) -> Path:
    """Scrape every second; the target labels a ServiceMonitor or static config would add."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "scrape_configs": [{"job_name": "celery-exporter", "static_configs": [{
            "targets": [f"127.0.0.1:{exporter_port}"], "labels": {"cluster": "e2e", "namespace": "celery"}}]}],
    }
    if am_port is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]}
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(procs: Processes, tmp: Path, config: Path, port: int) -> None:
    procs.start("prometheus", [PROMETHEUS or "", f"--config.file={config}",
                               f"--storage.tsdb.path={tmp / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}",
                               "--rules.alert.resend-delay=1s", "--log.level=warn"])


def start_alertmanager(procs: Processes, tmp: Path, config: Path, port: int) -> None:
    procs.start("alertmanager", [ALERTMANAGER or "", f"--config.file={config}",
                                 f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--cluster.listen-address=", "--log.level=warn"])


def start_exporter(procs: Processes, broker: str, port: int, env: dict[str, str], *extra: str,
                   name: str = "exporter") -> None:
    procs.start(name, [sys.executable, "-m", "exporter", "--broker-url", broker,
                             "--listen-address", "127.0.0.1", "--port", str(port), "--poll-interval", "1",
                             "--log-level", "warning", *extra], cwd=ROOT, env=env)


def start_worker(procs: Processes, name: str, app: str, queue: str, cwd: Path, env: dict[str, str]) -> None:
    procs.start(name, [sys.executable, "-m", "celery", "-A", app, "worker", "-E", "-Q", queue, "--pool=solo",
                       "--without-mingle", "--without-gossip", "-n", f"{name}@%h", "--loglevel=WARNING"],
                cwd=cwd, env=env)


def child_env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*(str(p) for p in paths), str(ROOT)])}


class Prom:
    """A small client of Prometheus' HTTP API that fails the test on any error answer."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: Any) -> Any:
        answer = requests.get(f"{self.base}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def value(self, expr: str) -> float:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else math.nan

    def rule_errors(self) -> str:
        return "".join(f"\nrule {r['name']}: {r.get('lastError')}" for g in self.api("rules")["groups"]
                       for r in g["rules"] if r["health"] != "ok")

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"}
