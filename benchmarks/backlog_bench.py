"""Benchmark: the stall signals under a backlog of 1,000,000 waiting tasks (issue 14).

    python benchmarks/backlog_bench.py                    # 1,000,000 tasks, default --max-tracked-tasks
    python benchmarks/backlog_bench.py --tasks 200000 --max-tracked-tasks 50000

Feeds the exporter's real ``ClusterState`` (default settings from ``exporter.config``) with Celery 5
``task-sent`` events of N tasks to one queue, a millisecond apart, none started: the backlog a queue
builds while its consumers are stopped. Then workers come back and start the tasks first in, first out,
and at checkpoints the scrape's ``celery_queue_oldest_task_age_seconds`` (through the real
``StallCollector``) is compared with the truth (now minus the sent time of the oldest task not yet
started). A long task started before the backlog must still be reported by
``celery_task_oldest_running_age_seconds`` at the end. Prints peak RSS (VmHWM), the state's tracked
counts, and per checkpoint the value, the truth and whether it is exact or a lower bound. Time is a fake
clock, so the figures do not depend on the machine's speed (only the feeding rate does). Exits 1 if the
value is ever above the truth, or not exact while one of the tracked (oldest) tasks still waits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from exporter.collectors.stalls import StallCollector
from exporter.config import state_settings
from exporter.state import ClusterState

T0 = 1_700_000_000.0
QUEUE = "backlog"
STEP = 0.001  # seconds between two task-sent events


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def event(type_: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "timestamp": ts, "hostname": "gen@producer", "utcoffset": 0, "pid": 1, "clock": 1,
            **fields}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(tasks: int, max_tracked: int) -> dict[str, Any]:
    clock = Clock()
    state = ClusterState(state_settings(max_tracked_tasks=max_tracked), clock)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StallCollector(state.take_snapshot, lambda: [], clock))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    state.apply(event("task-sent", T0, uuid="long", name="app.long", queue="long", retries=0, eta=None))
    state.apply(event("task-started", T0 + 0.5, uuid="long", hostname="w1@host"))
    started = time.perf_counter()
    for i in range(tasks):
        state.apply(event("task-sent", T0 + 1 + i * STEP, uuid=f"t{i:07d}", name="app.report", queue=QUEUE,
                          retries=0, eta=None))
    feed_s = time.perf_counter() - started
    clock.now = T0 + 1 + tasks * STEP + 60  # the consumers come back a minute after the last send
    checkpoints = sorted({0, max_tracked // 2, max_tracked - 1, max_tracked, min(tasks, max_tracked * 3 // 2)})
    rows, failed, done = [], False, 0
    for upto in checkpoints:
        for i in range(done, min(upto, tasks)):
            clock.now += STEP / 10
            state.apply(event("task-started", clock.now, uuid=f"t{i:07d}", hostname="w2@host"))
            state.apply(event("task-succeeded", clock.now, uuid=f"t{i:07d}", hostname="w2@host", runtime=0.0))
        done = max(done, min(upto, tasks))
        value = sample("celery_queue_oldest_task_age_seconds", queue=QUEUE) or 0.0
        truth = clock.now - (T0 + 1 + done * STEP) if done < tasks else 0.0
        tracked = done < min(tasks, max_tracked)  # one of the tracked (oldest) tasks still waits
        exact = abs(value - truth) < 1e-6
        failed |= value > truth + 1e-6 or (tracked and not exact)
        rows.append({"started": done, "value_s": round(value, 3), "truth_s": round(truth, 3),
                     "meaning": "exact" if exact else "lower bound"})
    running = sample("celery_task_oldest_running_age_seconds", task_name="app.long", queue="long")
    failed |= running is None
    snap = state.take_snapshot()
    return {"tasks": tasks, "max_tracked_tasks": max_tracked, "feed_events_per_s": round(tasks / feed_s),
            "peak_rss_mb": round(peak_rss_mb(), 1), "tracked_tasks": snap.tracked_tasks,
            "untracked": snap.stall_untracked, "long_task_running_age_s": running, "checkpoints": rows,
            "ok": not failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--max-tracked-tasks", type=int, default=100_000)
    args = ap.parse_args()
    out = run(args.tasks, args.max_tracked_tasks)
    print(f"{out['tasks']:,} waiting tasks, --max-tracked-tasks {out['max_tracked_tasks']:,}: peak RSS "
          f"{out['peak_rss_mb']} MB, {out['feed_events_per_s']:,} task-sent events/s, long task running "
          f"{out['long_task_running_age_s']} s")
    print(f"{'started':>9}  {'value s':>10}  {'truth s':>10}  meaning")
    for row in out["checkpoints"]:
        print(f"{row['started']:>9,}  {row['value_s']:>10.3f}  {row['truth_s']:>10.3f}  {row['meaning']}")
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
