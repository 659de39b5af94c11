"""The checks the event stream answers: are workers and producers sending the events the metrics are
made of, is the stream itself healthy, and are the workers' clocks right. Pure functions of ``Evidence``.
"""

from __future__ import annotations

from exporter.diagnosis.evidence import Evidence
from exporter.diagnosis.model import Result, Status

MAX_SKEW = 1.0  # seconds: waits and ages are worker timestamps against ours, so more shows in them
RECONNECTS_WARN = 3  # reconnects while watched, before the stream counts as reconnecting often
RECONNECTS_PER_HOUR = 6.0

WORKER_EVENTS_FIX = (
    "Give the exporter the workers' broker: the same --broker-url host, Redis database (/0) or RabbitMQ "
    "virtual host, and the same global_keyprefix in --broker-transport-options, and check that a worker "
    "runs (celery -A app inspect ping).")


def _not_connected(name: str, ev: Evidence) -> Result | None:
    if ev.connects:
        return None
    why = f" ({ev.last_error})" if ev.last_error else ""
    return Result(name, Status.UNKNOWN, f"Not connected to the broker yet{why}.")


def worker_events(ev: Evidence) -> Result:
    name = "worker_events"
    early = _not_connected(name, ev)
    if early:
        return early
    if ev.worker_events:
        names = [w.name for w in ev.workers]
        return Result(name, Status.OK, f"{len(names)} worker(s) send events.", tuple(names[:20]),
                      details={"workers": names})
    if not ev.warmed_up:
        return Result(name, Status.UNKNOWN, f"No worker event yet after {ev.watched:.0f}s of watching.")
    waiting = sum(q.depth for q in ev.queues if q.kind == "task")
    evidence = [f"0 worker events in {ev.watched:.0f}s (a worker sends worker-heartbeat every 2s)"]
    if waiting:
        evidence.append(f"{waiting:.0f} messages wait in the task queues the exporter polls")
    return Result(name, Status.PROBLEM, "No worker event at all: no worker runs, or the workers use another "
                  "broker, Redis database, virtual host or key prefix than the exporter.", tuple(evidence),
                  WORKER_EVENTS_FIX, {"worker_events": 0, "queued": waiting})


def task_events(ev: Evidence) -> Result:
    """Workers whose heartbeats say they accepted tasks while the exporter watched, without one task
    event carrying their name: started without ``-E``."""
    name = "task_events"
    known = [w for w in ev.workers if w.processed is not None and w.task_events is not None]
    if not known:
        return Result(name, Status.UNKNOWN, "No worker heartbeat with a processed count yet.")
    busy = [w for w in known if (w.processed or 0) > 0]
    silent = [w for w in busy if w.task_events == 0]
    if silent:
        return Result(
            name, Status.PROBLEM,
            f"{len(silent)} worker(s) accept tasks but send no task events, so their tasks are not counted.",
            tuple(f"{w.name}: accepted {w.processed} task(s) while watched, sent 0 task events"
                  for w in silent[:20]),
            "Start these workers with -E (celery -A app worker -E) or set worker_send_task_events = True "
            "in their Celery config.", {"workers": [w.name for w in silent]})
    if not busy:
        return Result(name, Status.UNKNOWN, "No worker has accepted a task while watched.")
    return Result(name, Status.OK, f"{len(busy)} busy worker(s) send task events.",
                  tuple(f"{w.name}: {w.task_events} task events" for w in busy[:20]))


def task_sent_events(ev: Evidence) -> Result:
    name = "task_sent_events"
    received, sent = ev.count("task-received"), ev.count("task-sent")
    if not received and not sent:
        return Result(name, Status.UNKNOWN, "No task-received or task-sent event yet.")
    if sent:
        return Result(name, Status.OK, "Producers send task-sent events.",
                      (f"{sent} task-sent, {received} task-received",))
    return Result(
        name, Status.PROBLEM,
        "Workers receive tasks but no producer sends task-sent events: the queue label comes from "
        "--task-routes/--default-queue, queue wait is measured from task-received (time spent in the "
        "broker is not seen), and the oldest waiting task's age is a lower bound.",
        (f"{received} task-received, 0 task-sent",),
        "Set task_send_sent_event = True in the Celery config of every process that sends tasks "
        "(.delay(), .apply_async(), beat).", {"task_received": received, "task_sent": 0})


def clock_skew(ev: Evidence) -> Result:
    name = "clock_skew"
    known = [w for w in ev.workers if w.clock_skew is not None]
    if not known:
        return Result(name, Status.UNKNOWN, "No worker heartbeat yet.")
    off = [w for w in known if abs(w.clock_skew or 0.0) > MAX_SKEW]
    skews = {w.name: round(w.clock_skew or 0.0, 3) for w in known}
    if off:
        return Result(
            name, Status.PROBLEM,
            f"{len(off)} worker clock(s) differ from the exporter's by more than {MAX_SKEW:g}s: every "
            "queue wait, runtime age and event age computed from their timestamps is off by as much.",
            tuple(f"{w.name}: {w.clock_skew:+.1f}s" for w in off[:20]),
            "Synchronise the clocks of the worker hosts and the exporter's host with NTP "
            "(chrony or systemd-timesyncd); containers take the host's clock.", {"skew_seconds": skews})
    return Result(name, Status.OK, f"{len(known)} worker clock(s) within {MAX_SKEW:g}s of the exporter's.",
                  details={"skew_seconds": skews})


def event_stream(ev: Evidence) -> Result:
    name = "event_stream"
    if not ev.connects:
        if not ev.warmed_up:
            return Result(name, Status.UNKNOWN, "Connecting to the broker.")
        return Result(name, Status.PROBLEM, "Cannot connect to the broker's event stream.",
                      (ev.last_error or "no error reported",),
                      "Check --broker-url (host, port, credentials, TLS) and that the broker is reachable "
                      "from the exporter.")
    evidence = (f"{ev.reconnects} reconnect(s) in {ev.watched:.0f}s",) + (
        (f"last error: {ev.last_error}",) if ev.last_error else ())
    if not ev.connected:
        return Result(name, Status.PROBLEM, "The event stream is disconnected.", evidence,
                      "Check that the broker is up and reachable; the exporter reconnects on its own.")
    hourly = ev.reconnects * 3600.0 / max(ev.watched, 600.0)
    if ev.reconnects >= RECONNECTS_WARN and hourly > RECONNECTS_PER_HOUR:
        return Result(name, Status.WARNING, "The event stream reconnects often: events sent while it is "
                      "away are lost.", evidence,
                      "Look at the broker's connection limits and the network between them (and, on "
                      "RabbitMQ, the event queue's --event-queue-ttl/--event-queue-expires).",
                      {"reconnects": ev.reconnects})
    return Result(name, Status.OK, "Connected.", evidence, details={"reconnects": ev.reconnects})


def events_missed(ev: Evidence) -> Result:
    name = "events_missed"
    if ev.events_missed:
        per_worker = tuple(f"{w.name}: {w.missed} missed" for w in ev.workers if w.missed)[:20]
        return Result(name, Status.WARNING, "Workers' heartbeats report task starts the event stream never "
                      "delivered.", (f"{ev.events_missed} task start(s) missed", *per_worker),
                      "Raise --event-queue-max-length and --event-queue-max-bytes, and keep the exporter "
                      "connected (see the event_stream check).", {"events_missed": ev.events_missed})
    return Result(name, Status.OK, "No task event missed.")
