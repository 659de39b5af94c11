"""End to end: real Celery workers (events on) on a private Redis, the exporter, and a real Prometheus
loading the committed rules plus one SLO of each kind over the test's tasks (evaluating every second),
with the target labels (cluster, namespace) a ServiceMonitor adds. Traffic includes successes, failures, and retries that end in the seed's
``dlq:<task>`` pattern. Then every dashboard and rule expression must run through Prometheus' HTTP API
without error (as Grafana would send it, variables substituted), the key panels and every variable must
return data, and every rule must evaluate healthily. Alertmanager routing: test_alertmanager_e2e.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests._alerting_stack import (
    NOT_UP,
    Prom,
    child_env,
    private_redis,
    render_rules,
    start_exporter,
    start_prometheus,
    start_worker,
    write_prometheus_config,
)
from tests._prom_helpers import (
    PROMETHEUS,
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
    pytest.mark.skipif(PROMETHEUS is None, reason="needs /usr/bin/prometheus (Debian package 'prometheus')"),
]

QUEUE = "e2e"
DLQ = "dlq:e2e.flaky"
N_OK, N_FAIL, N_FLAKY, MAX_RETRIES = 24, 6, 3, 2

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
HEALTH = ["Scraped", "Event stream connected", "Broker polls succeeding"]
KEY_PANELS = {
    "celery-overview.json": [*HEALTH, "Tasks succeeded /s", "Failure ratio", "Workers up", "Dead letters",
                             "Task outcomes /s by queue", "Failure ratio by task (top 10)",
                             "Retry ratio by task (top 10)", "Run time p95 by task (top 10)",
                             "Queue wait by queue", "Run time, all tasks", "Workers",
                             "Exporter: events /s by type"],
    "celery-task.json": ["Failure ratio", "Retries /s", "Retries exhausted (24h)", "Retries exhausted /h",
                         "Task events /s", "Failures by exception", "Retries by exception",
                         "Run time by outcome", "Queue wait"],
    "celery-queues.json": [*HEALTH, "Dead letters", "Dead letters added", "Oldest dead letter",
                           "Dead-letter queue depth", "Arrivals vs completions /s", "Time to drain",
                           "Retries exhausted by task /h", "Poll success"],
    "celery-slo.json": ["Error budget remaining", "Objective", "SLI (5m)", "SLI over time",
                        "Burn rate 1h / 5m (alert at 14.4x)", "Burn rate 3d / 6h (alert at 1x)"],
}
# One SLO of each kind over the traffic below, rendered with the shipped rules as a user would: the SLO
# dashboard and the SLO recording rules get data.
SLOS = [
    {"name": "e2e-succeed", "kind": "success", "task_name": "e2e.*", "objective": 99},
    {"name": "e2e-starts-fast", "kind": "queue_latency", "queue": QUEUE, "threshold_seconds": 5, "objective": 99},
    {"name": "e2e-ok-runs-fast", "kind": "run_time", "task_name": "e2e.ok", "threshold_seconds": 1, "objective": 95},
]
VARIABLES = {"task_name": "e2e.flaky"}


def _has_values(result: list[dict[str, Any]]) -> bool:
    values = [v for series in result for v in ([series["value"]] if "value" in series else series["values"])]
    return any(not math.isnan(float(v[1])) for v in values)


def _check_dashboards(prom: Prom) -> bool:
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
    return True


def test_rules_and_dashboards_against_real_prometheus(tmp_path: Path) -> None:
    exporter_port, prom_port = free_port(), free_port()
    procs = Processes(tmp_path)
    deadline = time.monotonic() + 80
    prom = Prom(prom_port)
    try:
        with private_redis() as (broker, client, _):
            rule_file = render_rules(tmp_path, slos=SLOS)
            assert load_rules(rule_file)["groups"][:len(load_rules()["groups"])] == load_rules()["groups"]
            config = write_prometheus_config(tmp_path, rule_file, exporter_port, None)
            (tmp_path / "e2e_tasks.py").write_text(TASKS_MODULE.format(broker=broker, queue=QUEUE,
                                                                        max_retries=MAX_RETRIES))
            env = child_env(tmp_path)
            start_exporter(procs, broker, exporter_port, env)
            for i in (1, 2):
                start_worker(procs, f"e2e{i}", "e2e_tasks", QUEUE, tmp_path, env)
            start_prometheus(procs, tmp_path, config, prom_port)

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
                return "\n".join(f"{e} = {prom.value(e)}" for e in outcomes) + prom.rule_errors()

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

            # Every rule evaluates without error, and its expression runs through the HTTP API.
            for group in prom.api("rules")["groups"]:
                for rule in group["rules"]:
                    assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            for rule in iter_rules(load_rules(rule_file)):
                prom.api("query", query=rule["expr"])
            # Recording rules land an evaluation or two after the traffic (more on a loaded machine).
            wait_for(lambda: _check_dashboards(prom), 30, every=1, what="every dashboard's key panels",
                     errors=(AssertionError,))
    finally:
        procs.stop()
