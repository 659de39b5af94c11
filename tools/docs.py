"""Generates the reference tables of README.md, docs/metrics.md and docs/configuration.md from the code
(``MetricSpec`` declarations and the config ``OPTIONS`` table). Run through ``python -m tools.generate``.

Generated parts of README.md sit between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.collectors import all_specs
from exporter.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    if value is None or value == () or value == {}:
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in all_specs():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {_cell(spec.help)} |")
    return "\n".join(rows)


def config_table() -> str:
    rows = ["| flag | environment variable | YAML key | default | meaning |", "|---|---|---|---|---|"]
    rows.append(
        "| `--config` | `CELERY_EXPORTER_CONFIG` | - | (none) | YAML file with any of the keys below. |"
    )
    for opt in OPTIONS:
        default = _cell(_default(opt.default))
        flags = " ".join(f"`{f}`" for f in opt.all_flags)  # the documented spelling, then older ones
        rows.append(f"| {flags} | `{opt.env}` | `{opt.name}` | `{default}` | {_cell(opt.help)} |")
    return "\n".join(rows)


GENERATED = {"metrics": metrics_table, "configuration": config_table}

METRICS_DOC = """# Metrics reference

Generated from the code by `python -m tools.generate`; `tests/test_docs.py` fails when it drifts.
Every metric below is served on `/metrics`. Task metrics never carry the worker's name (pods churn);
label values are bounded by `--max-task-names`, `--max-exception-types`, `--max-queues` and `--max-workers`,
and what overflows is folded into `__overflow__` and counted in `celery_exporter_label_overflow_total`;
the total of per-task series is bounded by `--max-series` (see "Series cap" below). Every label value is
valid UTF-8 without NUL bytes and at most 255 bytes long, whatever a publisher sends.
The exporter also serves client_python's standard `process_*`, `python_info` and `python_gc_*` metrics.

<!-- BEGIN GENERATED: metrics -->
<!-- END GENERATED: metrics -->

## How deliveries are counted

Celery names a task only in `task-sent` and `task-received`; `task-started`, `task-succeeded`,
`task-failed`, `task-retried`, `task-rejected` and `task-revoked` carry just the uuid. The exporter pairs
them by uuid, whatever order they arrive in:

* **Every delivery under its own name.** A `Reject(requeue=False)` sends `task-failed` and then a
  `task-rejected`; a dead-letter exchange (seed 000's TTL ladder) brings the message back as a new
  `task-received`. Finished tasks are remembered (`--max-finished-tasks`, uuid -> name and queue), so the
  `task-rejected` and every later delivery count under the task's name and queue.
* **`task_name="unknown"`** appears only for a task the exporter never saw named: its nameless events are
  held, counted nowhere, until a `task-sent`/`task-received` names it (then they count under that name;
  an expired task's `task-revoked` often overtakes its `task-sent`) or 10 s pass without one (then they
  count under `unknown`, and `celery_exporter_unknown_tasks_total` goes up by one). Nothing counted
  under `unknown` ever moves to another series: counters never go backwards.
  In practice `unknown` means tasks already running when the exporter started that the in-flight
  inventory (`--inventory-timeout`, see "Restarts and gaps" in `docs/event-streams.md`) did not name.
* **Idempotent where Celery's delivery is not.** A repeated terminal event (an AMQP redelivery, the
  second `task-failed` of a hard time limit) and a `task-started` after the task's end change nothing but
  `celery_exporter_events_ignored_total{reason}`. A number a float cannot hold (an integer `runtime` of
  400 digits) refuses the whole event (`celery_exporter_events_invalid_total{reason="bad_number"}`)
  before any counter moves.
* **Durations.** Each task keeps the start times of its open attempts: `task-retried` closes the oldest,
  the final event the newest, so a retry's `task-started` that overtakes the previous attempt's
  `task-retried` (retries with jitter) loses nothing, and each finished attempt gets one sample.
* **Exception classes** come from what Celery sends: `ValueError('x')` gives `ValueError`; billiard's
  wrapper `ExceptionWithTraceback()` and classes with their own repr (`Reject`) take the class from the
  traceback's last line (`TimeLimitExceeded`, `WorkerLostError`, `Reject`); module paths in the text are
  kept (`requests.exceptions.HTTPError`).

## Lost tasks

`celery_task_lost_total{task_name,queue}` counts started tasks that ended without a final event. A task
is tied to the worker that sent its `task-started`; it is lost when that worker is silent past
`--worker-timeout` (a SIGKILL, an OOM kill, a lost node), sends `worker-offline` while still running it,
or reports in two heartbeats running fewer active tasks than the exporter holds for it (the oldest
started before the heartbeat go first: `Ignore` ends a task without any event, and clears within one
heartbeat interval). A lost task stops counting in `celery_tasks_active`; if an event for it comes later
(a redelivered message finishing elsewhere), it counts as usual.

## Missed events

`celery_worker_tasks_accepted_total{worker}` is the `processed` of the worker's heartbeats: the tasks it
accepted (started) since it started; it starts again from 0 when the worker restarts.
`celery_exporter_task_events_missed_total` counts the task starts those heartbeats report that never
arrived as `task-started` events (per worker: `celery_worker_task_events_missed_total{worker}`),
comparing each heartbeat's `processed` with the starts received by the next heartbeat, from the first
heartbeat the exporter sees, so a clean run and the exporter's own restart count 0. A worker without task
events (no `-E`) shows all its starts as missed; tasks of a worker that died before its next heartbeat are
not seen. Details: "Restarts and gaps" in `docs/event-streams.md`.

## Revoke reasons

`celery_task_revoked_total{reason}`: `terminated` (revoked with `terminate=True` while running),
`expired` (its `expires` passed before a worker ran it) or `revoked` (revoked before it ran), from the
`task-revoked` event's own `terminated` and `expired` flags. `reason="revoked"` starts at zero for every
task name; the other two appear with their first occurrence.

## Series cap

`--max-series` (default 50,000) bounds the total of series across the per-task families (each task
name and queue pair costs 11 counter and gauge series, each exception class one more, each histogram its
buckets plus 3). A new series past the cap is folded into `task_name="__overflow__",queue="__overflow__"`
(and `exception="__overflow__"`), and each fold is counted in
`celery_exporter_label_overflow_total{label="series"}`. The per-label caps alone would multiply (1,000
names times 1,000 queues); 50,000 series keep a full scrape well under a second on one core.
"""

# The stall signals (exporter/collectors/stalls.py): appended to METRICS_DOC.
STALLS_DOC = """
## Stalls: queue age, running age, last events

What each broker and configuration gives for `celery_queue_oldest_task_age_seconds{queue}` (the wait of
the oldest task still waiting: from its `task-sent` event, or its ETA/countdown if later, until a
worker's `task-started`; a task a worker reserved but has not started still waits):

- Redis, `task_send_sent_event` on: exact, from events; the Redis head (next item) can only raise it,
  e.g. for tasks sent before the exporter started.
- Redis, off: a lower bound. Every `--poll-interval` the poller reads the task id of the message at the
  tail of each priority list of the queue (kombu LPUSHes and BRPOPs, so the tail is the oldest) and
  counts how long the same id stays there. A message a worker has prefetched has left the list, so
  prefetched tasks are not seen.
- RabbitMQ, on: exact, from events.
- RabbitMQ, off: 0. Queues are never peeked (a `basic.get` and requeue would change delivery counts and,
  on quorum queues, could dead-letter the message).

The value is 0 for a queue with no waiting task known (an empty queue). Waiting tasks are tracked by
uuid apart from the task table, at most `--max-tracked-tasks` of them (default 100,000); past that, one
newly sent task in 64 is kept as a sample (at most a quarter of `--max-tracked-tasks` samples) and the
rest are only counted. Queues drain roughly first in, first out, so the tasks tracked are the oldest:
under a backlog of 1,000,000 the value stays exact while any of the 100,000 oldest still waits, then
becomes a lower bound, the age of the oldest sample still waiting (at most 64 sends behind the truth
while samples last). A task tracked for
longer than `--task-max-age` is dropped (its `task-started` was lost). Events missed while the event
stream was disconnected can leave a started task counted as waiting until then; the alert
`CeleryQueueOldestTaskTooOld` is gated on a connected stream. `benchmarks/backlog_bench.py` measures the
memory and the value against the truth under such a backlog.

`celery_task_oldest_running_age_seconds{task_name,queue}` is tracked the same way, apart from the task
table (at most `--max-tracked-tasks` running tasks), so a task running for six hours while millions flow
past is still reported. A task stops counting when it ends (succeeded, failed, revoked, rejected without
requeue, or retried), and when its worker is lost (silent past `--worker-timeout`, `worker-offline`, or
heartbeats that report fewer running tasks than the exporter holds for it: `celery_task_lost_total`).

`celery_task_last_event_timestamp_seconds{task_name,queue,state}` is the newest event's own timestamp
(the worker's or producer's clock, adjusted by the event's `utcoffset`) for `state` in `sent`,
`started`, `succeeded`, `failed` and `retried`. An out-of-order older event never moves it back. Each
series counts against `--max-series`. It survives nothing across restarts: after the exporter restarts a
series appears with the next such event; alert on it with `max_over_time` over a window longer than the
schedule ([alerting.md](alerting.md#a-periodic-task-that-missed-its-schedule)).
"""

CONFIG_DOC = """# Configuration reference

Generated from the code by `python -m tools.generate`; `tests/test_docs.py` fails when it drifts.
Precedence: command-line flag > environment variable > YAML file (`--config`) > default. An unknown YAML
key or `CELERY_EXPORTER_*` variable, a bad value, a missing broker URL or one that can never work (a
transport kombu does not know or whose library is not installed, a Redis database that is not a number)
stops the exporter with exit status 2 and one line naming the flag and where the value came from.
Flags follow the Prometheus exporter-toolkit spellings (`--web.listen-address`, `--log.level`, ...); where
a second spelling is listed, it is the older one and still works. `--web.listen-address=[HOST]:PORT` sets
the host and port together (`:9808` is every address); a `--listen-address` or `--port` given at a
higher precedence (a flag over an environment variable) still wins for its part.

Lists take comma-separated values in flags and environment variables; mappings (`task_routes`,
`broker_transport_options`) take YAML mappings in the file, `glob=queue,...` or a JSON object on the
command line. `celery-exporter --help` shows the same options in groups (broker, events and state,
polling, web, logging).

<!-- BEGIN GENERATED: configuration -->
<!-- END GENERATED: configuration -->
"""


def checks_doc() -> str:
    """The diagnosis checks (exporter/diagnosis, exporter/collectors/checks.py): appended to METRICS_DOC."""
    from exporter.diagnosis import CHECK_NAMES

    names = ", ".join(f"`{n}`" for n in CHECK_NAMES)
    return f"""
## Diagnosis checks

`celery_exporter_check_status{{check}}` is the verdict of each check of `celery-exporter doctor`, computed
in the running exporter from what it has seen (a state snapshot, the last poll results and the event
stream's state, at most every 2 seconds, never by asking the broker or a worker on the scrape path): `0`
ok, `1` warning, `2` problem, `-1` not yet known (too early to tell, or nothing to judge yet: no task
received, no heartbeat). `check` takes one value per check: {names}. What each means and its fix:
[troubleshooting.md](troubleshooting.md#the-checks); the page at `/` shows the evidence.

```promql
celery_exporter_check_status == 2        # the checks that found a problem
```
"""


def render(text: str) -> str:
    for name, make in GENERATED.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.DOTALL
        )
        table = make()

        def fill(m: re.Match[str], table: str = table) -> str:
            return m.group(1) + table + "\n" + m.group(2)

        text = pattern.sub(fill, text)
    return text


def targets() -> dict[Path, str]:
    out = {
        ROOT / "docs" / "metrics.md": render(METRICS_DOC + STALLS_DOC + checks_doc()),
        ROOT / "docs" / "configuration.md": render(CONFIG_DOC),
    }
    readme = ROOT / "README.md"
    if readme.exists():
        out[readme] = render(readme.read_text(encoding="utf-8"))
    return out
