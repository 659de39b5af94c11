"""The Grafana dashboards of dashboards/*.json, as code (built from exporter/mixin/grafana.py).

Conventions: ``cluster``, ``namespace``, ``job`` and ``instance`` variables on every dashboard; every
query first folds exporter replicas (an HA pair, a rollout, the sidecar overlay) with
``max without (instance, pod)`` (a max by every other label) and only then sums, so N replicas never show
N times the traffic and two Celery clusters on one Prometheus are never added together. Panels read the
recording rules of alerts/celery-exporter.rules.yml where those exist (overview, queues), and raw series
with ``$__rate_interval`` where finer resolution matters (the per-task drill-down). Regenerate with
``python -m tools.generate`` (``celery-exporter generate dashboards`` renders them for a user's rules
config: its replica labels and SLO windows); tests/test_dashboards.py checks the committed JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from exporter.mixin.grafana import (
    RI,
    Fold,
    common_vars,
    dashboard,
    deployment_sel,
    heatmap,
    query_var,
    row,
    sel,
    stat,
    timeseries,
)
from exporter.mixin.health import diagnosis, exporter_health
from exporter.mixin.slo import parse_burn_alerts
from exporter.mixin.slo_dashboard import slo_dashboard

# ---------------------------------------------------------------------------------------------- dashboards
QUEUE_VAR = 'queue=~"$queue"'
TASK_VAR = 'task_name="$task_name"'
STATE_UP = 'state="up"'
STATE_SUCCEEDED = 'state="succeeded"'
P95 = 'quantile="0.95"'
EXCEPTION_SET = 'exception!=""'

QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
ANY_IS_BAD: list[tuple[float | None, str]] = [(None, "green"), (1, "red")]
RATIO_STEPS: list[tuple[float | None, str]] = [(None, "green"), (0.05, "orange"), (0.1, "red")]


def overview(one: Fold) -> dict[str, Any]:
    s = sel(QUEUE_VAR)
    ok, failed = f"queue:celery_task_succeeded:rate5m{s}", f"queue:celery_task_failed:rate5m{s}"
    run_time = one(f"rate(celery_task_duration_seconds_bucket{s}{RI})")
    panels = [
        *exporter_health(),
        *diagnosis(one),
        row("Now"),
        stat("Tasks succeeded /s", "Successful tasks per second over 5 minutes, selected queues.",
             f"sum({one(ok)})", "ops"),
        stat("Failure ratio", "Failed / (succeeded + failed) over 5 minutes; no value without traffic. "
             "CeleryTaskFailureRatioHigh fires per task above 10%.",
             f"sum({one(failed)}) / (sum({one(ok)}) + sum({one(failed)}) > 0)",
             "percentunit", thresholds=RATIO_STEPS),
        stat("Workers up", "Workers online and heartbeating. CeleryNoWorkersOnline pages at 0.",
             f"sum({one(f'celery_workers{sel(STATE_UP)}')}) or on () vector(0)", "none",
             thresholds=[(None, "red"), (1, "green")]),
        stat("Messages waiting", "Messages ready in the selected task queues (polled from the broker).",
             f"sum({one(f'celery_queue_length{s}')})", "none"),
        stat("Dead letters", "Messages in all dead-letter queues.",
             f"sum({one(f'celery_dead_letter_queue_length{sel()}')})", "none", thresholds=ANY_IS_BAD),
        row("Throughput"),
        timeseries("Task outcomes /s by queue", "Succeeded, failed and retried tasks per second (5m).", [
            (f"sum by (queue) ({one(ok)})", "{{queue}} succeeded"),
            (f"sum by (queue) ({one(failed)})", "{{queue}} failed"),
            (f"sum by (queue) ({one(f'task_name_queue:celery_task_retried:rate5m{s}')})",
             "{{queue}} retried"),
        ], "ops"),
        timeseries("Success ratio by queue", "Succeeded / (succeeded + failed) per queue over 5 minutes.", [
            (f"sum by (queue) ({one(ok)}) / (sum by (queue) ({one(ok)}) + "
             f"sum by (queue) ({one(failed)}) > 0)", "{{queue}}"),
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
            (f"histogram_quantile({q}, sum by (le) ({run_time}))", name) for q, name in QUANTILES
        ], "s"),
        timeseries("Tasks running by queue", "Tasks started and not finished, from the event stream.", [
            (f"sum by (queue) ({one(f'celery_tasks_active{s}')})", "{{queue}}"),
        ], "none", stack=True),
        row("Queues and workers"),
        timeseries("Queue depth", "Messages ready per task queue (the HPA metric).", [
            (f"sum by (queue) ({one(f'celery_queue_length{s}')})", "{{queue}}"),
        ], "none"),
        timeseries("Workers", "Workers tracked by the exporter, by state.", [
            (f"sum by (state) ({one(f'celery_workers{sel()}')})", "{{state}}"),
        ], "none", stack=True),
        timeseries("Tasks running per worker", "Busy slots per worker, from its heartbeats.", [
            (f"sum by (worker) ({one(f'celery_worker_tasks_active{sel()}')})", "{{worker}}"),
        ], "none", stack=True),
        timeseries("Exporter: events /s by type", "Celery events applied, and events refused by reason.", [
            (f"sum by (type) ({one(f'rate(celery_exporter_events_total{sel()}{RI})')})", "{{type}}"),
            (f"sum by (reason) ({one(f'rate(celery_exporter_events_invalid_total{sel()}{RI})')})",
             "refused: {{reason}}"),
            (f"sum by (label) ({one(f'rate(celery_exporter_label_overflow_total{sel()}{RI})')})",
             "overflow: {{label}}"),
        ], "ops"),
    ]
    variables = [*common_vars(),
                 # From the polled queue length: a queue nobody consumes (no task events) is selectable too.
                 query_var("queue", f"label_values(celery_queue_length{sel()}, queue)")]
    return dashboard("celery-exporter-overview", "Celery / Overview",
                     "Throughput, failures, run and wait times, queue depth and workers.", variables, panels)


def task_drilldown(one: Fold) -> dict[str, Any]:
    t = sel(TASK_VAR, QUEUE_VAR)
    succeeded = sel(TASK_VAR, QUEUE_VAR, STATE_SUCCEEDED)

    def r(metric: str, extra: str = "") -> str:
        body = t[:-1] + ("," + extra if extra else "") + "}"
        return one(f"rate({metric}{body}{RI})")

    panels = [
        row("Now"),
        stat("Succeeded /s", "Successful runs per second.",
             f"sum({r('celery_task_succeeded_total')})", "ops"),
        stat("Failure ratio", "Failed / (succeeded + failed); no value without traffic.",
             f"sum({r('celery_task_failed_total')}) / (sum({r('celery_task_succeeded_total')}) + "
             f"sum({r('celery_task_failed_total')}) > 0)", "percentunit", thresholds=RATIO_STEPS),
        stat("Retries /s", "Retries per second.", f"sum({r('celery_task_retried_total')})", "ops"),
        stat("Retries exhausted (24h)", "Runs that failed on a retry attempt in the last 24 hours (a fixed "
             "window, so the number does not change with the dashboard's time range).",
             f"sum({one(f'increase(celery_task_retries_exhausted_total{t}[24h])')}) or on () vector(0)",
             "none", thresholds=ANY_IS_BAD),
        stat("Running now", "Runs started and not finished.",
             f"sum({one(f'celery_tasks_active{t}')})", "none"),
        stat("Run time p95", "95th percentile of run time, all outcomes.",
             f"histogram_quantile(0.95, sum by (le) ({r('celery_task_duration_seconds_bucket')}))", "s"),
        stat("Oldest running", "How long the oldest unfinished run has been running (0: none runs). "
             "CeleryTaskHung fires above its threshold (alerts/config.yaml).",
             f"max({one(f'celery_task_oldest_running_age_seconds{t}')}) or on () vector(0)", "s",
             thresholds=[(None, "green"), (1800, "orange"), (3600, "red")]),
        stat("Last succeeded", "Time since the newest task-succeeded event of this task (kept in the "
             "exporter's memory: none until the first one after a restart).",
             f"time() - max({one('celery_task_last_event_timestamp_seconds' + succeeded)})", "s"),
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
        timeseries("Retries exhausted /h", "Runs that failed on a retry attempt, per hour (a fixed 1h window "
                   "whatever the zoom): they feed dead-letter queues.", [
            (f"sum by (queue) ({one(f'increase(celery_task_retries_exhausted_total{t}[1h])')})", "{{queue}}"),
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
                "sum by (le) (" + one("increase(celery_task_duration_seconds_bucket"
                                      f"{sel(TASK_VAR, QUEUE_VAR, STATE_SUCCEEDED)}{RI})") + ")"),
        timeseries("Queue wait", "Time from task-sent (or ETA) to task-started: p50, p95, p99.", [
            (f"histogram_quantile({q}, sum by (le) ({r('celery_task_queue_wait_seconds_bucket')}))", name)
            for q, name in QUANTILES
        ], "s"),
        row("Stalls"),
        timeseries("Oldest running", "Age of the oldest started and unfinished run, per queue: a line that "
                   "keeps climbing is a hung task (CeleryTaskHung). Lost workers' runs do not count.", [
            (f"max by (queue) ({one(f'celery_task_oldest_running_age_seconds{t}')})", "{{queue}}"),
        ], "s"),
        timeseries("Time since last event", "time() minus the newest event of each kind: a periodic task "
                   "whose 'sent' line climbs past its schedule missed a run (docs/alerting.md).", [
            (f"time() - max by (state) ({one(f'celery_task_last_event_timestamp_seconds{t}')})", "{{state}}"),
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


def queues(one: Fold) -> dict[str, Any]:
    q = sel(QUEUE_VAR)
    a = sel()
    added_page = f"queue:celery_dead_letter_messages_added:increase_page_window{deployment_sel()}"
    panels = [
        *exporter_health(),
        row("Now"),
        stat("Messages ready", "Messages waiting in the selected task queues.",
             f"sum({one(f'celery_queue_length{q}')})", "none"),
        stat("Unacked (Redis)", "Messages delivered and not yet acknowledged, all queues (kombu's hash).",
             f"sum({one(f'celery_broker_unacked_messages{a}')})", "none"),
        stat("In retry queues", "Messages waiting in retry / delay queues.",
             f"sum({one(f'celery_retry_queue_length{a}')})", "none"),
        stat("Dead letters", "Messages in all dead-letter queues.",
             f"sum({one(f'celery_dead_letter_queue_length{a}')})", "none", thresholds=ANY_IS_BAD),
        stat("Dead letters added", "Letters added to all DLQs within the paging window (the counter "
             "celery_dead_letter_messages_added_total, or the growth of the queue length without it). "
             "CeleryDeadLetterQueueGrowing pages when one DLQ gets many.",
             f"sum({added_page}) or on () vector(0)", "none", thresholds=ANY_IS_BAD),
        stat("Oldest dead letter", "Age of the oldest dead letter (where entries carry a timestamp).",
             f"max(celery_dead_letter_queue_oldest_message_age_seconds{a})", "s",
             thresholds=[(None, "green"), (3600, "orange"), (86400, "red")]),
        row("Task queues"),
        timeseries("Queue depth", "Messages ready per task queue, priority sub-queues included.", [
            (f"sum by (queue) ({one(f'celery_queue_length{q}')})", "{{queue}}"),
        ], "none"),
        timeseries("Oldest waiting task", "How long the oldest task still waiting in each queue has waited "
                   "(0: empty): how late the queue is, whatever its length. Exact with task-sent events, a "
                   "lower bound on Redis without them. CeleryQueueOldestTaskTooOld fires above its "
                   "threshold.", [
            (f"max by (queue) ({one(f'celery_queue_oldest_task_age_seconds{q}')})", "{{queue}}"),
        ], "s"),
        timeseries("Time to drain", "Queue length / completion rate: how long the backlog would take to "
                   "empty at the current pace. CeleryQueueBacklogHigh fires when it stays too long.", [
            (f"max by (queue) (queue:celery_queue_length:time_to_drain_seconds{deployment_sel(QUEUE_VAR)})",
             "{{queue}}"),
        ], "s"),
        timeseries("Arrivals vs completions /s", "Tasks sent vs finished per queue (5m rates); a backlog "
                   "grows while arrivals exceed completions.", [
            (f"sum by (queue) ({one(f'queue:celery_task_sent:rate5m{q}')})", "{{queue}} sent"),
            (f"sum by (queue) ({one(f'queue:celery_task_completed:rate5m{q}')})", "{{queue}} finished"),
        ], "ops"),
        timeseries("Queue wait p95", "95th percentile of time from sent to started, per queue. "
                   "CeleryQueueWaitTimeHigh fires above 5 minutes.", [
            ("max by (queue) (queue_quantile:celery_task_queue_wait_seconds:histogram_quantile_rate5m"
             f"{sel(QUEUE_VAR, P95)})",
             "{{queue}}"),
        ], "s"),
        timeseries("Unacked messages and consumers", "RabbitMQ: delivered-not-acked messages and consumers "
                   "per queue.", [
            (f"sum by (queue) ({one(f'celery_queue_messages_unacked{q}')})", "{{queue}} unacked"),
            (f"sum by (queue) ({one(f'celery_queue_consumers{q}')})", "{{queue}} consumers"),
        ], "none"),
        row("Retry and dead-letter queues"),
        timeseries("Retry queue depth", "Messages waiting in retry / delay queues.", [
            (f"sum by (queue) ({one(f'celery_retry_queue_length{a}')})", "{{queue}}"),
        ], "none"),
        timeseries("Dead-letter queue depth", "Messages per dead-letter queue.", [
            (f"sum by (queue) ({one(f'celery_dead_letter_queue_length{a}')})", "{{queue}}"),
        ], "none"),
        timeseries("Dead letters added", "Letters added per DLQ within the paging window; the paging alert "
                   "CeleryDeadLetterQueueGrowing fires at its threshold (alerts/config.yaml).", [
            (f"sum by (queue) ({added_page})", "{{queue}}"),
        ], "none"),
        timeseries("Oldest dead letter", "Age of the oldest message per DLQ.", [
            (f"max by (queue) (celery_dead_letter_queue_oldest_message_age_seconds{a})", "{{queue}}"),
        ], "s"),
        timeseries("Retries exhausted by task /h", "Runs that failed on a retry, per hour (a fixed 1h "
                   "window whatever the zoom): what feeds the DLQs.", [
            (f"sum by (task_name) ({one(f'increase(celery_task_retries_exhausted_total{a}[1h])')})",
             "{{task_name}}"),
        ], "none"),
        row("Broker polls"),
        timeseries("Poll success", "1 when the last poll of a source succeeded.", [
            (f"min by (source) (celery_exporter_poll_success{a})", "{{source}}"),
        ], "none", w=8),
        timeseries("Poll duration", "Duration of the last poll; near --poll-timeout means polls time out.", [
            (f"max by (source) (celery_exporter_poll_duration_seconds{a})", "{{source}}"),
        ], "s", w=8),
        timeseries("Poll errors /s", "Failed or timed-out polls per second.", [
            (f"sum by (source) ({one(f'rate(celery_exporter_poll_errors_total{a}{RI})')})", "{{source}}"),
        ], "ops", w=8),
    ]
    variables = [*common_vars(), query_var("queue", f"label_values(celery_queue_length{a}, queue)")]
    return dashboard("celery-exporter-queues", "Celery / Queues & dead letters",
                     "Exporter health, queue depth and time to drain, retry queues, dead letters added, "
                     "broker polls.", variables, panels)


DASHBOARDS: dict[str, Callable[[Fold], dict[str, Any]]] = {
    "celery-overview.json": overview,
    "celery-task.json": task_drilldown,
    "celery-queues.json": queues,
}


def render(config: dict[str, Any]) -> dict[str, str]:
    """File name -> JSON text of every dashboard, for a rules config (its replica labels, SLO windows)."""
    one = Fold(config["replica_labels"])
    built = {name: build(one) for name, build in DASHBOARDS.items()}
    built["celery-slo.json"] = slo_dashboard(one, parse_burn_alerts(config))
    return {name: json.dumps(dash, indent=2, ensure_ascii=False) + "\n" for name, dash in built.items()}
