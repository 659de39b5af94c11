"""Drive tests/_deliveries_app.py on a real broker with real prefork workers: one main worker, one victim
worker that is SIGKILLed mid-task, and every ending of issue 12 (Reject through a DLX ladder, hard and
soft time limits, Ignore, retries with jitter, a pool child killed, revoke with terminate, an expired
task). Used by tests/test_deliveries_e2e.py and by tools/capture_deliveries.py (which records the events
into tests/testdata/events/)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests._support import celery_worker

ROOT = Path(__file__).resolve().parent.parent
APP = "tests._deliveries_app"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def sigkill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its pool children (by pid: no worker-offline, no task events)."""
    pids = [proc.pid, *_children(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _client(broker: str, truth: Path, code: str) -> None:
    env = {**os.environ, "DELIVERIES_BROKER": broker, "DELIVERIES_DIR": str(truth)}
    subprocess.run([sys.executable, "-c", f"from tests._deliveries_app import *\n{code}"], cwd=ROOT, env=env,
                   check=True, timeout=60)


@contextlib.contextmanager
def workers(broker: str, truth: Path, tag: str) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """The main worker (4 processes) and the victim worker (1 process); their node names and the
    victim's process."""
    env = {"DELIVERIES_BROKER": broker, "DELIVERIES_DIR": str(truth)}
    main, victim = f"deliveries-{tag}@localhost", f"victim-{tag}@localhost"
    with celery_worker(APP, "deliveries", main, env, ROOT, concurrency=4), \
            celery_worker(APP, "deliveries-victim", victim, env, ROOT, concurrency=1) as vproc:
        yield main, victim, vproc


def send_plan(broker: str, truth: Path, ready: Callable[[], bool]) -> None:
    """Send every task of the plan once both workers are ``ready``; revoke ``sleep`` with terminate once
    it has started (after 2 s); an already-expired task."""
    wait(ready, 90, "both workers online")
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    _client(broker, truth, (
        # The ladder's delay queue has no consumer, so no worker declares it: declare every queue here.
        "with app.connection_for_write() as conn:\n"
        "    for q in app.conf.task_queues: q.bind(conn).declare()\n"
        "reject.delay(); hard_limit.delay(); soft_limit.delay(); ignore.delay()\n"
        "jitter.delay(); jitter.delay(); child_killed.delay(); victim.delay()\n"
        f"sleep.apply_async((30,), expires={past!r})\n"
        "r = sleep.delay(30)\n"
        "import time; time.sleep(3)\n"
        "app.control.revoke(r.id, terminate=True)\n"
    ))


def kill_victim(truth: Path, vproc: subprocess.Popen[bytes]) -> None:
    wait(lambda: (truth / "victim.started").exists(), 60, "the victim task to start")
    time.sleep(0.5)  # let its task-started leave the worker
    sigkill_tree(vproc)


def expected(rabbitmq: bool) -> dict[str, dict[str, float]]:
    """Ground truth per task name: metric -> value (labels beyond task_name/queue inside the name)."""
    deliveries = 3 if rabbitmq else 1  # the ladder brings a rejected message back; Redis drops it
    return {
        "deliveries.reject": {"received": deliveries, "started": deliveries,
                              "failed:Reject": deliveries - 1 if rabbitmq else 1,
                              "rejected": deliveries - 1 if rabbitmq else 1,
                              "succeeded": 1 if rabbitmq else 0, "active": 0, "lost": 0},
        "deliveries.hard_limit": {"started": 1, "failed:TimeLimitExceeded": 1, "active": 0, "lost": 0},
        "deliveries.soft_limit": {"started": 1, "failed:SoftTimeLimitExceeded": 1, "active": 0, "lost": 0},
        "deliveries.ignore": {"started": 1, "succeeded": 0, "active": 0, "lost": 1},
        "deliveries.jitter": {"sent": 6, "started": 6, "retried:ConnectionError": 4, "succeeded": 2,
                              "duration:retried": 4, "duration:succeeded": 2, "active": 0},
        "deliveries.child_killed": {"started": 1, "failed:WorkerLostError": 1, "active": 0},
        "deliveries.sleep": {"sent": 2, "revoked:terminated": 1, "revoked:expired": 1, "active": 0},
        "deliveries.victim": {"started": 1, "active": 0, "lost": 1},
    }
