"""Watching a running ``celery-exporter demo`` from outside, as a newcomer would with curl: what its
/metrics must show within a minute, and how it must stop on Ctrl-C (status 0, nothing left running).

Shared by tests/test_demo.py (the checkout's demo, each broker) and tests/test_readme_commands.py (the
README's literal command in a fresh virtualenv).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors import all_specs
from exporter.demo import tasks as demo_tasks

READY_WITHIN = 60.0  # the DLQ needs 3 jittered retries (at most 1 + 2 + 4 s) plus a poll
STOP_WITHIN = 10.0
SPECS = {s.name: s for s in all_specs()}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric(name: str) -> str:
    """A sample name of the public contract; fails here, not later, if the contract renames it."""
    assert name in SPECS, f"{name} is not a metric of exporter.collectors.all_specs()"
    return name


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def expectations(samples: Samples) -> dict[str, bool]:
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
        # The newsletter burst: the HPA's metric must move, not sit at 0.
        "email queue backed up": total(samples, metric("celery_queue_length"), queue="email") > 0,
    }


def wait_for_outcomes(proc: subprocess.Popen, port: int, log: Path) -> Samples:
    """Scrape until every expectation has held at some scrape (the backlog comes and goes); the last
    scrape's samples."""
    deadline = time.monotonic() + READY_WITHIN
    met: dict[str, bool] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            samples = scrape(port)
        except OSError:
            time.sleep(0.5)
            continue
        met = {k: met.get(k, False) or ok for k, ok in expectations(samples).items()}
        if all(met.values()):
            return samples
        time.sleep(0.5)
    missing = [k for k, ok in met.items() if not ok] or ["/metrics never answered"]
    pytest.fail(f"after {READY_WITHIN:g}s still missing: {missing}\n{log.read_text()[-4000:]}")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children in other sessions included, as redis-server is)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def interrupt_group(proc: subprocess.Popen, log: Path) -> None:
    """Ctrl-C as a terminal sends it, to the whole foreground process group; then status 0 within
    STOP_WITHIN seconds and no process of the demo left running."""
    below = descendants(proc.pid)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rc = proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo did not stop within {STOP_WITHIN:g}s of SIGINT\n{log.read_text()[-4000:]}")
    assert rc == 0, f"exit status {rc}\n{log.read_text()[-4000:]}"
    while time.monotonic() - started < STOP_WITHIN and any(alive(p) for p in below):
        time.sleep(0.1)
    left = sorted(p for p in below if alive(p))
    assert not left, f"still running after the demo exited: {left}"
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nobody left in the process group either
