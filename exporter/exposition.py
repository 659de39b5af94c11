"""Fast exposition for the exporter's own metric families.

client_python's ``generate_latest`` spends ~8 µs a sample on label sorting, validation and escaping; at
the scale target (200 task names, ~12,000 samples) that is over 100 ms a scrape, more while the event
loop holds the GIL. ``TableFamily`` keeps rows as plain tuples and renders each distinct label set's text
once (cached), so a scrape costs well under a microsecond a sample. Families from other collectors
(process metrics, pollers) are rendered by client_python itself, so the output is one valid document.

``TableFamily`` is still a ``prometheus_client`` ``Metric``: its ``samples`` are built lazily for code
that wants them (``CollectorRegistry.get_sample_value``, client_python's own encoders), and a test renders
the same registry both ways and compares the parsed results.

Each family is rendered and UTF-8 encoded on its own: a family that cannot be rendered (a label value
that is not encodable, a value of the wrong type, a malformed histogram row) is left out, counted in
``celery_exporter_render_errors_total{family}`` and logged at most once a minute per family, and every
other family is still served. A scrape therefore never fails as a whole because of one bad value.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as _text_latest
from prometheus_client.openmetrics.exposition import generate_latest as _om_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = structlog.get_logger("exporter.exposition")

# What the renderer implements, and so all that content negotiation may announce: the classic text
# format 0.0.4 and OpenMetrics 1.0.0, both with legacy metric names (no escaping parameter is needed,
# every name the exporter serves is a valid legacy name).
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_OPENMETRICS_VERSIONS = ("", "0.0.1", "1.0.0")  # what an OpenMetrics 1.0.0 answer satisfies


def negotiate(accept: str) -> str:
    """The Content-Type to answer ``accept`` with: OpenMetrics 1.0.0 when it is preferred to the text
    format, else text 0.0.4. Only variants the renderer implements are ever announced: OpenMetrics
    0.0.1 is answered as 1.0.0 (Prometheus parses both alike), any other OpenMetrics version is not
    taken as OpenMetrics, text 1.0.0 is answered as 0.0.4, and no ``escaping``
    parameter is sent because every name served is a legacy name (valid under any escaping scheme)."""
    best_om, best_text = -1.0, 0.0  # text 0.0.4 is the default for any client
    for position, item in enumerate(accept.split(",")[:32]):  # bounded: the header is client input
        media, *params = (p.strip() for p in item.split(";"))
        q, version = 1.0, ""
        for param in params:
            key, _, value = param.partition("=")
            key = key.strip().lower()
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key == "version":
                version = value.strip()
        tiebreak = q - position * 1e-6  # equal q: the earlier entry wins
        if media.lower() == "application/openmetrics-text":
            if version in _OPENMETRICS_VERSIONS:  # OpenMetrics 2.0 is not implemented: not offered
                best_om = max(best_om, tiebreak)
        elif media.lower() in ("text/plain", "*/*", "text/*"):
            best_text = max(best_text, tiebreak)
    return OPENMETRICS_CONTENT_TYPE if best_om > 0 and best_om >= best_text else TEXT_CONTENT_TYPE


_LABEL_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
_LABEL_CACHE_MAX = 200_000


def _escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``a="x",b="y"`` for one label set, cached: label sets repeat on every scrape."""
    key = (names, values)
    text = _LABEL_CACHE.get(key)
    if text is None:
        if len(_LABEL_CACHE) >= _LABEL_CACHE_MAX:
            _LABEL_CACHE.clear()
        text = ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True))
        _LABEL_CACHE[key] = text
    return text


def _num(value: float) -> str:
    if value.__class__ is int:
        return f"{value}.0" if -(2**53) < value < 2**53 else floatToGoString(value)
    if math.isfinite(value):
        return repr(float(value))
    return floatToGoString(value)


class TableFamily(Metric):
    """A counter, gauge or histogram family stored as rows of label-value tuples."""

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        labelnames: Sequence[str],
        bounds: Sequence[float] = (),
    ) -> None:
        super().__init__(name, documentation, typ)
        self.labelnames = tuple(labelnames)
        self.rows: list[tuple[tuple[str, ...], Any, float]] = []
        self.bounds = tuple(bounds)
        self._samples: list[Sample] | None = None

    # Metric.__init__ assigns self.samples = []; keep that assignment harmless and build lazily.
    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = list(self._build_samples())
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = value or None

    def add(self, values: Sequence[str], value: float) -> None:
        self.rows.append((tuple(values), value, 0.0))
        self._samples = None

    def add_metric(self, labels: Sequence[str], value: float, timestamp: Any = None) -> None:
        """client_python's spelling, for counters and gauges."""
        self.add(labels, value)

    def add_histogram(self, values: Sequence[str], counts: Sequence[int], total: float) -> None:
        """``counts`` are per-bucket (not cumulative), one per bound plus the +Inf bucket."""
        self.rows.append((tuple(values), counts, total))
        self._samples = None

    def _build_samples(self) -> Iterable[Sample]:
        names = self.labelnames
        if self.type == "histogram":
            les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
            for values, counts, total in self.rows:
                labels = dict(zip(names, values, strict=True))
                running = 0
                for le, count in zip(les, counts, strict=True):
                    running += count
                    yield Sample(self.name + "_bucket", {**labels, "le": le}, float(running))
                yield Sample(self.name + "_count", labels, float(running))
                yield Sample(self.name + "_sum", labels, total)
            return
        suffix = "_total" if self.type == "counter" else ""
        for values, value, _ in self.rows:
            yield Sample(self.name + suffix, dict(zip(names, values, strict=True)), float(value))

    def render(self, out: list[str], openmetrics: bool) -> None:
        name, names = self.name, self.labelnames
        help_text = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            help_text = help_text.replace('"', r"\"")
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {self.type}\n")
        else:
            shown = name + "_total" if self.type == "counter" else name
            out.append(f"# HELP {shown} {help_text}\n# TYPE {shown} {self.type}\n")
        append = out.append
        if self.type == "histogram":
            les = [f'le="{floatToGoString(b)}"' for b in self.bounds] + ['le="+Inf"']
            bucket, count_name, sum_name = name + "_bucket{", name + "_count", name + "_sum"
            for values, counts, total in self.rows:
                lt = label_text(names, values)
                sep = "," if lt else ""
                running = 0
                for le, count in zip(les, counts, strict=True):
                    running += count
                    append(f"{bucket}{lt}{sep}{le}}} {running}.0\n")
                braces = "{" + lt + "}" if lt else ""
                append(f"{count_name}{braces} {running}.0\n{sum_name}{braces} {_num(total)}\n")
            return
        sample = name + "_total" if self.type == "counter" else name
        for values, value, _ in self.rows:
            if values:
                append(f"{sample}{{{label_text(names, values)}}} {_num(value)}\n")
            else:
                append(f"{sample} {_num(value)}\n")


class _One:
    """A registry-like wrapper so client_python can render a single foreign family."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self.metric,)


class RenderErrors:
    """Families left out of a scrape because they could not be rendered, by family name (bounded: the
    names come from the collectors' code, not from events), with a rate-limited log line."""

    LOG_EVERY = 60.0  # seconds between log lines about one family

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self._lock = threading.Lock()  # scrapes may render concurrently

    def record(self, family: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[family] += 1
            last = self._logged.get(family)
            if last is not None and now - last < self.LOG_EVERY:
                return
            self._logged[family] = now
        log.error("metric family left out of the scrape", family=family, error=type(exc).__name__,
                  detail=str(exc)[:200], count=self.counts[family])

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


RENDER_ERRORS = RenderErrors()


def _family_text(family: Metric, openmetrics: bool) -> str:
    if isinstance(family, TableFamily):
        out: list[str] = []
        family.render(out, openmetrics)
        return "".join(out)
    if openmetrics:
        text = _om_latest(_One(family)).decode()
        return text[: -len("# EOF\n")] if text.endswith("# EOF\n") else text
    return _text_latest(_One(family)).decode()


def render(registry: Any, openmetrics: bool = False) -> bytes:
    """Render every family of ``registry``: TableFamily fast, anything else through client_python.

    A family that fails is left out and counted in ``RENDER_ERRORS``; so is a collector whose
    ``collect()`` raises (the registry's generator ends there, so later collectors are missed too)."""
    out: list[bytes] = []
    families = iter(registry.collect())
    while True:
        try:
            family = next(families)
        except StopIteration:
            break
        except Exception as exc:  # a collector raised: what was collected so far is still served
            RENDER_ERRORS.record("collect", exc)
            break
        try:
            # Encoded family by family so an unencodable label value (a lone surrogate) costs one family.
            out.append(_family_text(family, openmetrics).encode())
        except Exception as exc:
            RENDER_ERRORS.record(str(getattr(family, "name", "?"))[:200], exc)
    if openmetrics:
        out.append(b"# EOF\n")
    return b"".join(out)
