"""The checks the pollers and the caps answer: does the exporter read the workers' queues with the
workers' transport options, can it see RabbitMQ's retry and dead-letter queues, do dead letters reach a
queue, and has a cardinality cap folded values into ``__overflow__``. Pure functions of ``Evidence``.
"""

from __future__ import annotations

from exporter.diagnosis.evidence import Evidence
from exporter.diagnosis.model import Result, Status
from exporter.labels import OVERFLOW_LABEL

# overflow key of the state -> (what folded, the option that caps it)
CAPS = {
    "task_name": ("task name", "max_task_names"),
    "queue": ("queue", "max_queues"),
    "series": ("new per-task series", "max_series"),
    "exception": ("exception type", "max_exception_types"),
    "worker": ("worker name", "max_workers"),
}


def _rabbitmq(ev: Evidence) -> bool:
    return ev.settings.broker_scheme.startswith(("amqp", "pyamqp", "librabbitmq"))


def _redis(ev: Evidence) -> bool:
    return ev.settings.broker_scheme.startswith(("redis", "rediss", "sentinel", "socket"))


def queue_keys(ev: Evidence) -> Result:
    """Redis: a kombu binding is written by every worker that consumes a queue, in its database under its
    global_keyprefix; none found means the exporter reads another database or prefix."""
    name = "queue_keys"
    if not ev.poll_sources:
        return Result(name, Status.OK, "This broker is not polled for queues.")
    if not ev.polled:
        return Result(name, Status.UNKNOWN, "No poll of the broker has finished yet.")
    tasks = [q for q in ev.queues if q.kind == "task" and q.name != OVERFLOW_LABEL]
    if _redis(ev):
        declared = [q for q in tasks if q.reason.startswith(("kombu binding", "its key existed"))]
        if declared:
            return Result(name, Status.OK, f"{len(declared)} task queue(s) declared in the broker.",
                          tuple(q.name for q in declared[:20]))
        if not ev.polled_enough:  # the workers may be declaring their queues right now
            return Result(name, Status.UNKNOWN, "No queue found yet.")
        only_events = [q.name for q in tasks]
        return Result(
            name, Status.PROBLEM,
            "No Celery queue is declared where the exporter looks (no _kombu.binding.* key): the exporter "
            "reads another Redis database or global_keyprefix than the workers, so every queue depth is 0.",
            tuple(f"queue {n!r} is named by events but has no key or binding here" for n in only_events[:20])
            or ("no _kombu.binding.* key found",),
            "Use the workers' database in --broker-url (redis://host:6379/0) and their "
            "broker_transport_options in --broker-transport-options (global_keyprefix).",
            {"queues_without_keys": only_events})
    if tasks:
        return Result(name, Status.OK, f"{len(tasks)} task queue(s) found.",
                      tuple(q.name for q in tasks[:20]))
    if ev.queues_seen and ev.polled_enough:
        return Result(name, Status.PROBLEM, "Events name queues the broker poll does not find: the exporter "
                      "reads another virtual host than the workers.", tuple(ev.queues_seen[:20]),
                      "Use the workers' virtual host in --broker-url (amqp://host:5672/<vhost>).",
                      {"queues_seen": list(ev.queues_seen)})
    return Result(name, Status.UNKNOWN, "No task queue found yet.")


def transport_options(ev: Evidence) -> Result:
    name = "transport_options"
    if not ev.polled:
        return Result(name, Status.UNKNOWN if ev.poll_sources else Status.OK,
                      "No poll of the broker has finished yet." if ev.poll_sources else "Not polled.")
    if ev.mismatched_options:
        opts = ", ".join(ev.mismatched_options)
        return Result(
            name, Status.PROBLEM,
            f"The broker's keys were written with another {opts} than the exporter is configured with: "
            "priority sub-queues and bindings are misread until the exporter has the same options.",
            tuple(f"{o} differs (celery_exporter_poll_option_mismatch{{option=\"{o}\"}} 1)"
                  for o in ev.mismatched_options),
            "Pass the workers' broker_transport_options to the exporter, for example "
            "--broker-transport-options '{\"sep\": \":\", \"priority_steps\": [0, 3, 6, 9]}'.",
            {"mismatched": list(ev.mismatched_options)})
    return Result(name, Status.OK, "The transport options match what the broker holds.")


def management_api(ev: Evidence) -> Result:
    name = "management_api"
    if not _rabbitmq(ev):
        return Result(name, Status.OK, f"Not needed for {ev.settings.broker_scheme or 'this broker'}.")
    if ev.settings.management_api:
        return Result(name, Status.OK, "The RabbitMQ management API is used.")
    return Result(
        name, Status.PROBLEM,
        "RabbitMQ without its management API: queues are read by passive declares only, so retry and "
        "dead-letter queues are found only by the names configured, and unacked messages, publish counts "
        "and dead-letter routes are not visible.",
        ("--rabbitmq-management-url is not set",),
        "Set --rabbitmq-management-url http://USER:PASSWORD@HOST:15672/ (a user with the monitoring tag).")


def dead_letter_routes(ev: Evidence) -> Result:
    name = "dead_letter_routes"
    if not _rabbitmq(ev):
        return Result(name, Status.OK, "This broker has no dead-letter exchanges.")
    if not ev.settings.management_api:
        return Result(name, Status.UNKNOWN, "Dead-letter routes are visible through the management API only.")
    if not ev.polled:
        return Result(name, Status.UNKNOWN, "No poll of the broker has finished yet.")
    if ev.unrouted_dead_letters:
        return Result(
            name, Status.PROBLEM,
            "Queues dead-letter into exchanges with no queue bound: RabbitMQ drops those messages, and no "
            "dead-letter queue is classified for them.",
            tuple(f"queue {q!r} dead-letters into exchange {x!r}, which routes to no queue"
                  for q, x in sorted(ev.unrouted_dead_letters.items())[:20]),
            "Bind a dead-letter queue to each such exchange with the queue's x-dead-letter-routing-key "
            "(rabbitmqadmin declare binding source=<dlx> destination=<dlq> routing_key=<key>).",
            {"unrouted": dict(ev.unrouted_dead_letters)})
    dlqs = [q.name for q in ev.queues if q.kind == "dlq"]
    return Result(name, Status.OK, f"Every dead-letter route reaches a queue ({len(dlqs)} DLQ(s)).",
                  tuple(dlqs[:20]))


def caps(ev: Evidence) -> Result:
    name = "caps"
    limits = ev.settings.caps
    folded: dict[str, int] = {}
    lines: list[str] = []
    for key, n in sorted(ev.overflow.items()):
        what, option = CAPS.get(key, (key, ""))
        folded[option or key] = n
        lines.append(f"{n} event(s) had their {what} folded into {OVERFLOW_LABEL}"
                     + (f" (--{option.replace('_', '-')} {limits[option]})" if option in limits else ""))
    if ev.evicted_for_capacity:
        folded["max_tracked_tasks"] = ev.evicted_for_capacity
        lines.append(f"{ev.evicted_for_capacity} tracked task(s) dropped at --max-tracked-tasks "
                     f"{limits.get('max_tracked_tasks', '?')}")
    polled_over = [q for q in ev.queues if q.name == OVERFLOW_LABEL]
    if polled_over:
        folded.setdefault("max_queues", 0)
        lines.append(f"polled queues over --max-queues {limits.get('max_queues', '?')} are summed into "
                     f"queue=\"{OVERFLOW_LABEL}\"")
    if folded:
        flags = ", ".join(f"--{o.replace('_', '-')}" for o in folded)
        return Result(name, Status.PROBLEM, "A cardinality cap is reached: values beyond it are folded into "
                      f"{OVERFLOW_LABEL} and lose their own series.", tuple(lines),
                      f"Raise {flags}, or find what mints so many distinct values (a task name or queue "
                      "built from data).", {"folded": folded})
    return Result(name, Status.OK, "No cap reached.", details={"caps": dict(limits)})
