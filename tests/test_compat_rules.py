"""alerts/compat/danihodovic.rules.yml in a real Prometheus scraping this exporter while real Celery workers
run tasks (succeed, fail, retry), on Redis and on RabbitMQ: every series the shim maps from this exporter
exists under danihodovic/celery-exporter's metric and label names, with its label set, the value of the
series it came from, and no rule reading back its own output.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests._broker_helpers import RedisServer, amqp_url, management_available, rabbit_vhost
from tests._prom_helpers import (
    PROMETHEUS,
    PROMTOOL,
    ROOT,
    Processes,
    iter_rules,
    load_rules,
)
from tests._support import celery_worker, free_port, wait_for

SHIM = ROOT / "alerts" / "compat" / "danihodovic.rules.yml"
RECORDED = [r["record"] for r in iter_rules(load_rules(SHIM))]
QUEUE = "compat"
TASK_LABELS = {"job", "instance", "name", "queue_name", "hostname"}
# What each broker lets the exporter see: consumers per queue only on RabbitMQ (Redis does not know).
RABBIT_ONLY = {"celery_active_consumer_count", "celery_active_worker_count"}
EXPECTED = {"redis": set(RECORDED) - RABBIT_ONLY, "rabbitmq": set(RECORDED)}

TASKS_MODULE = '''
from celery import Celery

app = Celery("compat", broker="{broker}")
app.conf.update(task_default_queue="{queue}", worker_send_task_events=True, task_send_sent_event=True,
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="compat.ok")
def ok(x):
    return x

@app.task(name="compat.fail")
def fail():
    raise ValueError("bad input")

@app.task(name="compat.flaky", bind=True, max_retries=1)
def flaky(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.2, exc=ConnectionError("upstream down"))
    return "ok"
'''


def test_the_shim_is_valid_and_records_only_its_names() -> None:
    assert len(RECORDED) == len(set(RECORDED)) == 19
    assert set().union(*EXPECTED.values()) == set(RECORDED)  # the e2e runs below cover every rule
    for rule in iter_rules(load_rules(SHIM)):
        assert "alert" not in rule and rule["record"].startswith("celery_")
    if PROMTOOL:
        import subprocess

        out = subprocess.run([PROMTOOL, "check", "rules", str(SHIM)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        if request.param == "redis":
            if not shutil.which("redis-server"):
                pytest.skip("no redis-server")
            server = stack.enter_context(RedisServer().start())
            yield "redis", server.url()
        else:
            if not management_available():
                pytest.skip("no RabbitMQ with its management API on 127.0.0.1")
            yield "rabbitmq", amqp_url(stack.enter_context(rabbit_vhost("compat-shim")))


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.base}/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def compat_series(prom: Prom) -> dict[str, list[dict[str, str]]]:
    """The shim's series by name: those carrying its labels, not this exporter's raw ones."""
    out: dict[str, list[dict[str, str]]] = {}
    for name in RECORDED:
        own = "name" if name.startswith("celery_task_") else "hostname" if name.startswith("celery_worker_") \
            else "queue_name"
        out[name] = [s["metric"] for s in prom.query(f'{name}{{{own}!=""}}')]
    return {k: v for k, v in out.items() if v}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="needs /usr/bin/prometheus (Debian package)")
def test_every_mapped_series_exists_in_real_prometheus(tmp_path: Path, broker: tuple[str, str]) -> None:
    kind, url = broker
    exporter_port, prom_port = free_port(), free_port()
    (tmp_path / "compat_tasks.py").write_text(TASKS_MODULE.format(broker=url, queue=QUEUE))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(SHIM)],
        "scrape_configs": [{"job_name": "celery-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    procs = Processes(tmp_path)
    prom = Prom(prom_port)
    deadline = time.monotonic() + 90
    try:
        procs.start("exporter", [sys.executable, "-m", "exporter", "--broker-url", url, "--listen-address",
                                 "127.0.0.1", "--port", str(exporter_port), "--poll-interval", "1",
                                 "--queues", QUEUE, "--default-queue", QUEUE, "--log.level", "warning"],
                    cwd=ROOT, env={**os.environ, **env})
        procs.start("prometheus", [PROMETHEUS or "", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        with celery_worker("compat_tasks", QUEUE, "compat1@%h", env, tmp_path, pool="solo", concurrency=1):
            wait_for(lambda: prom.query('celery_worker_up{worker!=""} == 1'), deadline - time.monotonic(),
                     what="the worker through Prometheus", context=procs.logs,
                     errors=(OSError, ValueError, KeyError, AssertionError))
            from celery import Celery

            producer = Celery("compat-producer", broker=url)
            producer.conf.update(task_default_queue=QUEUE, task_send_sent_event=True)
            for i in range(3):
                producer.send_task("compat.ok", args=(i,))
            producer.send_task("compat.fail")
            producer.send_task("compat.flaky")
            producer.close()

            def all_there() -> dict[str, list[dict[str, str]]] | None:
                procs.check_alive()
                found = compat_series(prom)
                return found if set(found) >= EXPECTED[kind] else None

            found = wait_for(all_there, deadline - time.monotonic(), what="every mapped series", every=1.0,
                             errors=(OSError, ValueError, KeyError),
                             context=lambda: f"missing {sorted(EXPECTED[kind] - set(compat_series(prom)))}\n"
                             + procs.logs())
            time.sleep(3)  # a few more evaluations: a rule reading back its own output would show now
            found = compat_series(prom)
            # Same numbers as the series they come from (sums: a rule's output and a scrape may be a
            # second apart, so compare once the traffic has settled).
            for ours, theirs in [('celery_task_succeeded_total{task_name="compat.ok"}',
                                  'celery_task_succeeded_total{name="compat.ok"}'),
                                 ('celery_task_retried_total{task_name="compat.flaky"}',
                                  'celery_task_retried_total{name="compat.flaky"}'),
                                 (f'celery_queue_length{{queue="{QUEUE}"}}',
                                  f'celery_queue_length{{queue_name="{QUEUE}"}}')]:
                # The rule is evaluated a moment after the scrape it reads: equal within a few
                # evaluations (the flaky task's retries and the queue may still be moving).
                def same(ours: str = ours, theirs: str = theirs) -> bool:
                    a, b = prom.query(f"sum({ours})"), prom.query(f"sum({theirs})")
                    return bool(a and b and a[0]["value"][1] == b[0]["value"][1])

                wait_for(same, 15, every=0.5, what=f"{theirs} equal to {ours}",
                         context=lambda ours=ours, theirs=theirs: f"{prom.query(ours)} {prom.query(theirs)}")
    finally:
        procs.stop()
    assert set(found) == EXPECTED[kind]
    for name, series in found.items():
        for labels in series:
            keys = set(labels) - {"__name__"}
            if name.startswith("celery_task_"):
                # exception="" (the zero series both exporters create) is stored without the label
                extra = {"le"} if name.endswith("_bucket") else {"exception"} & keys
                if extra == {"exception"}:
                    assert name == "celery_task_failed_total", labels
                assert keys == TASK_LABELS | extra, (name, labels)
                assert labels["hostname"] == "generic" and labels["queue_name"] == QUEUE, labels
                assert labels["name"].startswith("compat."), labels
            elif name.startswith("celery_worker_"):
                assert keys == {"job", "instance", "hostname"} and "@" not in labels["hostname"], labels
            else:
                assert keys == {"job", "instance", "queue_name"}, labels
    names = {(n, s["name"]) for n, series in found.items() for s in series if "name" in s}
    assert {("celery_task_succeeded_total", "compat.ok"), ("celery_task_failed_total", "compat.fail"),
            ("celery_task_retried_total", "compat.flaky")} <= names


MIGRATING = ROOT / "docs" / "migrating.md"


def test_migrating_doc_names_only_real_flags_metrics_and_every_compat_rule() -> None:
    """The right-hand column of docs/migrating.md: flags, env vars and metrics of this exporter exist; every
    name the shim records is in the metric table."""
    import re

    from exporter.collectors import all_specs
    from exporter.options import OPTIONS

    text = MIGRATING.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")]
    flags = {f for o in OPTIONS for f in o.all_flags} | {"--config"}
    envs = {o.env for o in OPTIONS}
    ours_metrics = {s.name for s in all_specs()}
    checked = 0
    for cells in rows:
        theirs, ours = cells[0], " ".join(cells[2:])
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*", ours):
            assert flag in flags, f"migrating.md maps {theirs.strip()} to {flag}, not a flag of ours"
            checked += 1
        for env in re.findall(r"\bCELERY_EXPORTER_[A-Z_]+", ours):
            assert env in envs, f"migrating.md names {env}, not an env var of ours"
            checked += 1
        if theirs.strip().startswith("`celery_"):
            for name in re.findall(r"`(celery_[a-z_]+)", cells[2]):
                assert name in ours_metrics, f"migrating.md names {name}, not a metric of ours"
                checked += 1
    table = {m.split("`")[1] for m in text.splitlines() if m.startswith("| `celery_")}
    for name in RECORDED:
        base = re.sub(r"_(bucket|sum|count)$", "", name) if "runtime" in name or "wait_time" in name else name
        assert base in table, f"{name} is recorded by the shim but not in the migrating.md table"
    assert checked > 30
