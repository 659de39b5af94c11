"""Pure: turn what RabbitMQ tells us about its queues into queue kinds and a ``PollResult``.

``model.kind_of`` is the one place that orders the evidence (see its docstring): explicit configuration,
then what the broker says, then name patterns. ``classify`` gathers the broker's evidence from management-API
rows; ``amqp_result`` from passive declares (only consumers); ``management_result`` builds the result,
preferring live passive-declare counts where the poller read them. Whether a queue name can be sent to
the broker at all is ``model.name_problem``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.brokers.model import (
    INTERNAL_EXCHANGES,
    Kind,
    Rules,
    kind_of,
    parse_timestamp,
    why_kind,
)
from exporter.status import PollResult, QueueDepth

# ``name -> (ready messages, consumers)`` from a passive declare, None when the queue does not exist.
LiveCounts = Mapping[str, "tuple[int, int] | None"]


@dataclass(frozen=True)
class DeadLettering:
    ttl: bool
    dlx: str | None
    dlrk: str | None


def dead_lettering(queue: Mapping[str, Any]) -> DeadLettering:
    """TTL, DLX and dead-letter routing key from the ``x-`` arguments, else the effective policy."""
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def classify(queues: Sequence[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]],
             rules: Rules) -> dict[str, Kind]:
    """Kind of every reported queue, from queue rows and binding rows of the management API (see
    ``_classify``)."""
    return _classify(queues, bindings, rules).kinds


@dataclass
class Classified:
    kinds: dict[str, Kind]
    fed: set[str]  # queues some queue dead-letters into
    reasons: dict[str, str]  # why each kind (``why_kind``)
    unrouted: dict[str, str]  # failure route -> its DLX, whose letters reach no existing queue


def _classify(queues: Sequence[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]],
              rules: Rules) -> Classified:
    """Kind of every reported queue, the queues some queue dead-letters into, the reasons, and the
    failure routes whose dead letters reach no queue.

    Dead-lettering evidence (step 2 of ``kind_of``): where a queue's dead letters go is the queues bound
    to its DLX (only those bound with its dead-letter routing key, when it has one and such bindings
    exist), or with the default exchange ``""`` the queue the routing key names. A queue with a TTL and
    a DLX whose letters go back to a non-terminal queue, or to an exchange whose bindings we cannot see
    (the seeds' ``retry_2s`` -> ``task_exchange``), is a retry queue; a TTL queue whose letters only
    reach terminal queues is a work queue with expiring messages. A queue without a TTL that a non-retry
    queue dead-letters into is a DLQ. Work evidence (step 3): consumers, or a binding from an exchange
    that is not the default one, not Celery's event/control exchanges, and not the DLX of a non-retry
    queue (a failure route)."""
    dl = {str(q["name"]): dead_lettering(q) for q in queues if "name" in q}
    consumers = {str(q["name"]): _number(q.get("consumers")) or 0.0 for q in queues if "name" in q}
    bound: dict[str, list[tuple[str, str]]] = {}
    sources: dict[str, set[str]] = {}
    for b in bindings:
        if b.get("destination_type") == "queue" and b.get("source"):
            row = (str(b.get("routing_key", "")), str(b["destination"]))
            bound.setdefault(str(b["source"]), []).append(row)
            sources.setdefault(row[1], set()).add(str(b["source"]))

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

    def worked(dead_letter_exchanges: set[str | None]) -> set[str]:
        return {n for n in dl if consumers[n] > 0 or any(
            s not in dead_letter_exchanges and s not in INTERNAL_EXCHANGES for s in sources.get(n, ()))}

    reach = {name: targets(name) for name in dl}
    # Terminal: where failures end up, by configuration or name (kind_of without dead-lettering
    # evidence; until retry queues are known, a binding from any DLX is no sign of work), or as the DLX
    # target of a queue without a TTL.
    maybe_worked = worked({d.dlx for d in dl.values()})
    terminal = {n for n in dl if kind_of(n, rules, None, n in maybe_worked) == "dlq"}
    for name, d in dl.items():
        if d.dlx is not None and not d.ttl:
            terminal |= {t for t in reach[name] or () if t in dl and not dl[t].ttl}
    retry = set()
    for name, d in dl.items():
        went = reach[name]
        if d.ttl and d.dlx is not None and (went is None or went - terminal):
            retry.add(name)
    dead: set[str] = set()
    for name in dl:
        if name not in retry:
            dead |= {t for t in reach[name] or () if t in dl and not dl[t].ttl and t not in retry}

    # The DLX of a retry queue is how retried tasks come back: a binding from it is a task route.
    working = worked({d.dlx for n, d in dl.items() if n not in retry})
    kinds: dict[str, Kind] = {}
    reasons: dict[str, str] = {}
    for name in dl:
        evidence: Kind | None = "retry" if name in retry else "dlq" if name in dead else None
        kind = kind_of(name, rules, evidence, name in working)
        if kind is not None:
            kinds[name] = kind
            reasons[name] = why_kind(name, rules, evidence, name in working)
    fed = {t for went in reach.values() for t in went or ()}
    # A failure route (a DLX without a TTL) whose letters reach no queue: RabbitMQ drops them unseen.
    unrouted = {n: str(d.dlx) for n, d in dl.items() if d.dlx is not None and n not in retry
                and kinds.get(n) is not None and not {t for t in reach[n] or () if t in dl}}
    return Classified(kinds, fed, reasons, unrouted)


def management_result(queues: Sequence[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]],
                      rules: Rules, live: LiveCounts | None = None) -> PollResult:
    """A ``PollResult`` from ``GET /api/queues/<vhost>`` and ``GET /api/bindings/<vhost>`` rows. ``live``
    holds passive-declare counts read right after: they replace the statistics' ready count and
    consumers (the unacked count stays the statistics'), and a queue they found gone is left out. A queue
    whose counts the management database has not published yet (just declared) is left out unless it
    was read live.

    ``published_total`` is the statistics' cumulative ``message_stats.publish``, which counts messages
    clients publish, not those RabbitMQ dead-letters into a queue. So a DLQ some queue dead-letters into
    gets none (its letters-added counter then follows length increases): a publish count there would
    miss exactly the letters that matter."""
    live = live or {}
    classified = _classify(queues, bindings, rules)
    kinds, fed = classified.kinds, classified.fed
    task: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    dlq_depth: dict[str, QueueDepth] = {}
    oldest: dict[str, float] = {}
    for q in queues:
        name = str(q.get("name", ""))
        kind = kinds.get(name)
        ready, unacked, consumers = (_number(q.get(k)) for k in
                                     ("messages_ready", "messages_unacknowledged", "consumers"))
        if name in live:
            got = live[name]
            if got is None:
                continue  # deleted since the management API listed it
            ready, consumers = float(got[0]), float(got[1])
        if kind is None or ready is None:
            continue
        stats = q.get("message_stats")
        published = _number(stats.get("publish")) if isinstance(stats, Mapping) else None
        if kind == "task":
            task[name] = QueueDepth(ready, unacked, consumers, published)
        elif kind == "retry":
            retry[name] = ready + (unacked or 0.0)
        else:
            dlq[name] = ready + (unacked or 0.0)
            dlq_depth[name] = QueueDepth(ready, unacked, consumers, None if name in fed else published)
            ts = parse_timestamp(q.get("head_message_timestamp"))
            if ts is not None and dlq[name]:
                oldest[name] = ts
    return PollResult(task, retry, dlq, oldest, dead_letter_depth=dlq_depth, reasons=classified.reasons,
                      unrouted_dead_letters=classified.unrouted)


def amqp_result(counts: LiveCounts, rules: Rules) -> PollResult:
    """A ``PollResult`` from passive declares: ``name -> (ready messages, consumers)`` or None when the
    queue does not exist. Without the management API the broker tells us only consumers: ``kind_of``
    with no dead-lettering evidence."""
    task: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for name, got in counts.items():
        if got is None:
            continue
        ready, consumers = got
        kind = kind_of(name, rules, worked=consumers > 0)
        if kind is not None:
            reasons[name] = why_kind(name, rules, worked=consumers > 0) + " (passive declare)"
        if kind == "task":
            task[name] = QueueDepth(float(ready), None, float(consumers))
        elif kind == "retry":
            retry[name] = float(ready)
        elif kind == "dlq":
            dlq[name] = float(ready)
    return PollResult(task, retry, dlq, reasons=reasons)
