"""Metric specifications and the helpers every collector uses to build fresh families.

Every metric the exporter can serve is declared once, as a ``MetricSpec`` in the ``METRICS`` tuple of
the collector module that produces it. The README table, ``docs/metrics.md``, the alert rules, the
dashboards and the Kubernetes autoscaling manifests are all checked against these declarations by tests,
so a metric name lives in exactly one place in the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import Metric

from exporter.exposition import TableFamily

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the public contract: its exposed name, type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family_name(self) -> str:
        # client_python appends ``_total`` to counter samples itself.
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    @property
    def sample_names(self) -> tuple[str, ...]:
        """Names of the samples Prometheus stores for this metric (what PromQL can reference)."""
        if self.kind == "counter":
            return (self.name, self.family_name + "_created")
        if self.kind == "histogram":
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count", self.name)
        return (self.name,)

    def family(self, bounds: Sequence[float] = ()) -> TableFamily:
        """A new, empty metric family for this spec (``bounds``: a histogram's bucket upper bounds)."""
        return TableFamily(self.family_name, self.help, self.kind, self.labels, bounds)


def add_samples(family: Metric, rows: Iterable[tuple[Sequence[str], float]]) -> Metric:
    """Add ``(label values, value)`` rows to a counter or gauge family and return it."""
    for labels, value in rows:
        if isinstance(family, TableFamily):
            family.add(tuple(labels), value)
        else:
            family.add_metric(list(labels), value)  # type: ignore[attr-defined]
    return family
