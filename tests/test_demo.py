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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.collectors import all_specs
from exporter.demo import tasks as demo_tasks
from exporter.demo.broker import MemoryLists, MemoryPoller
from tests._demo_helpers import READY_WITHIN, interrupt_group, metric, wait_for_outcomes
from tests._support import free_port

ROOT = Path(__file__).resolve().parent.parent


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("celery-exporter")
    if script.exists():  # installed (pip install . / -e .): the README's own command
        return [str(script), "demo"]
    return [sys.executable, "-m", "exporter", "demo"]


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
    interrupt_group(proc, log)


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

    from exporter.doctor import PARSER
    from exporter.options import OPTIONS

    flags = {o.flag for o in OPTIONS} | {"--config", "--version"} | DEMO_FLAGS | FOREIGN_FLAGS
    flags |= set(re.findall(r"--[a-z-]+[a-z]", PARSER.format_help()))  # celery-exporter doctor's own
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
