"""The SLO dashboard (dashboards/celery-slo.json): per SLO, chosen with the ``slo`` variable and repeated
per selected SLO, the SLI over time against the objective, the error budget remaining over the period, and
the burn rate over each window of the burn-rate alerts against its threshold.

It reads only the recording rules of exporter.mixin.slo_rules, so one dashboard serves every SLO a config
declares; the windows come from the config's ``slo_alerts``.
"""

from __future__ import annotations

from typing import Any

from exporter.mixin.grafana import (
    Fold,
    Panel,
    common_vars,
    dashboard,
    deployment_sel,
    query_var,
    row,
    stat,
    timeseries,
)
from exporter.mixin.slo import BurnAlert, seconds

SLO_VAR = 'slo=~"$slo"'


def _burn(window: str) -> str:
    """Burn rate over ``window``: the error ratio over the error budget (1 - objective)."""
    s = deployment_sel(SLO_VAR)
    return (f"max by (slo) (slo:celery_task_errors:ratio_rate{window}{s}) / on (slo) "
            f"(1 - max by (slo) (slo:celery_objective:ratio{s}))")


def slo_dashboard(one: Fold, alerts: list[BurnAlert]) -> dict[str, Any]:
    del one  # the recorded SLO series are already folded over replicas
    s = deployment_sel(SLO_VAR)
    shortest = min((a.short for a in alerts), key=seconds)
    longest = max(alerts, key=lambda a: seconds(a.long))
    burn_panels: list[Panel] = []
    for alert in alerts:
        action = "pages" if alert.severity == "critical" else "opens a ticket"
        burn_panels.append(timeseries(
            f"Burn rate {alert.long} / {alert.short} (alert at {alert.burn_rate:g}x)",
            f"How many times faster than sustainable the budget burns, over {alert.long} and {alert.short}. "
            f"CelerySLOErrorBudgetBurn {action} when both stay above {alert.burn_rate:g} for {alert.hold} "
            "(with enough events in the long window).", [
                (_burn(alert.long), f"{{{{slo}}}} {alert.long}"),
                (_burn(alert.short), f"{{{{slo}}}} {alert.short}"),
                (f"{alert.burn_rate:g} + 0 * max by (slo) (slo:celery_objective:ratio{s})",
                 "threshold"),
            ], "none", w=12))
    panels: list[Panel] = [
        row("$slo"),
        stat("Error budget remaining", "Share of the period's error budget not yet spent (1 - errors / "
             "budget over the SLO's period; below 0: overspent).",
             f"max by (slo) (slo:celery_error_budget_remaining:ratio{s})", "percentunit", w=6,
             thresholds=[(None, "red"), (0, "orange"), (0.25, "green")]),
        stat("Objective", "The SLO's objective (alerts/config.yaml).",
             f"max by (slo) (slo:celery_objective:ratio{s})", "percentunit", w=6),
        stat(f"SLI ({shortest})", f"Good events / all events over the last {shortest}.",
             f"1 - max by (slo) (slo:celery_task_errors:ratio_rate{shortest}{s})", "percentunit", w=6),
        stat("Burn rate (longest window)", f"Burn rate over {longest.long}, the longest alert window: 1 "
             f"spends the budget exactly over the period; red from {longest.burn_rate:g}, where its alert "
             "fires.", _burn(longest.long), "none", w=6,
             thresholds=[(None, "green"), (longest.burn_rate, "red")]),
        timeseries("SLI over time", "Good events / all events, per window, against the objective.", [
            (f"1 - max by (slo) (slo:celery_task_errors:ratio_rate{shortest}{s})",
             f"{{{{slo}}}} SLI {shortest}"),
            (f"max by (slo) (slo:celery_objective:ratio{s})", "{{slo}} objective"),
        ], "percentunit", w=12, min0=False),
        timeseries("Error budget remaining", "Budget left over the SLO's period, over time.", [
            (f"max by (slo) (slo:celery_error_budget_remaining:ratio{s})", "{{slo}}"),
        ], "percentunit", w=12, min0=False),
        *burn_panels,
    ]
    panels[0]["repeat"] = "slo"
    variables = [*common_vars(),
                 query_var("slo", f"label_values(slo:celery_objective:ratio{deployment_sel()}, slo)")]
    return dashboard("celery-exporter-slo", "Celery / SLOs",
                     "Per SLO: the SLI, the error budget remaining and the burn rates of its alerts.",
                     variables, panels)
