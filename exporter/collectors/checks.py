"""``celery_exporter_check_status{check}``: the verdict of each diagnosis check (``exporter.diagnosis``),
so a dashboard row and an info-level alert can show a misconfigured cluster.

The checks run from a snapshot at most every few seconds (``Diagnoser``'s cache) and never touch a
broker, so a scrape stays cheap; ``check`` takes one value per check the exporter knows (bounded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.diagnosis.model import Result

CHECK_SPEC = MetricSpec(
    "celery_exporter_check_status", "gauge",
    "Verdict of each diagnosis check (see docs/troubleshooting.md and the page at /): 0 ok, 1 warning, "
    "2 problem, -1 not yet known.", ("check",),
)

METRICS = (CHECK_SPEC,)


def check_families(results: Sequence[Result]) -> Iterator[Metric]:
    """Pure: the gauge for one set of results."""
    family = CHECK_SPEC.family()
    for result in results:
        family.add((result.check,), float(result.status.value))
    yield family


class CheckCollector(SpecCollector):
    """Serves the cached verdicts of the diagnosis checks."""

    METRICS = METRICS

    def __init__(self, results: Callable[[], Sequence[Result]] | None) -> None:
        self._results = results

    @classmethod
    def from_sources(cls, sources: Sources) -> CheckCollector:
        return cls(sources.diagnosis)

    def collect(self) -> Iterator[Metric]:
        if self._results is not None:
            yield from check_families(self._results())
