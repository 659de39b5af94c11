"""The repository's dashboards/*.json, rendered by exporter.mixin.dashboards (the code an installed user
runs with ``celery-exporter generate dashboards``) for the repository's rules config, alerts/config.yaml.
"""

from __future__ import annotations

from pathlib import Path

from exporter.mixin.dashboards import DASHBOARDS, render
from tools import rules

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
__all__ = ["DASHBOARDS", "DASHBOARDS_DIR", "targets"]


def targets() -> dict[Path, str]:
    """Path -> JSON text of every dashboard."""
    return {DASHBOARDS_DIR / name: text for name, text in render(rules.load_config()).items()}
