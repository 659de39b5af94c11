"""The rules config (the ``_config`` of a monitoring mixin): the shipped defaults, a user's override file
laid over them, and the scalar values the rule template is filled with.

The defaults are ``alerts/config.yaml`` in the repository; the installed package carries a copy
(``exporter/mixin/data/config.yaml``, kept identical by ``python -m tools.generate``), so
``celery-exporter generate`` works without a clone. An override names only the keys it changes; an
unknown key, a wrong type or a bad SLO or schedule (``exporter.mixin.slo``) is a ``MixinError`` naming
the key (and the SLO), never a traceback.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Keys whose value is a list of label names, joined into PromQL label lists in the template.
LIST_KEYS = ("group_labels", "replica_labels")
# Keys that are not template values: read by exporter.mixin.slo.
STRUCTURED_KEYS = ("slos", "slo_alerts", "slo_min_events", "duration_buckets", "queue_wait_buckets",
                   "schedules", "schedule_for")


class MixinError(ValueError):
    """A rules config that cannot render (unknown key, missing value, wrong type, a bad SLO)."""


def data_text(name: str) -> str:
    """A file shipped in exporter/mixin/data/ (the defaults and the rule template)."""
    return resources.files("exporter.mixin").joinpath("data", name).read_text(encoding="utf-8")


def load_config(override: Path | None = None, defaults: str | None = None) -> dict[str, Any]:
    """The defaults (``defaults``' YAML text, by default the packaged copy of alerts/config.yaml) with the
    keys of the ``override`` file replacing theirs."""
    config: dict[str, Any] = yaml.safe_load(defaults if defaults is not None else data_text("config.yaml"))
    if override is not None:
        try:
            extra = yaml.safe_load(override.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise MixinError(f"{override}: cannot read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise MixinError(f"{override}: not valid YAML ({exc})") from None
        if not isinstance(extra, dict):
            raise MixinError(f"{override}: expected a mapping of alerts/config.yaml keys")
        unknown = sorted(set(extra) - set(config), key=str)
        if unknown:
            raise MixinError(f"{override}: unknown key(s) {', '.join(map(str, unknown))} "
                             "(see alerts/config.yaml)")
        config.update(extra)
    return config


def template_values(config: dict[str, Any]) -> dict[str, str]:
    """Template values: lists joined as PromQL label lists, plus the derived ``replica_key``."""
    values: dict[str, str] = {}
    for key, value in config.items():
        if key in STRUCTURED_KEYS:
            continue
        if key in LIST_KEYS:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise MixinError(f"{key}: expected a non-empty list of label names, got {value!r}")
            values[key] = ", ".join(value)
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise MixinError(f"{key}: expected a string or a number, got {value!r}")
        else:
            values[key] = str(value)
    if not values.get("selector", "").strip():
        raise MixinError('selector: must select the exporter, e.g. job="celery-exporter"')
    values["replica_key"] = ", ".join([*config["group_labels"], *config["replica_labels"]])
    values["runbook_url"] = values["runbook_url"].rstrip("/#")
    return values
