"""End to end: an SLO declared in a user's rules config (short windows, so the test takes a minute, not
hours), rendered by ``celery-exporter generate rules``, loaded by a real Prometheus (scraping and
evaluating every second) that scrapes the exporter watching a real Celery worker on a private Redis. A
producer sends a task a few times a second: while it succeeds nothing fires; when it starts failing every
time, the fast-burn page fires; when it recovers, the page resolves. And through Alertmanager, with the
routing of docs/alerting.md: an HA pair of exporters watching the same failing task sends one page, and
the SLO's slow-burn ticket firing at the same time is held back by it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.mixin.cli import main as generate
from tests._alerting_stack import (
    NOT_UP,
    Prom,
    child_env,
    private_redis,
    start_alertmanager,
    start_exporter,
    start_prometheus,
    start_worker,
    webhook,
    write_prometheus_config,
)
from tests._prom_helpers import ALERTMANAGER, PROMETHEUS, Processes
from tests._support import free_port, wait_for
from tests.test_alertmanager_e2e import _alertmanager_config, _am_alerts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs /usr/bin/prometheus (Debian package 'prometheus')"),
]

QUEUE = "slo-e2e"
SLO = "e2e-work-succeeds"
# 99%: the page's threshold is 14.4 x 1% = 14.4% errors over 30 s and over 5 s.
CONFIG = {
    "slos": [{"name": SLO, "kind": "success", "task_name": "slo.*", "objective": 99, "period": "1h",
              "min_events": 10}],
    "slo_alerts": [
        {"severity": "critical", "long": "30s", "short": "5s", "burn_rate": 14.4, "for": "0s"},
        {"severity": "warning", "long": "2m", "short": "15s", "burn_rate": 1, "for": "0s"},
    ],
}
TASKS_MODULE = '''
from celery import Celery

app = Celery("slo_e2e", broker="{broker}")
app.conf.update(task_default_queue="{queue}", worker_send_task_events=True, task_send_sent_event=True,
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="slo.work")
def work(fail):
    if fail:
        raise RuntimeError("the dependency is down")
    return "ok"
'''


class Producer(threading.Thread):
    """Sends slo.work a few times a second; ``failing`` says whether the runs fail."""

    def __init__(self, broker: str) -> None:
        super().__init__(daemon=True)
        from celery import Celery

        self.app = Celery("slo-e2e-producer", broker=broker)
        self.app.conf.update(task_default_queue=QUEUE, task_send_sent_event=True)
        self.failing = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.app.send_task("slo.work", args=(self.failing,))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
        self.app.close()


def _pages(prom: Prom) -> list[dict[str, Any]]:
    return [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"
            and a["labels"]["alertname"] == "CelerySLOErrorBudgetBurn" and a["labels"]["severity"] == "critical"]


def test_a_task_failing_every_time_pages_and_the_page_resolves_after_recovery(tmp_path: Path) -> None:
    exporter_port, prom_port = free_port(), free_port()
    config_file, rule_file = tmp_path / "my-alerts.yaml", tmp_path / "my.rules.yml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    assert generate(["rules", "--config", str(config_file), "--output", str(rule_file)]) == 0
    procs, prom = Processes(tmp_path), Prom(prom_port)
    producer: Producer | None = None
    try:
        with private_redis() as (broker, _, _):
            (tmp_path / "slo_e2e_tasks.py").write_text(TASKS_MODULE.format(broker=broker, queue=QUEUE))
            env = child_env(tmp_path)
            start_exporter(procs, broker, exporter_port, env)
            start_worker(procs, "slo1", "slo_e2e_tasks", QUEUE, tmp_path, env)
            start_prometheus(procs, tmp_path, write_prometheus_config(tmp_path, rule_file, exporter_port, None),
                             prom_port)

            def value(expr: str) -> float:
                procs.check_alive()
                return prom.value(expr)

            wait_for(lambda: value('celery_workers{state="up"}') >= 1, 60, every=0.5, what="the worker, seen "
                     "through Prometheus", errors=NOT_UP, context=procs.logs)
            producer = Producer(broker)
            producer.start()
            healthy = f'slo:celery_task_events:increase30s{{slo="{SLO}"}}'
            wait_for(lambda: value(healthy) >= 20, 60, every=0.5, what="30 s of healthy traffic recorded",
                     errors=NOT_UP, context=lambda: prom.rule_errors() + procs.logs("exporter"))
            assert value(f'slo:celery_task_errors:ratio_rate30s{{slo="{SLO}"}}') == 0
            assert not _pages(prom)

            producer.failing = True
            started = time.monotonic()
            pages = wait_for(lambda: _pages(prom), 60, every=0.5, what="the fast-burn page", errors=NOT_UP,
                             context=lambda: prom.rule_errors() + str(prom.api("alerts")))
            assert time.monotonic() - started < 30  # 5 s of failures cross the 30 s window's 14.4%
            (page,) = pages  # one page: one exporter, one SLO, one pair of windows
            assert page["labels"]["slo"] == SLO and page["labels"]["long_window"] == "30s"
            assert page["labels"]["cluster"] == "e2e" and "instance" not in page["labels"]
            assert "budget is gone" in page["annotations"]["summary"]
            assert value(f'slo:celery_error_budget_remaining:ratio{{slo="{SLO}"}}') < 1

            producer.failing = False
            wait_for(lambda: not _pages(prom), 60, every=0.5, what="the page resolved after recovery",
                     errors=NOT_UP, context=lambda: str(prom.api("alerts")))
            # Resolved because the runs succeed again, not because traffic stopped: the short window's error
            # ratio falls to 0 while events keep coming.
            wait_for(lambda: value(f'slo:celery_task_errors:ratio_rate5s{{slo="{SLO}"}}') == 0, 30, every=0.5,
                     what="the short window clean again", errors=NOT_UP)
            assert value(healthy) >= 20
            for group in prom.api("rules")["groups"]:
                for rule in group["rules"]:
                    assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    finally:
        if producer is not None:
            producer.stop()
        procs.stop()


@pytest.mark.skipif(ALERTMANAGER is None, reason="needs prometheus-alertmanager (Debian package)")
def test_an_ha_pair_sends_one_page_and_the_slo_page_holds_back_its_ticket(tmp_path: Path) -> None:
    ports, prom_port, am_port = (free_port(), free_port()), free_port(), free_port()
    config_file, rule_file = tmp_path / "my-alerts.yaml", tmp_path / "my.rules.yml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    assert generate(["rules", "--config", str(config_file), "--output", str(rule_file)]) == 0
    procs, prom = Processes(tmp_path), Prom(prom_port)
    producer: Producer | None = None
    try:
        with private_redis() as (broker, _, _), webhook() as (hook_port, received):
            (tmp_path / "slo_e2e_tasks.py").write_text(TASKS_MODULE.format(broker=broker, queue=QUEUE))
            env = child_env(tmp_path)
            for i, port in enumerate(ports):
                start_exporter(procs, broker, port, env, name=f"exporter{i}")
            start_worker(procs, "slo1", "slo_e2e_tasks", QUEUE, tmp_path, env)
            start_alertmanager(procs, tmp_path, _alertmanager_config(tmp_path, hook_port), am_port)
            prom_config = write_prometheus_config(tmp_path, rule_file, ports[0], am_port)
            scrape = yaml.safe_load(prom_config.read_text())
            scrape["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{p}" for p in ports]
            prom_config.write_text(yaml.safe_dump(scrape))
            start_prometheus(procs, tmp_path, prom_config, prom_port)

            def value(expr: str) -> float:
                procs.check_alive()
                return prom.value(expr)

            wait_for(lambda: value('count(celery_workers{state="up"} >= 1)') == 2, 60, every=0.5,
                     what="both replicas seeing the worker", errors=NOT_UP, context=procs.logs)
            producer = Producer(broker)
            producer.start()
            wait_for(lambda: value(f'slo:celery_task_events:increase30s{{slo="{SLO}"}}') >= 20, 60, every=0.5,
                     what="30 s of healthy traffic recorded", errors=NOT_UP)
            producer.failing = True
            wait_for(lambda: [n for n in received if n["path"] == "/pager"], 60, every=0.5,
                     what="the page at the webhook", errors=NOT_UP, context=lambda: str(prom.api("alerts")))
            # The 2m/15s ticket (1x) fires too; Alertmanager holds it back behind the SLO's page.
            wait_for(lambda: [a for a in _am_alerts(am_port, "CelerySLOErrorBudgetBurn")
                              if a["labels"]["severity"] == "warning" and a["status"]["inhibitedBy"]],
                     30, every=0.5, what="the SLO ticket inhibited by its page", errors=NOT_UP,
                     context=lambda: str(prom.api("alerts")))
            time.sleep(4)  # several group intervals: anything else would have been sent by now
            sent = [(n["path"], a["labels"]["alertname"], a["labels"]["severity"], a["status"])
                    for n in received for a in n["alerts"]]
            assert sent == [("/pager", "CelerySLOErrorBudgetBurn", "critical", "firing")], sent
            (alert,) = received[0]["alerts"]
            assert alert["labels"]["slo"] == SLO and "instance" not in alert["labels"]
    finally:
        if producer is not None:
            producer.stop()
        procs.stop()

