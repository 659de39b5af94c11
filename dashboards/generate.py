#!/usr/bin/env python3
"""Generate the Grafana dashboards in this directory from code (plain Python, no dependencies).

    python dashboards/generate.py           # rewrite the JSON files
    python dashboards/generate.py --check   # exit 1 if a committed file differs from the output

The dashboards import as-is, by hand or by file provisioning: no ``__inputs``; the Prometheus data source
is the ``datasource`` template variable that every panel and query uses; fixed uids; ``job`` and
``instance`` variables on every dashboard. Panels read the recording rules of
``alerts/celery-exporter.rules.yml`` where those exist (overview, queues), and raw series with
``$__rate_interval`` where finer resolution matters (the per-task drill-down).
tests/test_dashboards.py checks that the committed JSON equals this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
JI = 'job=~"$job",instance=~"$instance"'
Panel = dict[str, Any]


def sel(*extra: str) -> str:
    """A label selector body restricted to the dashboard's job and instance (plus ``extra`` matchers)."""
    return "{" + ",".join((JI, *extra)) + "}"


# ---------------------------------------------------------------------------------------------- panels
def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           **extra: Any) -> dict[str, Any]:
    """One Prometheus query: a range query for graphs, an instant query for stat panels."""
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant, **extra}


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short",
               w: int = 12, h: int = 8, stack: bool = False, min0: bool = True) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, expr: str, unit: str = "short", w: int = 4, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None) -> Panel:
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [target(expr, "", "A", instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def heatmap(title: str, description: str, expr: str, w: int = 12, h: int = 8) -> Panel:
    return {
        "type": "heatmap", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [target(expr, "{{le}}", "A", format="heatmap")],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"calculate": False, "yAxis": {"axisPlacement": "left", "unit": "s"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "tooltip": {"show": True, "yHistogram": True}, "legend": {"show": True}},
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Assign stable ids and flow panels left to right, wrapping at Grafana's 24 columns."""
    out: list[Panel] = []
    x = y = line_h = 0
    for pid, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > 24:
            x, y, line_h = 0, y + line_h, 0
        pos.update(x=x, y=y)
        out.append({"id": pid, **panel})
        x, line_h = x + pos["w"], max(line_h, pos["h"])
        if panel["type"] == "row":
            x, y, line_h = 0, y + pos["h"], 0
    return out


# ---------------------------------------------------------------------------------------------- variables
def datasource_var() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_var(name: str, query: str, multi: bool = True, label: str | None = None) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name, "label": label or name, "type": "query", "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 1, "regex": "",
        "multi": multi, "includeAll": multi, "current": {}, "options": [], "hide": 0, "skipUrlSync": False,
    }
    if multi:
        var["allValue"] = ".*"
    return var


def common_vars() -> list[dict[str, Any]]:
    return [
        datasource_var(),
        query_var("job", "label_values(celery_exporter_build_info, job)"),
        query_var("instance", 'label_values(celery_exporter_build_info{job=~"$job"}, instance)'),
    ]


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["celery", "celery-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [{"title": "Celery dashboards", "type": "dashboards", "tags": ["celery-exporter"],
                   "asDropdown": True, "includeVars": True, "keepTime": True, "icon": "external link",
                   "targetBlank": False, "tooltip": "", "url": ""}],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


# ---------------------------------------------------------------------------------------------- dashboards
RI = "[$__rate_interval]"
QUEUE_VAR = 'queue=~"$queue"'
TASK_VAR = 'task_name="$task_name"'
STATE_UP = 'state="up"'
STATE_SUCCEEDED = 'state="succeeded"'
P95 = 'quantile="0.95"'
EXCEPTION_SET = 'exception!=""'

QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
ANY_IS_BAD: list[tuple[float | None, str]] = [(None, "green"), (1, "red")]
RATIO_STEPS: list[tuple[float | None, str]] = [(None, "green"), (0.05, "orange"), (0.1, "red")]


def overview() -> dict[str, Any]:
    s = sel(QUEUE_VAR)
    ok, failed = f"queue:celery_task_succeeded:rate5m{s}", f"queue:celery_task_failed:rate5m{s}"
    panels = [
        row("Now"),
        stat("Tasks succeeded /s", "Successful tasks per second over 5 minutes, selected queues.",
             f"sum({ok})", "ops"),
        stat("Failure ratio", "Failed / (succeeded + failed) over 5 minutes; no value without traffic. "
             "CeleryTaskFailureRatioHigh fires per task above 10%.",
             f"sum({failed}) / (sum({ok}) + sum({failed}) > 0)", "percentunit", thresholds=RATIO_STEPS),
        stat("Workers up", "Workers online and heartbeating. CeleryNoWorkersOnline pages at 0.",
             f'sum(celery_workers{sel(STATE_UP)})', "none",
             thresholds=[(None, "red"), (1, "green")]),
        stat("Messages waiting", "Messages ready in the selected task queues (polled from the broker).",
             f"sum(celery_queue_length{s})", "none"),
        stat("Dead letters", "Messages in all dead-letter queues.",
             f"sum(celery_dead_letter_queue_length{sel()})", "none", thresholds=ANY_IS_BAD),
        stat("Broker connected", "1 when every selected exporter's event stream is connected.",
             f"min(celery_exporter_broker_connected{sel()})", "none",
             thresholds=[(None, "red"), (1, "green")]),
        row("Throughput"),
        timeseries("Task outcomes /s by queue", "Succeeded, failed and retried tasks per second (5m).", [
            (f"sum by (queue) ({ok})", "{{queue}} succeeded"),
            (f"sum by (queue) ({failed})", "{{queue}} failed"),
            (f"sum by (queue) (task_name_queue:celery_task_retried:rate5m{s})", "{{queue}} retried"),
        ], "ops"),
        timeseries("Success ratio by queue", "Succeeded / (succeeded + failed) per queue over 5 minutes.", [
            (f"sum by (queue) ({ok}) / (sum by (queue) ({ok}) + sum by (queue) ({failed}) > 0)", "{{queue}}"),
        ], "percentunit"),
        timeseries("Failure ratio by task (top 10)", "Failed / (succeeded + failed) per task over 5m.", [
            (f"topk(10, max by (task_name) (task_name_queue:celery_task_failure:ratio_rate5m{s}))",
             "{{task_name}}"),
        ], "percentunit"),
        timeseries("Retry ratio by task (top 10)", "Share of finished attempts that ended in a retry.", [
            (f"topk(10, max by (task_name) (task_name_queue:celery_task_retry:ratio_rate5m{s}))",
             "{{task_name}}"),
        ], "percentunit"),
        row("Latency"),
        timeseries("Run time p95 by task (top 10)", "95th percentile of task run time, all outcomes, 5m.", [
            ("topk(10, max by (task_name) (task_name_queue_quantile:celery_task_duration_seconds:"
             f"histogram_quantile_rate5m{sel(QUEUE_VAR, P95)}))",
             "{{task_name}}"),
        ], "s"),
        timeseries("Queue wait by queue", "Time from task-sent (or ETA) to task-started: p50, p95, p99.", [
            ("max by (queue, quantile) "
             f"(queue_quantile:celery_task_queue_wait_seconds:histogram_quantile_rate5m{s})",
             "{{queue}} q{{quantile}}"),
        ], "s"),
        timeseries("Run time, all tasks", "Run-time quantiles over every selected task and outcome.", [
            (f"histogram_quantile({q}, sum by (le) (rate(celery_task_duration_seconds_bucket{s}{RI})))", name)
            for q, name in QUANTILES
        ], "s"),
        timeseries("Tasks running by queue", "Tasks started and not finished, from the event stream.", [
            (f"sum by (queue) (celery_tasks_active{s})", "{{queue}}"),
        ], "none", stack=True),
        row("Queues and workers"),
        timeseries("Queue depth", "Messages ready per task queue (the HPA metric).", [
            (f"sum by (queue) (celery_queue_length{s})", "{{queue}}"),
        ], "none"),
        timeseries("Workers", "Workers tracked by the exporter, by state.", [
            (f"sum by (state) (celery_workers{sel()})", "{{state}}"),
        ], "none", stack=True),
        timeseries("Tasks running per worker", "Busy slots per worker, from its heartbeats.", [
            (f"sum by (worker) (celery_worker_tasks_active{sel()})", "{{worker}}"),
        ], "none", stack=True),
        timeseries("Exporter: events /s by type", "Celery events applied, and events refused by reason.", [
            (f"sum by (type) (rate(celery_exporter_events_total{sel()}{RI}))", "{{type}}"),
            (f"sum by (reason) (rate(celery_exporter_events_invalid_total{sel()}{RI}))",
             "refused: {{reason}}"),
            (f"sum by (label) (rate(celery_exporter_label_overflow_total{sel()}{RI}))",
             "overflow: {{label}}"),
        ], "ops"),
    ]
    variables = [*common_vars(),
                 query_var("queue", f"label_values(celery_task_started_total{sel()}, queue)")]
    return dashboard("celery-exporter-overview", "Celery / Overview",
                     "Throughput, failures, run and wait times, queue depth and workers.", variables, panels)


def task_drilldown() -> dict[str, Any]:
    t = sel(TASK_VAR, QUEUE_VAR)

    def r(metric: str, extra: str = "") -> str:
        body = t[:-1] + ("," + extra if extra else "") + "}"
        return f"rate({metric}{body}{RI})"

    panels = [
        row("Now"),
        stat("Succeeded /s", "Successful runs per second.",
             f"sum({r('celery_task_succeeded_total')})", "ops"),
        stat("Failure ratio", "Failed / (succeeded + failed); no value without traffic.",
             f"sum({r('celery_task_failed_total')}) / (sum({r('celery_task_succeeded_total')}) + "
             f"sum({r('celery_task_failed_total')}) > 0)", "percentunit", thresholds=RATIO_STEPS),
        stat("Retries /s", "Retries per second.", f"sum({r('celery_task_retried_total')})", "ops"),
        stat("Retries exhausted", "Runs that failed on a retry attempt in the selected time range.",
             f"sum(increase(celery_task_retries_exhausted_total{t}[$__range]))", "none",
             thresholds=ANY_IS_BAD),
        stat("Running now", "Runs started and not finished.", f"sum(celery_tasks_active{t})", "none"),
        stat("Run time p95", "95th percentile of run time, all outcomes.",
             f"histogram_quantile(0.95, sum by (le) ({r('celery_task_duration_seconds_bucket')}))", "s"),
        row("Outcomes"),
        timeseries("Task events /s", "Every lifecycle event of the task, per second.", [
            (f"sum({r(f'celery_task_{state}_total')})", state)
            for state in ("sent", "received", "started", "succeeded", "failed", "retried", "rejected",
                          "revoked")
        ], "ops"),
        timeseries("Failures by exception", "Failed runs per second by exception class.", [
            (f"sum by (exception) ({r('celery_task_failed_total', EXCEPTION_SET)})",
             "{{exception}}"),
        ], "ops", stack=True),
        timeseries("Retries by exception", "Retries per second by the exception that caused them.", [
            (f"sum by (exception) ({r('celery_task_retried_total')})", "{{exception}}"),
        ], "ops", stack=True),
        timeseries("Retries exhausted", "Runs that failed on a retry attempt: they feed dead-letter queues.",
                   [
            (f"sum by (queue) (increase(celery_task_retries_exhausted_total{t}{RI}))", "{{queue}}"),
        ], "none"),
        row("Latency"),
        timeseries("Run time by outcome", "p50, p95 and p99 of run time per outcome (state).", [
            (f"histogram_quantile({q}, sum by (le, state) ({r('celery_task_duration_seconds_bucket')}))",
             "{{state}} " + name)
            for q, name in QUANTILES
        ], "s"),
        timeseries("Average run time by outcome", "Mean run time per outcome.", [
            (f"sum by (state) ({r('celery_task_duration_seconds_sum')}) / "
             f"(sum by (state) ({r('celery_task_duration_seconds_count')}) > 0)", "{{state}}"),
        ], "s"),
        heatmap("Run time distribution (succeeded)", "Successful runs per run-time bucket.",
                "sum by (le) (increase(celery_task_duration_seconds_bucket"
                f"{sel(TASK_VAR, QUEUE_VAR, STATE_SUCCEEDED)}{RI}))"),
        timeseries("Queue wait", "Time from task-sent (or ETA) to task-started: p50, p95, p99.", [
            (f"histogram_quantile({q}, sum by (le) ({r('celery_task_queue_wait_seconds_bucket')}))", name)
            for q, name in QUANTILES
        ], "s"),
    ]
    variables = [
        *common_vars(),
        query_var("task_name", f"label_values(celery_task_started_total{sel()}, task_name)", multi=False,
                  label="task"),
        query_var("queue", f'label_values(celery_task_started_total{sel(TASK_VAR)}, queue)'),
    ]
    return dashboard("celery-exporter-task", "Celery / Task drill-down",
                     "One task: outcomes, exceptions, retries, run time and queue wait.", variables, panels)


def queues() -> dict[str, Any]:
    q = sel(QUEUE_VAR)
    a = sel()
    panels = [
        row("Now"),
        stat("Messages ready", "Messages waiting in the selected task queues.",
             f"sum(celery_queue_length{q})", "none"),
        stat("Unacked (Redis)", "Messages delivered and not yet acknowledged, all queues (kombu's hash).",
             f"sum(celery_broker_unacked_messages{a})", "none"),
        stat("In retry queues", "Messages waiting in retry / delay queues.",
             f"sum(celery_retry_queue_length{a})", "none"),
        stat("Dead letters", "Messages in all dead-letter queues.",
             f"sum(celery_dead_letter_queue_length{a})", "none", thresholds=ANY_IS_BAD),
        stat("DLQ growth (10m)", "Dead letters added over 10 minutes, all DLQs. "
             "CeleryDeadLetterQueueGrowing pages when a DLQ keeps growing for 15 minutes.",
             f"sum(clamp_min(delta(celery_dead_letter_queue_length{a}[10m]), 0))", "none",
             thresholds=ANY_IS_BAD),
        stat("Oldest dead letter", "Age of the oldest dead letter (where entries carry a timestamp).",
             f"max(celery_dead_letter_queue_oldest_message_age_seconds{a})", "s",
             thresholds=[(None, "green"), (3600, "orange"), (86400, "red")]),
        row("Task queues"),
        timeseries("Queue depth", "Messages ready per task queue, priority sub-queues included.", [
            (f"sum by (queue) (celery_queue_length{q})", "{{queue}}"),
        ], "none"),
        timeseries("Arrivals vs completions /s", "Tasks sent vs finished per queue (5m rates); a backlog "
                   "grows while arrivals exceed completions.", [
            (f"sum by (queue) (queue:celery_task_sent:rate5m{q})", "{{queue}} sent"),
            (f"sum by (queue) (queue:celery_task_succeeded:rate5m{q}) + "
             f"sum by (queue) (queue:celery_task_failed:rate5m{q})", "{{queue}} finished"),
        ], "ops"),
        timeseries("Queue wait p95", "95th percentile of time from sent to started, per queue. "
                   "CeleryQueueWaitTimeHigh fires above 5 minutes.", [
            ("max by (queue) (queue_quantile:celery_task_queue_wait_seconds:histogram_quantile_rate5m"
             f"{sel(QUEUE_VAR, P95)})",
             "{{queue}}"),
        ], "s"),
        timeseries("Unacked messages and consumers", "RabbitMQ: delivered-not-acked messages and consumers "
                   "per queue.", [
            (f"sum by (queue) (celery_queue_messages_unacked{q})", "{{queue}} unacked"),
            (f"sum by (queue) (celery_queue_consumers{q})", "{{queue}} consumers"),
        ], "none"),
        row("Retry and dead-letter queues"),
        timeseries("Retry queue depth", "Messages waiting in retry / delay queues.", [
            (f"sum by (queue) (celery_retry_queue_length{a})", "{{queue}}"),
        ], "none"),
        timeseries("Dead-letter queue depth", "Messages per dead-letter queue.", [
            (f"sum by (queue) (celery_dead_letter_queue_length{a})", "{{queue}}"),
        ], "none"),
        timeseries("DLQ growth (10m)", "Change of each DLQ over 10 minutes; the paging alert "
                   "CeleryDeadLetterQueueGrowing fires when this stays above 0 for 15 minutes.", [
            (f"sum by (queue) (delta(celery_dead_letter_queue_length{a}[10m]))", "{{queue}}"),
        ], "none", min0=False),
        timeseries("Oldest dead letter", "Age of the oldest message per DLQ.", [
            (f"max by (queue) (celery_dead_letter_queue_oldest_message_age_seconds{a})", "{{queue}}"),
        ], "s"),
        timeseries("Retries exhausted by task", "Runs that failed on a retry: what feeds the DLQs.", [
            (f"sum by (task_name) (increase(celery_task_retries_exhausted_total{a}{RI}))", "{{task_name}}"),
        ], "none"),
        row("Broker polls"),
        timeseries("Poll success", "1 when the last poll of a source succeeded.", [
            (f"min by (source) (celery_exporter_poll_success{a})", "{{source}}"),
        ], "none", w=8),
        timeseries("Poll duration", "Duration of the last poll; near --poll-timeout means polls time out.", [
            (f"max by (source) (celery_exporter_poll_duration_seconds{a})", "{{source}}"),
        ], "s", w=8),
        timeseries("Poll errors /s", "Failed or timed-out polls per second.", [
            (f"sum by (source) (rate(celery_exporter_poll_errors_total{a}{RI}))", "{{source}}"),
        ], "ops", w=8),
    ]
    variables = [*common_vars(), query_var("queue", f"label_values(celery_queue_length{a}, queue)")]
    return dashboard("celery-exporter-queues", "Celery / Queues & dead letters",
                     "Queue depth, wait, retry queues, dead-letter growth and age, broker polls.",
                     variables, panels)


DASHBOARDS = {
    "celery-overview.json": overview,
    "celery-task.json": task_drilldown,
    "celery-queues.json": queues,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote dashboards/{name}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
