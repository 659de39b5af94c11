"""Real clusters for the doctor and status-page tests: a Celery worker (``tests/_doctor_app.py``) started
the way a user would start it, a producer sending a few tasks, and ``celery-exporter doctor`` run as a
user runs it, its JSON report parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests._support import ROOT, terminated_on_exit

TESTS = ROOT / "tests"


@contextmanager
def worker(env: dict[str, str], name: str, events: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A _doctor_app worker`` (``-E`` unless ``events`` is False), solo pool, queue celery."""
    argv = [sys.executable, "-m", "celery", "-A", "_doctor_app", "worker", "--pool=solo", "-n", name,
            "-Q", "celery", "--without-mingle", "--without-gossip", "-l", "warning"]
    if events:
        argv.insert(6, "-E")
    proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=TESTS,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with terminated_on_exit(proc, 20):
        yield proc


def send_tasks(env: dict[str, str], n: int = 4, names: tuple[str, ...] = ("doctor.add",)) -> None:
    """A producer process (``.delay()`` as an application would call it) sending ``n`` of each task."""
    code = ("import _doctor_app as a\n"
            f"for name in {list(names)!r}:\n"
            f"    for i in range({n}):\n"
            "        a.app.send_task(name, (i, 1))\n")
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "DOCTOR_CLOCK_SHIFT"}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=TESTS, check=True, timeout=30)


def start_doctor(args: list[str], duration: float) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_EXPORTER", "DOCTOR_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "doctor", "--duration", str(duration), "--output", "json", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_doctor(proc: subprocess.Popen[bytes], duration: float) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=duration + 30)
    text = err.decode("utf-8", "replace")
    try:
        report = json.loads(out)
    except ValueError as exc:
        raise AssertionError(f"doctor printed no JSON (exit {proc.returncode}): {out!r}\n{text}") from exc
    return proc.returncode, report, text


def run_doctor(args: list[str], app_env: dict[str, str], duration: float = 8.0,
               task_names: tuple[str, ...] = ("doctor.add",)) -> tuple[int, dict[str, Any], str]:
    """Doctor watching while a producer sends two batches of tasks (the second once the doctor has seen
    the worker's first heartbeat, so its processed count grows while watched)."""
    proc = start_doctor(args, duration)
    try:
        time.sleep(1.0)
        send_tasks(app_env, names=task_names)
        time.sleep(3.0)
        send_tasks(app_env, names=task_names)
        return finish_doctor(proc, duration)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in report["checks"]}


def assert_healthy(code: int, report: dict[str, Any], err: str) -> None:
    """Every check ok."""
    bad = {name: c for name, c in checks(report).items() if c["status"] != "ok"}
    assert not bad, json.dumps(bad, indent=1) + err
    assert code == 0, err


def assert_problem(code: int, report: dict[str, Any], err: str, check: str, fix_has: str) -> dict[str, Any]:
    """``check`` is a problem, its fix names ``fix_has``, and the doctor exits 1."""
    found = checks(report)[check]
    assert found["status"] == "problem", json.dumps(report, indent=1) + err
    assert fix_has in found["fix"], found
    assert code == 1, err
    return found
