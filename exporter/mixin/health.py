"""Panels about the exporter itself, shared by the dashboards: is it scraped and connected (the health
row), and what its own diagnosis says about the cluster (the checks of ``celery-exporter doctor`` as
``celery_exporter_check_status``, and task starts the heartbeats report that no event announced).
"""

from __future__ import annotations

from typing import Any

from exporter.mixin.grafana import RI, Fold, Panel, row, sel, stat, timeseries

# celery_exporter_check_status: -1 not yet known, 0 ok, 1 warning, 2 problem.
CHECK_STATES = ((-1, "not yet known", "text"), (0, "ok", "green"), (1, "warning", "orange"),
                (2, "problem", "red"))


def exporter_health() -> list[Panel]:
    """Up, stream connected, polls succeeding: 0 (red) when the series is missing too, never "No data"."""
    a = sel()
    red_green: list[tuple[float | None, str]] = [(None, "red"), (1, "green")]
    return [
        row("Exporter health"),
        stat("Scraped", "1 when Prometheus scrapes every selected exporter replica (min of up).",
             f"min(up{a}) or on () vector(0)", "none", w=8, thresholds=red_green),
        stat("Event stream connected", "1 when every selected replica's event stream is connected to the "
             "broker. At 0, CeleryExporterBlind pages and the worker and task alerts are inhibited.",
             f"min(celery_exporter_broker_connected{a}) or on () vector(0)", "none", w=8,
             thresholds=red_green),
        stat("Broker polls succeeding", "1 when the last poll of every source of every selected replica "
             "succeeded (queue lengths and dead letters are current).",
             f"min(celery_exporter_poll_success{a}) or on () vector(0)", "none", w=8, thresholds=red_green),
    ]


def diagnosis(one: Fold) -> list[Panel]:
    """The cluster checks, one cell each, and missed task events against the heartbeats' counts."""
    checks = stat("Cluster checks", "The exporter's diagnosis of the cluster, one cell per check "
                  "(celery_exporter_check_status): ok, warning, problem or not yet known. "
                  "CeleryClusterMisconfigured fires on a problem; the status page (/) and "
                  "`celery-exporter doctor` show the evidence and the fix.",
                  f"max by (check) ({one(f'celery_exporter_check_status{sel()}')})", "none", w=24,
                  thresholds=[(None, "text"), (0, "green"), (1, "orange"), (2, "red")])
    checks["targets"][0]["legendFormat"] = "{{check}}"
    mappings: list[dict[str, Any]] = [
        {"type": "value", "options": {str(v): {"text": text, "color": color, "index": i}}}
        for i, (v, text, color) in enumerate(CHECK_STATES)]
    checks["fieldConfig"]["defaults"]["mappings"] = mappings
    checks["options"]["textMode"] = "value_and_name"
    return [
        row("Cluster checks"),
        checks,
        timeseries("Missed task events", "Task starts the workers' heartbeats report (their processed "
                   "count) that the event stream never delivered, per minute, on the replica that missed "
                   "the fewest. Steady: a worker without -E; a burst: a stream outage or an exporter "
                   "restart. CeleryExporterMissingEvents opens a ticket.", [
            (f"min without ({one.labels}) (sum without (hostname, worker) "
             f"(increase(celery_exporter_task_events_missed_total{sel()}[1m])))", "missed"),
        ], "none"),
        timeseries("Task starts: heartbeats vs events /s", "Tasks the workers accepted (from their "
                   "heartbeats, per worker) against task-started events the exporter applied: a worker "
                   "whose line stands alone sends no task events.", [
            (f"sum by (hostname, worker) ({one(f'rate(celery_worker_tasks_accepted_total{sel()}{RI})')})",
             "accepted {{worker}}{{hostname}}"),
            (f"sum({one(f'rate(celery_task_started_total{sel()}{RI})')})", "started (events)"),
        ], "ops"),
    ]
