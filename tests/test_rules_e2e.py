"""End to end: real Celery workers (events on) on a private Redis db, the exporter, a real Prometheus
loading the rules (evaluating every second) and a real Alertmanager routing critical alerts to a webhook
"pager". Traffic includes successes, failures, retries that end in the seed's ``dlq:<task>`` pattern, and
dead letters LPUSHed by hand. Then every dashboard and rule expression must run through Prometheus' HTTP
API without error, the key panels must return data, every rule must evaluate healthily, and the
DLQ-growth alert (its ``for`` shortened in a test copy of the rules) must arrive firing at Alertmanager and
at the pager.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from tests._broker_helpers import RedisServer
from tests._prom_helpers import (
    ALERTMANAGER,
    PROMETHEUS,
    ROOT,
    Processes,
    dashboard_exprs,
    iter_rules,
    load_dashboards,
    load_rules,
    substitute_grafana_vars,
    variable_query_expr,
)
from tests._support import free_port, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None or ALERTMANAGER is None,
                       reason="needs /usr/bin/prometheus and prometheus-alertmanager (Debian packages)"),
]

# A private redis-server on a spare port, so concurrent runs of the suite cannot see each other's events;
# without the binary, db 14 of the shared Redis (flushed before and after).
SHARED_BROKER = "redis://127.0.0.1:6379/14"
REDIS_SERVER = shutil.which("redis-server")
QUEUE = "e2e"
DLQ = "dlq:e2e.flaky"
N_OK, N_FAIL, N_FLAKY, MAX_RETRIES = 24, 6, 3, 2
DLQ_ALERT = "CeleryDeadLetterQueueGrowing"
# What a server that is not up yet raises; anything else (a child process died) fails the wait at once.
NOT_UP = (OSError, ValueError, KeyError)

# The seed's retry-then-dead-letter task (shared/seeds/002): after max_retries it LPUSHes a JSON entry
# with a timestamp to dlq:<task name>, then fails.
TASKS_MODULE = '''
import json, time
from datetime import datetime, timezone
import redis
from celery import Celery

app = Celery("e2e", broker="{broker}")
app.conf.update(task_default_queue="{queue}", worker_send_task_events=True, task_send_sent_event=True,
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
dlq = redis.Redis.from_url("{broker}")

@app.task(name="e2e.ok")
def ok(x):
    time.sleep(0.02)
    return x

@app.task(name="e2e.fail")
def fail():
    raise ValueError("boom")

@app.task(bind=True, name="e2e.flaky", max_retries={max_retries})
def flaky(self):
    try:
        raise ConnectionError("downstream unavailable")
    except ConnectionError as exc:
        if self.request.retries >= self.max_retries:
            dlq.lpush("dlq:" + self.name, json.dumps({{
                "task_name": self.name, "task_id": self.request.id, "error": str(exc),
                "retries": self.request.retries, "timestamp": datetime.now(timezone.utc).isoformat()}}))
            raise
        raise self.retry(exc=exc, countdown=0.2)
'''

# The panels that must show data after the traffic above (dashboard file -> titles).
KEY_PANELS = {
    "celery-overview.json": ["Tasks succeeded /s", "Failure ratio", "Workers up", "Dead letters",
                             "Task outcomes /s by queue", "Failure ratio by task (top 10)",
                             "Retry ratio by task (top 10)", "Run time p95 by task (top 10)",
                             "Queue wait by queue", "Run time, all tasks", "Workers",
                             "Exporter: events /s by type"],
    "celery-task.json": ["Failure ratio", "Retries /s", "Retries exhausted", "Task events /s",
                         "Failures by exception", "Retries by exception", "Run time by outcome", "Queue wait"],
    "celery-queues.json": ["Dead letters", "Oldest dead letter", "Dead-letter queue depth", "DLQ growth (10m)",
                           "Arrivals vs completions /s", "Retries exhausted by task", "Poll success"],
}
VARIABLES = {"task_name": "e2e.flaky"}


class _Pager(BaseHTTPRequestHandler):
    """Alertmanager's webhook receiver: keeps every notification it gets."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def pager() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Pager", (_Pager,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def broker_db() -> Iterator[tuple[str, redis.Redis]]:
    """(broker URL, client) of an empty Redis database that this test alone uses."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(RedisServer()).url() if REDIS_SERVER else SHARED_BROKER
        client = redis.Redis.from_url(url, socket_timeout=5)
        stack.callback(client.close)
        wait_for(client.ping, 10, what="redis", errors=(redis.RedisError,))
        client.flushdb()
        yield url, client
        client.flushdb()


def _write_configs(tmp: Path, exporter_port: int, am_port: int, pager_port: int) -> None:
    rules = load_rules()
    for rule in iter_rules(rules):
        if rule.get("alert") == DLQ_ALERT:
            rule["for"] = "3s"  # the test copy: the real 15m would outlast any test
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "celery-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    # The routing of docs/alerting.md, with a webhook standing in for the pager.
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "blackhole", "group_by": ["alertname", "queue"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"matchers": ['alertname=~"Celery.*"', 'severity="critical"'],
                              "receiver": "pager"}]},
        "receivers": [{"name": "blackhole"},
                      {"name": "pager", "webhook_configs": [{"url": f"http://127.0.0.1:{pager_port}/pager"}]}],
    }))


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


def _rule_errors(prom: Prom) -> str:
    return "".join(f"\nrule {r['name']}: {r.get('lastError')}" for g in prom.api("rules")["groups"]
                   for r in g["rules"] if r["health"] != "ok")


def _has_values(result: list[dict[str, Any]]) -> bool:
    values = [v for series in result for v in ([series["value"]] if "value" in series else series["values"])]
    return any(not math.isnan(float(v[1])) for v in values)


def _check_dashboards(prom: Prom) -> None:
    """Every dashboard query runs (as Grafana would send it); key panels and variables have data."""
    now = time.time()
    for name, dash in load_dashboards().items():
        with_data: set[str] = set()
        for where, expr in dashboard_exprs(dash):
            if where.startswith("variable"):
                inner = substitute_grafana_vars(variable_query_expr(expr), VARIABLES)
                label = expr.rsplit(",", 1)[1].strip(" )")
                values = prom.api(f"label/{label}/values", **{"match[]": inner})
                assert values, f"{name} {where}: no values for {inner}"
                continue
            query = substitute_grafana_vars(expr, VARIABLES)
            result = prom.api("query_range", query=query, start=now - 60, end=now, step=2)["result"]
            if _has_values(result):
                with_data.add(where.split("'")[1])
        missing = set(KEY_PANELS[name]) - with_data
        assert not missing, f"{name}: key panels without data: {sorted(missing)}"


def test_rules_and_dashboards_against_real_prometheus_and_alertmanager(
    tmp_path: Path, broker_db: tuple[str, redis.Redis], pager: tuple[int, list[dict[str, Any]]]
) -> None:
    broker, client = broker_db
    pager_port, pages = pager
    exporter_port, prom_port, am_port = free_port(), free_port(), free_port()
    _write_configs(tmp_path, exporter_port, am_port, pager_port)
    (tmp_path / "e2e_tasks.py").write_text(TASKS_MODULE.format(broker=broker, queue=QUEUE,
                                                                max_retries=MAX_RETRIES))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    procs = Processes(tmp_path)
    deadline = time.monotonic() + 80
    prom = Prom(prom_port)
    try:
        procs.start("exporter", [sys.executable, "-m", "exporter", "--broker-url", broker,
                                 "--listen-address", "127.0.0.1", "--port", str(exporter_port),
                                 "--poll-interval", "1", "--log-level", "warning"], cwd=ROOT, env=env)
        for i in (1, 2):
            procs.start(f"worker{i}", [sys.executable, "-m", "celery", "-A", "e2e_tasks", "worker", "-E",
                                       "-Q", QUEUE, "--pool=solo", "--without-mingle", "--without-gossip",
                                       "-n", f"e2e{i}@%h", "--loglevel=WARNING"], cwd=tmp_path, env=env)
        procs.start("prometheus", [PROMETHEUS or "", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}",
                                   "--rules.alert.resend-delay=1s", "--log.level=warn"])
        procs.start("alertmanager", [ALERTMANAGER or "", f"--config.file={tmp_path / 'alertmanager.yml'}",
                                     f"--storage.path={tmp_path / 'am-data'}",
                                     f"--web.listen-address=127.0.0.1:{am_port}",
                                     "--cluster.listen-address=", "--log.level=warn"])

        def at_least(expr: str, want: float) -> bool:
            procs.check_alive()
            return prom.value(expr) >= want

        wait_for(lambda: at_least('celery_workers{state="up"}', 2), deadline - time.monotonic(), every=0.5,
                 what="two workers up, seen through Prometheus", errors=NOT_UP, context=procs.logs)

        # Traffic: successes, failures, and retrying tasks that end in the dead-letter list. Two waves: rate()
        # ignores a series' first sample, so Prometheus must have scraped each counter before most of the
        # traffic lands, or the whole burst would hide inside one scrape interval.
        from celery import Celery

        producer = Celery("e2e-producer", broker=broker)
        producer.conf.update(task_default_queue=QUEUE, task_send_sent_event=True)

        def send(n_ok: int, n_fail: int, n_flaky: int) -> None:
            for i in range(n_ok):
                producer.send_task("e2e.ok", args=(i,))
            for _ in range(n_fail):
                producer.send_task("e2e.fail")
            for _ in range(n_flaky):
                producer.send_task("e2e.flaky")

        def outcomes_reach(outcomes: Mapping[str, float]) -> bool:
            return all(at_least(expr, want) for expr, want in outcomes.items())

        def report(outcomes: Mapping[str, float]) -> str:
            return "\n".join(f"{e} = {prom.value(e)}" for e in outcomes) + _rule_errors(prom)

        first = {'celery_task_succeeded_total{task_name="e2e.ok"}': 1,
                 'celery_task_failed_total{task_name="e2e.fail",exception="ValueError"}': 1,
                 'celery_task_retries_exhausted_total{task_name="e2e.flaky"}': 1}
        send(1, 1, 1)
        wait_for(lambda: outcomes_reach(first), deadline - time.monotonic(), every=0.5,
                 what="the first wave in Prometheus", errors=NOT_UP, context=lambda: report(first))
        send(N_OK - 1, N_FAIL - 1, N_FLAKY - 1)
        outcomes = {
            'sum(celery_task_succeeded_total{task_name="e2e.ok"})': N_OK,
            'sum(celery_task_failed_total{task_name=~"e2e.fail|e2e.flaky"})': N_FAIL + N_FLAKY,
            "sum(celery_task_retries_exhausted_total)": N_FLAKY,
            f'celery_dead_letter_queue_length{{queue="{DLQ}"}}': N_FLAKY,
            'task_name_queue:celery_task_failure:ratio_rate5m{task_name="e2e.fail"}': 1,
            'task_name_queue:celery_task_retry:ratio_rate5m{task_name="e2e.flaky"}': 0.5,
        }
        wait_for(lambda: outcomes_reach(outcomes), deadline - time.monotonic(), every=0.5,
                 what="every task's outcome in Prometheus", errors=NOT_UP, context=lambda: report(outcomes))
        producer.close()
        assert client.llen(DLQ) == N_FLAKY  # the workers dead-lettered exactly the exhausted tasks

        # Keep dead letters coming, as a poison message would, until Alertmanager holds the page.
        def alert_at_alertmanager() -> list[dict[str, Any]]:
            procs.check_alive()
            client.lpush(DLQ, json.dumps({"task_name": "e2e.flaky", "error": "by hand",
                                          "timestamp": datetime.now(UTC).isoformat()}))
            alerts = requests.get(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=5,
                                  params={"filter": f'alertname="{DLQ_ALERT}"'}).json()
            return [a for a in alerts if a["status"]["state"] == "active"]

        alerts = wait_for(alert_at_alertmanager, deadline - time.monotonic(), every=1.0,
                          what="the DLQ-growth alert at Alertmanager", errors=NOT_UP,
                          context=lambda: f"{prom.api('alerts')}\n{procs.logs('prometheus', 'alertmanager')}")
        assert len(alerts) == 1
        labels = alerts[0]["labels"]
        assert labels["severity"] == "critical" and labels["queue"] == DLQ and labels["job"] == "celery-exporter"
        assert alerts[0]["annotations"]["runbook_url"].endswith("#celerydeadletterqueuegrowing")
        assert f"Dead-letter queue {DLQ}" in alerts[0]["annotations"]["description"]

        # Routed to the pager by the docs' Alertmanager route.
        page = wait_for(lambda: [
            (n["receiver"], a) for n in pages for a in n["alerts"] if a["labels"]["alertname"] == DLQ_ALERT
        ], deadline - time.monotonic(), every=0.5, what="the page at the webhook", errors=NOT_UP)
        receiver, paged = page[0]
        assert receiver == "pager" and paged["status"] == "firing" and paged["labels"]["queue"] == DLQ

        # Every rule evaluates without error, and its expression runs through the HTTP API.
        for group in prom.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        for rule in iter_rules():
            prom.api("query", query=rule["expr"])
        _check_dashboards(prom)
    finally:
        procs.stop()
