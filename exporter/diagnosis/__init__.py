"""The diagnosis: named checks computed from what the exporter has seen (``CHECKS``), and ``Diagnoser``,
which builds the evidence and runs them at most every ``min_interval`` seconds, so the status page, the
``celery_exporter_check_status`` gauge and ``celery-exporter doctor`` all read one cached answer and a
scrape never pays for more than a copy.

"Accepts tasks without sending task events" is about tasks accepted *while watched*, not since the
worker started: the workers room keeps each worker's baseline (``WorkerRecord.base_processed``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from exporter.diagnosis import broker_checks, event_checks
from exporter.diagnosis.evidence import DiagnosisSettings, Evidence, build_evidence
from exporter.diagnosis.model import ORDER, Result, Status, worst
from exporter.state.snapshot import Snapshot

__all__ = ["CHECKS", "ORDER", "Diagnoser", "DiagnosisSettings", "Evidence", "Result", "Status", "worst"]

CHECKS: tuple[Callable[[Evidence], Result], ...] = (
    event_checks.event_stream,
    event_checks.worker_events,
    event_checks.task_events,
    event_checks.task_sent_events,
    event_checks.clock_skew,
    event_checks.events_missed,
    broker_checks.queue_keys,
    broker_checks.transport_options,
    broker_checks.management_api,
    broker_checks.dead_letter_routes,
    broker_checks.caps,
)
CHECK_NAMES: tuple[str, ...] = tuple(c.__name__ for c in CHECKS)


def run_checks(evidence: Evidence) -> list[Result]:
    """Every check on one piece of evidence; a check that raises is reported unknown, never raised."""
    out = []
    for check in CHECKS:
        try:
            out.append(check(evidence))
        except Exception as exc:  # a bug in one check must not hide the others, nor fail a scrape
            out.append(Result(check.__name__, Status.UNKNOWN, f"The check failed: {type(exc).__name__}."))
    return out


class Diagnoser:
    """Evidence from a snapshot source, the pollers' views and the stream status, checked and cached."""

    def __init__(self, snapshots: Callable[[], Snapshot], views: Callable[[], Sequence[Any]], status: Any,
                 settings: DiagnosisSettings, min_interval: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.snapshots, self.views, self.status = snapshots, views, status
        self.settings = settings
        self.min_interval = min_interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, Evidence, list[Result]] | None = None

    def evidence(self) -> Evidence:
        return build_evidence(self.snapshots(), self.views(), self.status, self.settings)

    def check(self, force: bool = False) -> tuple[Evidence, list[Result]]:
        """The evidence and the results, recomputed when older than ``min_interval`` (or ``force``)."""
        with self._lock:
            now = self.monotonic()
            if force or self._cached is None or now - self._cached[0] >= self.min_interval:
                ev = self.evidence()
                self._cached = (now, ev, run_checks(ev))
            return self._cached[1], self._cached[2]

    def results(self) -> list[Result]:
        return self.check()[1]
