"""Pure: turn what RabbitMQ tells us about its queues into queue kinds and a ``PollResult``.

Rules, in order (explicit config globs override all of them; Celery internals are dropped first):

1. A queue's message TTL, dead-letter exchange (DLX) and dead-letter routing key come from its
   ``x-`` arguments, else from its effective policy (``rabbitmqctl set_policy ...``), as RabbitMQ
   applies them.
2. Where its dead letters go: the queues bound to its DLX (only those bound with the dead-letter routing
   key, when it has one and such bindings exist); with the default exchange ``""``, the queue named by
   the routing key.
3. Terminal queues: those a queue *without* a TTL dead-letters into (so they receive rejected/failed
   messages), and those whose name matches ``dead_letter_queues``.
4. Retry (delay) queue: has a TTL and a DLX, and its dead letters go back to at least one non-terminal
   queue, or to an exchange whose bindings we cannot see (the seeds' ``retry_2s`` -> ``task_exchange``
   -> ``task_queue``). A TTL queue whose dead letters only reach terminal queues is a task queue with
   expiring messages.
5. Dead-letter queue: no TTL, and some non-retry queue dead-letters into it; or named like one.
6. Everything else is a task queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.brokers.model import Kind, PollResult, QueueDepth, Rules, parse_timestamp


@dataclass(frozen=True)
class DeadLettering:
    ttl: bool
    dlx: str | None
    dlrk: str | None


def dead_lettering(queue: Mapping[str, Any]) -> DeadLettering:
    args = queue.get("arguments") or {}
    policy = queue.get("effective_policy_definition") or {}
    if not isinstance(args, Mapping):
        args = {}
    if not isinstance(policy, Mapping):  # older servers send [] for "no policy"
        policy = {}
    ttl = args.get("x-message-ttl") is not None or policy.get("message-ttl") is not None
    dlx = args.get("x-dead-letter-exchange", policy.get("dead-letter-exchange"))
    dlrk = args.get("x-dead-letter-routing-key", policy.get("dead-letter-routing-key"))
    return DeadLettering(ttl, None if dlx is None else str(dlx), None if dlrk is None else str(dlrk))


def classify(queues: Sequence[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]],
             rules: Rules) -> dict[str, Kind]:
    """Kind of every non-excluded queue, from queue rows and binding rows of the management API."""
    dl = {str(q["name"]): dead_lettering(q) for q in queues if "name" in q}
    bound: dict[str, list[tuple[str, str]]] = {}
    for b in bindings:
        if b.get("destination_type") == "queue" and b.get("source"):
            row = (str(b.get("routing_key", "")), str(b["destination"]))
            bound.setdefault(str(b["source"]), []).append(row)

    def targets(name: str) -> set[str] | None:
        """Queues ``name`` dead-letters into; None when its DLX has no visible binding."""
        d = dl[name]
        if d.dlx is None:
            return set()
        if d.dlx == "":
            return {d.dlrk} if d.dlrk else set()
        rows = bound.get(d.dlx)
        if not rows:
            return None
        if d.dlrk is not None:
            exact = {q for rk, q in rows if rk == d.dlrk}
            if exact:
                return exact
        return {q for _, q in rows}

    reach = {name: targets(name) for name in dl}
    named_dlq = {n for n in dl if rules.configured_kind(n) == "dlq"}
    terminal = set(named_dlq)
    for name, d in dl.items():
        if d.dlx is not None and not d.ttl:
            terminal |= {t for t in reach[name] or () if t in dl and not dl[t].ttl}
    retry = set()
    for name, d in dl.items():
        went = reach[name]
        if d.ttl and d.dlx is not None and (went is None or went - terminal):
            retry.add(name)
    dead = set(named_dlq)
    for name in dl:
        if name not in retry:
            dead |= {t for t in reach[name] or () if t in dl and not dl[t].ttl and t not in retry}

    kinds: dict[str, Kind] = {}
    for name in dl:
        if rules.excluded(name):
            continue
        kinds[name] = rules.configured_kind(name) or (
            "retry" if name in retry else "dlq" if name in dead else "task"
        )
    return kinds


def management_result(queues: Sequence[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]],
                      rules: Rules) -> PollResult:
    """A ``PollResult`` from ``GET /api/queues/<vhost>`` and ``GET /api/bindings/<vhost>`` rows. A queue
    whose counts the management database has not published yet (just declared) is left out."""
    kinds = classify(queues, bindings, rules)
    task: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    oldest: dict[str, float] = {}
    for q in queues:
        name = str(q.get("name", ""))
        kind = kinds.get(name)
        ready, unacked = q.get("messages_ready"), q.get("messages_unacknowledged")
        if kind is None or not isinstance(ready, (int, float)):
            continue
        unacked = unacked if isinstance(unacked, (int, float)) else 0
        consumers = q.get("consumers")
        if kind == "task":
            n_consumers = float(consumers) if isinstance(consumers, (int, float)) else None
            task[name] = QueueDepth(float(ready), float(unacked), n_consumers)
        elif kind == "retry":
            retry[name] = float(ready + unacked)
        else:
            dlq[name] = float(ready + unacked)
            ts = parse_timestamp(q.get("head_message_timestamp"))
            if ts is not None and ready + unacked:
                oldest[name] = ts
    return PollResult(task, retry, dlq, oldest)


def amqp_result(counts: Mapping[str, tuple[int, int] | None], rules: Rules) -> PollResult:
    """A ``PollResult`` from passive declares: ``name -> (ready messages, consumers)`` or None when the
    queue does not exist. Without the management API only names classify a queue."""
    task: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    for name, got in counts.items():
        if got is None or rules.excluded(name):
            continue
        ready, consumers = got
        kind = rules.configured_kind(name) or "task"
        if kind == "task":
            task[name] = QueueDepth(float(ready), None, float(consumers))
        elif kind == "retry":
            retry[name] = float(ready)
        else:
            dlq[name] = float(ready)
    return PollResult(task, retry, dlq)
