"""Rule groups generated from the config's SLOs and schedules (exporter.mixin.slo), appended to the
template's groups by exporter.mixin.rules.

Per SLO, one group (its records, then its alerts, evaluated in that order), recorded once and reused by
the alerts and the SLO dashboard (labels: the group labels, ``slo``, ``kind``):

- ``slo:celery_task_errors:ratio_rate<W>``: the bad fraction of the SLO's events over every window W an
  alert uses, and over the SLO's period. Computed per exporter replica, then folded with
  ``max without (replicas)`` as the other rules are, so an HA pair records one series and a restarted
  replica's counter reset is rate()'s business, not a spike.
- ``slo:celery_task_events:increase<W>``: events over each alert's long window, for the floor
  (``min_events``).
- ``slo:celery_objective:ratio`` and ``slo:celery_error_budget_remaining:ratio`` (1 - spent / budget over
  the period). The names carry ``celery_`` so they never collide with sloth's or pyrra's ``slo:`` series.

Then one ``CelerySLOErrorBudgetBurn`` alert per SLO and ``slo_alerts`` entry (two pages, two tickets by
default: the SRE workbook's multi-window, multi-burn-rate alerts), and per schedule
``CeleryPeriodicTaskMissed`` (beat did not send it) and ``CeleryPeriodicTaskNotSucceeding`` (sent, with no
success since).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.utils import floatToGoString

from exporter.mixin.slo import BurnAlert, Schedule, Slo, seconds

Rule = dict[str, Any]
# What each kind reads. success: bad = failed + lost (retries and revocations are neither);
# latency kinds: bad = the histogram's count minus its bucket at the threshold.
_SUCCEEDED = "celery_task_succeeded_total"
_FAILED, _LOST = "celery_task_failed_total", "celery_task_lost_total"
_HISTOGRAM = {"queue_latency": "celery_task_queue_wait_seconds", "run_time": "celery_task_duration_seconds"}
_KIND_TEXT = {"success": "tasks that succeeded", "queue_latency": "tasks started within {t}s of being sent",
              "run_time": "succeeded tasks that ran within {t}s"}


def glob_regex(glob: str) -> str:
    """An fnmatch-style glob (``*``, ``?``) as an RE2 regex for a PromQL ``=~`` matcher (anchored)."""
    out = []
    for ch in glob:
        literal = ch if ch.isalnum() or ch in "_-:@ " else "\\" + ch
        out.append(".*" if ch == "*" else "." if ch == "?" else literal)
    return "".join(out)


def _matcher(label: str, glob: str) -> str:
    if "*" in glob or "?" in glob:
        return f'{label}=~"{glob_regex(glob)}"'.replace("\\", "\\\\")
    return f'{label}="{glob}"'


class _Sli:
    """PromQL of one SLO's SLI for a window, per replica (summed by the replica key) and folded."""

    def __init__(self, slo: Slo, config: dict[str, Any]) -> None:
        self.slo = slo
        self.key = ", ".join([*config["group_labels"], *config["replica_labels"]])
        self.replicas = ", ".join(config["replica_labels"])
        matchers = [config["selector"]]
        matchers.append(_matcher("task_name", slo.task_name) if slo.task_name else 'task_name!=""')
        if slo.queue:
            matchers.append(_matcher("queue", slo.queue))
        if slo.kind == "run_time":
            matchers.append('state="succeeded"')
        self.sel = ",".join(matchers)

    def _sum(self, fn: str, metric: str, window: str, extra: str = "") -> str:
        sel = self.sel + ("," + extra if extra else "")
        return f"sum by ({self.key}) ({fn}({metric}{{{sel}}}[{window}]))"

    def _bad(self, fn: str, window: str) -> str:
        failed = self._sum(fn, _FAILED, window)
        # celery_task_lost_total appears with the first lost task: until then count it as 0.
        return f"{failed}\n  + ({self._sum(fn, _LOST, window)} or 0 * {failed})"

    def _total(self, fn: str, window: str) -> str:
        if self.slo.kind == "success":
            return f"{self._sum(fn, _SUCCEEDED, window)}\n  + {self._bad(fn, window)}"
        return self._sum(fn, _HISTOGRAM[self.slo.kind] + "_count", window)

    def error_ratio(self, window: str) -> str:
        if self.slo.kind == "success":
            ratio = f"(\n  {self._bad('rate', window)}\n)\n/\n(\n  {self._total('rate', window)}\n  > 0\n)"
        else:
            assert self.slo.threshold is not None
            le = f'le="{floatToGoString(self.slo.threshold)}"'
            good = self._sum("rate", _HISTOGRAM[self.slo.kind] + "_bucket", window, le)
            ratio = f"clamp_min(1 - {good} / ({self._total('rate', window)} > 0), 0)"
        return f"max without ({self.replicas}) (\n{_indent(ratio)}\n)\n"

    def events(self, window: str) -> str:
        return f"max without ({self.replicas}) (\n{_indent(self._total('increase', window))}\n)\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _num(value: Any) -> str:
    return f"{float(value):.12g}"


def _windows(alerts: list[BurnAlert]) -> list[str]:
    return sorted({w for a in alerts for w in (a.long, a.short)}, key=seconds)


def _records(slo: Slo, alerts: list[BurnAlert], config: dict[str, Any]) -> list[Rule]:
    rules: list[Rule] = []
    longs = sorted({a.long for a in alerts}, key=seconds)
    sli, labels = _Sli(slo, config), {"slo": slo.name, "kind": slo.kind}
    for window in sorted({*_windows(alerts), slo.period}, key=seconds):
        rules.append({"record": f"slo:celery_task_errors:ratio_rate{window}",
                      "expr": sli.error_ratio(window), "labels": dict(labels)})
    for window in longs:
        rules.append({"record": f"slo:celery_task_events:increase{window}", "expr": sli.events(window),
                      "labels": dict(labels)})
    # Per deployment (the group labels of the SLI), so dashboards scope it like every other series.
    rules.append({"record": "slo:celery_objective:ratio",
                  "expr": f'0 * slo:celery_task_errors:ratio_rate{slo.period}{{slo="{slo.name}"}} + '
                          f"{_num(slo.objective / 100)}",
                  "labels": dict(labels)})
    rules.append({"record": "slo:celery_error_budget_remaining:ratio",
                  "expr": (f'1 - slo:celery_task_errors:ratio_rate{slo.period}{{slo="{slo.name}"}}'
                           f" / {_num(slo.budget)}"),
                  "labels": {**labels, "period": slo.period}})
    return rules


def _burn_alert(slo: Slo, alert: BurnAlert, config: dict[str, Any]) -> Rule:
    sel, budget = f'{{slo="{slo.name}"}}', _num(slo.budget)
    rate = _num(alert.burn_rate)
    expr = (f"slo:celery_task_errors:ratio_rate{alert.long}{sel} / {budget} > {rate}\n"
            f"and\nslo:celery_task_errors:ratio_rate{alert.short}{sel} / {budget} > {rate}\n"
            f"and\nslo:celery_task_events:increase{alert.long}{sel} >= {slo.min_events}\n")
    group = config["group_labels"]
    # The annotations ask Prometheus for the share of the budget gone over the period (the recorded
    # series of this SLO and deployment; above 100% when overspent) and compute what the long window
    # alone spent: burn rate x window / period.
    match = ",".join(["slo=%q", *(f"{g}=%q" for g in group)])
    args = " ".join(["$labels.slo", *(f"$labels.{g}" for g in group)])
    gone = (f'{{{{ with printf "1 - slo:celery_error_budget_remaining:ratio{{{match}}}" {args} | query }}}}'
            f"{{{{ . | first | value | humanizePercentage }}}}{{{{ else }}}}an unknown share{{{{ end }}}}")
    spent = (f'{{{{ with printf "%f * {seconds(alert.long)} / {seconds(slo.period)}" $value | query }}}}'
             f"{{{{ . | first | value | humanizePercentage }}}}{{{{ end }}}}")
    lasts = (f'{{{{ with printf "{seconds(slo.period)} / %f" $value | query }}}}'
             f"{{{{ . | first | value | humanizeDuration }}}}{{{{ end }}}}")
    value = '{{ $value | printf "%.1f" }}'
    what = _KIND_TEXT[slo.kind].format(t=f"{slo.threshold:g}" if slo.threshold is not None else "")
    scope = " ".join(x for x in (f"task_name {slo.task_name}" if slo.task_name else "",
                                 f"queue {slo.queue}" if slo.queue else "") if x) or "every task"
    return {
        "alert": "CelerySLOErrorBudgetBurn",
        "expr": expr,
        "for": alert.hold,
        "labels": {"severity": alert.severity, "signal": "events", "slo": slo.name, "kind": slo.kind,
                   "long_window": alert.long, "short_window": alert.short, "burn_rate_threshold": rate},
        "annotations": {
            "summary": (f"SLO {{{{ $labels.slo }}}} burns its error budget {value}x too fast; "
                        f"{gone} of its {slo.period} budget is gone."),
            "description": (
                f"SLO {{{{ $labels.slo }}}} ({slo.kind}: {_num(slo.objective)}% of {what}, {scope}; job "
                f"{{{{ $labels.job }}}}) has burnt its error budget at {value}x the sustainable rate over "
                f"the last {alert.long}, and still does over the last {alert.short} (threshold {rate}x). "
                f"The last {alert.long} alone spent {spent} of the {slo.period} budget, {gone} of it is "
                f"gone, and at this rate a whole budget lasts {lasts}."),
            "runbook_url": f"{config['runbook_url'].rstrip('/#')}#celerysloerrorbudgetburn",
        },
    }


def slo_groups(slos: list[Slo], alerts: list[BurnAlert], config: dict[str, Any]) -> list[Rule]:
    """One group per SLO, its records first and then its alerts: rules of a group run in order, so each
    alert reads the ratios of the same evaluation (groups run independently, and an alert in another
    group would read the previous one's, or none when the interval exceeds the 5-minute lookback)."""
    return [{"name": f"celery-exporter.slo.{slo.name}",
             "rules": [*_records(slo, alerts, config), *(_burn_alert(slo, a, config) for a in alerts)]}
            for slo in slos]


def schedule_group(schedules: list[Schedule], config: dict[str, Any]) -> Rule:
    """Missed runs from celery_task_last_event_timestamp_seconds. The series lives in the exporter's
    memory only: max_over_time over twice the allowed gap keeps the value from before an exporter restart,
    and absent_over_time catches a task not seen for that long (or never)."""
    rules: list[Rule] = []
    runbook = config["runbook_url"].rstrip("/#")
    fold = ", ".join([*config["replica_labels"], "queue"])
    # A stopped beat is one ticket (missed), not two: per deployment, so another cluster's stopped beat
    # never hides this one's failing runs.
    keep = ", ".join(config["group_labels"])
    for sched in schedules:
        allowed = seconds(sched.every) + seconds(sched.grace)
        lookback = f"{2 * allowed}s"
        base = f'{config["selector"]},task_name="{sched.task_name}"'

        def late(state: str, base: str = base, lookback: str = lookback, allowed: int = allowed) -> str:
            series = f'celery_task_last_event_timestamp_seconds{{{base},state="{state}"}}'
            newest = f"max without ({fold}, state) (max_over_time({series}[{lookback}]))"
            return (f"(\n  time() - {newest} > {allowed}\n"
                    f"  or\n  max without (state) (absent_over_time({series}[{lookback}]))\n)")

        gap = f"every {sched.every}" + (f" with a grace of {sched.grace}" if sched.grace != "0s" else "")
        common = {"for": config["schedule_for"],
                  "labels": {"severity": "warning", "signal": "events", "task_name": sched.task_name}}
        rules.append({
            "alert": "CeleryPeriodicTaskMissed", "expr": late("sent") + "\n", **common,
            "annotations": {
                "summary": f"Periodic task {sched.task_name} missed its schedule.",
                "description": (f"{sched.task_name} (job {{{{ $labels.job }}}}) runs {gap}, but no "
                                "task-sent event has been seen for longer than that. Is Celery beat running, "
                                "and is the task still in its schedule?"),
                "runbook_url": f"{runbook}#celeryperiodictaskmissed",
            },
        })
        rules.append({
            "alert": "CeleryPeriodicTaskNotSucceeding",
            "expr": f"{late('succeeded')}\nunless on ({keep}, task_name)\n{late('sent')}\n", **common,
            "annotations": {
                "summary": f"Periodic task {sched.task_name} is sent but does not succeed.",
                "description": (f"{sched.task_name} (job {{{{ $labels.job }}}}) runs {gap}: beat sends it, "
                                f"but no run has succeeded for longer than that. Its runs fail, are lost, or "
                                f"are not picked up by a worker."),
                "runbook_url": f"{runbook}#celeryperiodictasknotsucceeding",
            },
        })
    return {"name": "celery-exporter.schedules", "rules": rules}
