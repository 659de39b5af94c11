"""The renderer's self-metric: metric families left out of a scrape because they could not be rendered.

The counts live in ``exporter.exposition.RENDER_ERRORS`` (the renderer is where failures happen); this
collector only serves them, so the metric is declared here with the others and documented with them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.exposition import RENDER_ERRORS

RENDER_ERRORS_SPEC = MetricSpec(
    "celery_exporter_render_errors_total", "counter",
    "Metric families left out of a scrape because rendering them failed (every other family was still "
    'served), by family name ("collect": a collector raised, so later collectors were missed).',
    ("family",),
)

METRICS = (RENDER_ERRORS_SPEC,)


class RenderErrorsCollector(SpecCollector):
    """Serves the renderer's per-family error counts (process-wide, like the renderer)."""

    METRICS = METRICS

    @classmethod
    def from_sources(cls, sources: Sources) -> RenderErrorsCollector:
        return cls()

    def collect(self) -> Iterator[Metric]:
        fam = RENDER_ERRORS_SPEC.family()
        for family, count in sorted(RENDER_ERRORS.snapshot().items()):
            fam.add((family,), count)
        yield fam
