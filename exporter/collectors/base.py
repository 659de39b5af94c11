"""Metric specifications, the base class of every collector, and the sources collectors read.

Every metric the exporter can serve is declared once, as a ``MetricSpec`` in the ``METRICS`` tuple of
the collector module that produces it. The README table, ``docs/metrics.md``, the alert rules, the
dashboards and the Kubernetes autoscaling manifests are all checked against these declarations by tests,
so a metric name lives in exactly one place in the code.

``SpecCollector.describe()`` answers from ``METRICS``, so ``CollectorRegistry.register`` knows each
collector's names without running a scrape and refuses two collectors that would serve the same name.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.exposition import TableFamily

if TYPE_CHECKING:
    from exporter.diagnosis.model import Result
    from exporter.state import Snapshot
    from exporter.status import SourceView, StreamStatus

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


@dataclass(frozen=True)
class Sources:
    """What collectors read, as ``app.py`` wires it: each collector takes the parts it needs."""

    snapshot: Callable[[], Snapshot]  # one ClusterState snapshot, shared by the collectors of a scrape
    status: StreamStatus  # the event stream's connection state
    poll_views: Callable[[], Sequence[SourceView]]  # the pollers' last results
    clock: Callable[[], float]
    diagnosis: Callable[[], Sequence[Result]] | None = None  # the checks' cached verdicts


class SpecCollector(Collector):
    """A collector whose metric names are declared up front in ``METRICS``."""

    METRICS: ClassVar[tuple[MetricSpec, ...]] = ()

    @classmethod
    @abstractmethod
    def from_sources(cls, sources: Sources) -> Self:
        """The collector as the running exporter wires it (tests may call the constructor directly)."""

    def describe(self) -> Iterator[Metric]:
        # Empty families are enough: the registry only reads their names and types.
        for spec in self.METRICS:
            yield spec.family()
