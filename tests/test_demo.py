"""``celery-exporter demo``: run it as a user would (the installed console script, else ``python -m
exporter demo``), read its /metrics until every outcome of the sample tasks shows up, then Ctrl-C it.

Also the in-process pieces the memory broker relies on (``MemoryLists``, ``MemoryPoller``), tested
directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors import all_specs
from exporter.demo import tasks as demo_tasks
from exporter.demo.broker import MemoryLists, MemoryPoller
from tests._support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
READY_WITHIN = 60.0  # the DLQ needs 3 jittered retries (at most 1 + 2 + 4 s) plus a poll
STOP_WITHIN = 5.0
SPECS = {s.name: s for s in all_specs()}


def metric(name: str) -> str:
    """A sample name of the public contract; fails here, not later, if the contract renames it."""
    assert name in SPECS, f"{name} is not a metric of exporter.collectors.all_specs()"
    return name


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("celery-exporter")
    if script.exists():  # installed (pip install . / -e .): the README's own command
        return [str(script), "demo"]
    return [sys.executable, "-m", "exporter", "demo"]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def expectations(samples: dict) -> dict[str, bool]:
    dlq = demo_tasks.DLQ_KEY
    return {
        "send_email succeeded": total(samples, metric("celery_task_succeeded_total"),
                                      task_name=demo_tasks.SEND_EMAIL, queue="email") > 0,
        "parse_invoice failed with ValueError": total(
            samples, metric("celery_task_failed_total"), task_name=demo_tasks.PARSE_INVOICE,
            exception="ValueError") > 0,
        "call_external_api retried": total(samples, metric("celery_task_retried_total"),
                                           task_name=demo_tasks.CALL_API) > 0,
        "important_task retried": total(samples, metric("celery_task_retried_total"),
                                        task_name=demo_tasks.IMPORTANT) > 0,
        "important_task exhausted its retries": total(
            samples, metric("celery_task_retries_exhausted_total"), task_name=demo_tasks.IMPORTANT) > 0,
        "DLQ not empty": total(samples, metric("celery_dead_letter_queue_length"), queue=dlq) > 0,
        "worker up": total(samples, metric("celery_worker_up")) >= 1,
        "queue depth polled": (metric("celery_queue_length"), (("queue", "default"),)) in samples,
    }


@pytest.fixture
def run_demo(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(*args: str, port: int | None = None) -> tuple[subprocess.Popen, int, Path]:
        port = port or free_port()
        log = tmp_path / f"demo-{port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            proc = subprocess.Popen([*demo_command(), "--port", str(port), "--log-format", "json", *args],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(proc)
        return proc, port, log

    yield start
    for proc in procs:  # never leave a demo (or its redis-server) behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for_outcomes(proc: subprocess.Popen, port: int, log: Path) -> dict:
    met: dict[str, bool] = {}

    def outcomes() -> dict | None:
        assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n{log.read_text()}"
        samples = scrape(port)  # OSError until the demo listens: "not yet"
        met.clear()
        met.update(expectations(samples))
        return samples if all(met.values()) else None

    def missing() -> str:
        names = [k for k, ok in met.items() if not ok] or ["/metrics never answered"]
        return f"still missing: {names}\n{log.read_text()[-4000:]}"

    return wait_for(outcomes, READY_WITHIN, every=0.5, what="every outcome of the demo", errors=(OSError,),
                    context=missing)


def interrupt(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        rc = proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo did not stop within {STOP_WITHIN:g}s of SIGINT\n{log.read_text()[-4000:]}")
    assert rc == 0, log.read_text()[-4000:]


BROKERS = [
    pytest.param("redis", "private redis-server", marks=pytest.mark.skipif(
        not shutil.which("redis-server"), reason="no redis-server on PATH")),
    pytest.param("memory", "in-memory transport"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("broker", "announced"), BROKERS)
def test_demo_serves_every_outcome_then_stops_on_ctrl_c(run_demo, broker: str, announced: str) -> None:
    proc, port, log = run_demo("--broker", broker)
    samples = wait_for_outcomes(proc, port, log)
    text = log.read_text()
    assert announced in text and f"http://localhost:{port}/metrics" in text
    # Dead letters hold seed 002's entry, whose timestamp gives the oldest-age gauge.
    age = (metric("celery_dead_letter_queue_oldest_message_age_seconds"), (("queue", demo_tasks.DLQ_KEY),))
    assert 0 <= samples[age] < READY_WITHIN + 5
    interrupt(proc, log)


@pytest.mark.integration
def test_demo_exits_1_when_the_port_is_taken(run_demo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, _, log = run_demo("--broker", "memory", port=port)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo kept running on a taken port\n{log.read_text()}")
    assert rc == 1
    assert "--port" in log.read_text()


def test_memory_poller_reports_queue_depths_and_dead_letters() -> None:
    from kombu import Connection

    lists = MemoryLists(max_len=3)
    entry = {"task_name": demo_tasks.IMPORTANT, "timestamp": datetime(2030, 1, 2, tzinfo=UTC).isoformat()}
    lists.lpush(demo_tasks.DLQ_KEY, json.dumps(entry))
    for i in range(4):  # the cap drops the oldest entries, as LTRIM would
        lists.lpush(demo_tasks.DLQ_KEY, json.dumps({"timestamp": 1_900_000_000 + i}))
    queue = "test-demo-memory-poller"
    with Connection("memory://") as conn:
        q = conn.SimpleQueue(queue)
        q.put({"n": 1})
        q.put({"n": 2})
        result = MemoryPoller(lists, lambda: [queue, "absent-queue"], "timestamp").poll(time.monotonic() + 1)
        q.clear()
        q.close()
    assert result.queues[queue].ready == 2
    assert result.queues["absent-queue"].ready == 0
    assert result.dead_letter == {demo_tasks.DLQ_KEY: 3}
    assert result.dead_letter_oldest == {demo_tasks.DLQ_KEY: 1_900_000_001}


def test_demo_rejects_bad_arguments() -> None:
    from exporter.demo.run import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--port", "70000"])
    assert exc.value.code == 2
    assert parse_args([]).port == 9808


# ---------------------------------------------------------------- the newcomer docs name only what exists
DOCS = [ROOT / "docs" / "troubleshooting.md", ROOT / "docs" / "quickstart.md"]
# Flags of other programs the docs quote (Celery's worker, redis-cli) and the demo's own.
FOREIGN_FLAGS = {"--without-heartbeat", "--scan", "--pattern"}
DEMO_FLAGS = {"--port", "--broker", "--rate", "--listen-address", "--log-level", "--log-format"}


def test_docs_name_only_real_flags_and_metrics() -> None:
    import re

    from exporter.config import OPTIONS

    flags = {o.flag for o in OPTIONS} | {"--config", "--version"} | DEMO_FLAGS | FOREIGN_FLAGS
    samples = {n for s in all_specs() for n in s.sample_names}
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)):
            assert flag in flags, f"{doc.name} names {flag}, which is not a flag"
            checked += 1
        for name in set(re.findall(r"\bcelery_[a-z_]*[a-z_]", text)):
            if name.endswith("_"):  # a prefix, as in `celery_task_*` or a grep pattern
                assert any(s.startswith(name) for s in samples), f"{doc.name}: no metric starts {name}"
            else:
                assert name in samples, f"{doc.name} names {name}, which is not a metric"
            checked += 1
    assert checked > 40  # the docs are about these names; an empty match means the regexes broke
