"""The repository's rule files, rendered by exporter.mixin (the code an installed user runs with
``celery-exporter generate``) from ``alerts/rules.template.yml`` and ``alerts/config.yaml``: the
``_config`` of a monitoring mixin, optionally overridden by a user's YAML file.

Outputs: ``alerts/celery-exporter.rules.yml`` (the defaults, which the promtool tests in alerts/tests/
exercise), ``deploy/kubernetes/base/prometheusrule.yaml`` (the same groups in a Prometheus Operator
PrometheusRule), ``deploy/compose/prometheus/rules/celery-exporter.rules.yml`` (the defaults plus
``deploy/compose/prometheus/alerts-config.yaml``, the worked example of an override),
``alerts/examples/slo.rules.yml`` (the SLOs and schedules of ``alerts/examples/slo-config.yaml``, which
the promtool tests beside it exercise), and the package's copies of the template and the defaults
(``exporter/mixin/data/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.mixin import config as mixin_config
from exporter.mixin import rules as mixin_rules
from exporter.mixin.config import MixinError as ConfigError

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "alerts" / "rules.template.yml"
DEFAULTS = ROOT / "alerts" / "config.yaml"
RULES = ROOT / "alerts" / "celery-exporter.rules.yml"
PROMETHEUSRULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "prometheus" / "alerts-config.yaml"
COMPOSE_RULES = ROOT / "deploy" / "compose" / "prometheus" / "rules" / "celery-exporter.rules.yml"
EXAMPLE_CONFIG = ROOT / "alerts" / "examples" / "slo-config.yaml"
EXAMPLE_RULES = ROOT / "alerts" / "examples" / "slo.rules.yml"
PACKAGE_DATA = ROOT / "exporter" / "mixin" / "data"
OPERATOR_LABELS = mixin_rules.OPERATOR_LABELS

__all__ = ["ConfigError", "load_config", "render_prometheusrule", "render_rules", "targets"]


def load_config(override: Path | None = None) -> dict[str, Any]:
    """The defaults of alerts/config.yaml, with the keys of ``override`` replacing theirs."""
    return mixin_config.load_config(override, DEFAULTS.read_text(encoding="utf-8"))


def render_rules(config: dict[str, Any], template: Path = TEMPLATE) -> str:
    """The Prometheus rule file for ``config`` (from ``template``, by default the repository's)."""
    return mixin_rules.render_rules(config, template.read_text(encoding="utf-8"))


render_prometheusrule = mixin_rules.render_prometheusrule


def targets() -> dict[Path, str]:
    rules = render_rules(load_config())
    return {
        RULES: rules,
        PROMETHEUSRULE: render_prometheusrule(rules),
        COMPOSE_RULES: render_rules(load_config(COMPOSE_CONFIG)),
        EXAMPLE_RULES: render_rules(load_config(EXAMPLE_CONFIG)),
        PACKAGE_DATA / "config.yaml": DEFAULTS.read_text(encoding="utf-8"),
        PACKAGE_DATA / "rules.template.yml": TEMPLATE.read_text(encoding="utf-8"),
    }
