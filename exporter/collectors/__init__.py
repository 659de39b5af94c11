"""Collectors: one module per source of metrics, each declaring its ``METRICS`` and a collector class.

``COLLECTORS`` is the one list of them: ``app.py`` registers ``build_collectors(sources)`` and the docs
generator lists ``all_specs()``, both in this order, so adding a source is one module and one line here.
Each collector's ``describe()`` answers from its ``METRICS``, so registering two collectors that declare
the same name fails when the exporter starts, not in a scrape.
"""

from __future__ import annotations

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.collectors.checks import CheckCollector
from exporter.collectors.queues import QueueCollector
from exporter.collectors.render import RenderErrorsCollector
from exporter.collectors.stalls import StallCollector
from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector

__all__ = ["COLLECTORS", "MetricSpec", "Sources", "SpecCollector", "all_specs", "build_collectors"]

COLLECTORS: tuple[type[SpecCollector], ...] = (
    TaskCollector, StallCollector, WorkerCollector, StreamCollector, QueueCollector, RenderErrorsCollector,
    CheckCollector,
)


def build_collectors(sources: Sources) -> list[SpecCollector]:
    """One instance of every collector, reading ``sources``."""
    return [collector.from_sources(sources) for collector in COLLECTORS]


def all_specs() -> tuple[MetricSpec, ...]:
    """Every metric the exporter can serve, in collector order then declaration order."""
    return tuple(spec for collector in COLLECTORS for spec in collector.METRICS)
