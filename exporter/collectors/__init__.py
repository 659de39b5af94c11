"""Collectors: one module per source of metrics, each declaring its ``METRICS`` and a collector class.

``all_specs()`` finds every declared metric by walking this package, so adding a source means adding a
module here and nothing central.
"""

from __future__ import annotations

import importlib
import pkgutil

from exporter.collectors.base import MetricSpec


def all_specs() -> tuple[MetricSpec, ...]:
    """Every metric the exporter can serve, in module order then declaration order."""
    specs: list[MetricSpec] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        specs.extend(getattr(module, "METRICS", ()))
    return tuple(specs)
