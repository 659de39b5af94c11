"""The pure rules every poller shares: which queue names are Celery internals, how config globs classify
a queue (``rules_for`` builds the ``Rules`` from the pollers' settings), how a DLQ entry's timestamp is
read, how the number of queue series is capped. What a poll produces (``PollResult``) is declared in the
leaf ``exporter.status``, which the collectors read.

Nothing here does I/O; each broker package's ``poller.py`` fetches, these functions decide.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from exporter.brokers.settings import PollSettings
from exporter.labels import OVERFLOW_LABEL, parse_iso
from exporter.options import DEFAULT_DEAD_LETTER_QUEUES
from exporter.status import PollResult, QueueDepth

Kind = Literal["task", "retry", "dlq"]

# Celery's own queues are not task queues: the event queues (celeryev.<uuid>), the broadcast-control
# queues (<node>.celery.pidbox) and their reply queues (<id>.reply.celery.pidbox), server-named queues,
# and kombu's bookkeeping keys on Redis.
INTERNAL_GLOBS: tuple[str, ...] = ("celeryev.*", "*.pidbox", "amq.gen-*", "_kombu.*")
INTERNAL_EXCHANGES = frozenset({"celeryev", "celery.pidbox", "reply.celery.pidbox"})


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


@dataclass(frozen=True)
class Rules:
    """Config-driven naming rules; exclusions always win. RabbitMQ weighs the rest against what the broker
    says in one order (``kind_of``: exact names, broker, then globs and defaults)."""

    retry_globs: tuple[str, ...] = ()
    dlq_globs: tuple[str, ...] = ()
    exclude_globs: tuple[str, ...] = ()
    internal_names: frozenset[str] = frozenset()
    task_names: frozenset[str] = frozenset()  # exact names in --queues: task queues by configuration

    def excluded(self, name: str) -> bool:
        return (
            not name
            or name in self.internal_names
            or matches(name, INTERNAL_GLOBS)
            or matches(name, self.exclude_globs)
        )

    def configured_kind(self, name: str) -> Kind | None:
        """The kind the config gives this name (retry before DLQ), or None to leave it to discovery."""
        if matches(name, self.retry_globs):
            return "retry"
        if matches(name, self.dlq_globs):
            return "dlq"
        return None


def explicit_kind(name: str, rules: Rules) -> Kind | None:
    """The kind an exact name the user listed in ``--retry-queues``, ``--dead-letter-queues`` or
    ``--queues`` (in that order) gives. The built-in default DLQ list counts as patterns even where it
    holds exact names (``dlq``)."""
    if name in rules.retry_globs and not is_glob(name):
        return "retry"
    if name in rules.dlq_globs and not is_glob(name) and name not in DEFAULT_DEAD_LETTER_QUEUES:
        return "dlq"
    if name in rules.task_names:
        return "task"
    return None


def kind_of(name: str, rules: Rules, dead_lettering: Kind | None = None, worked: bool = False,
            fallback: Kind = "task") -> Kind | None:
    """The kind of one queue; None when it is never reported. First match wins:

    0. Never reported: Celery's internals, the exporter's event queue, ``--exclude-queues``.
    1. Explicit configuration: the exact name is listed in ``--retry-queues`` (first),
       ``--dead-letter-queues`` or ``--queues`` (a task queue).
    2. What the broker says about dead-lettering (``dead_lettering``, from arguments, policies and
       bindings; see ``classify``): a retry queue, or a DLQ that another queue dead-letters into.
    3. What the broker says about work (``worked``): a queue with consumers, or bound to an exchange
       Celery publishes through (on Redis: named by a kombu binding, ``_kombu.binding.<exchange>``), is
       a task queue. This is what keeps a name pattern from turning a work queue called ``dead_letter``
       into a DLQ.
    4. Name patterns: the globs of ``--retry-queues`` / ``--dead-letter-queues`` and the built-in
       default DLQ names (``dlq:*``, ``celery:dead_letter_queue``, ``dlq``, ``*.dlq``, ``dead_letter*``).
    5. Otherwise ``fallback``: a task queue (the Redis poller passes the kind a drained key had).

    RabbitMQ (``rabbitmq/classify.py``) has evidence for steps 2 and 3, Redis (``redis/keys.py``) for
    step 3 only: Redis has no dead-lettering of its own.
    """
    if rules.excluded(name):
        return None
    return explicit_kind(name, rules) or dead_lettering or ("task" if worked else None) or (
        rules.configured_kind(name) or fallback)


def why_kind(name: str, rules: Rules, dead_lettering: Kind | None = None, worked: bool = False) -> str:
    """Which step of ``kind_of`` decided, in words (the status page and doctor show it)."""
    if explicit_kind(name, rules):
        return "its exact name is configured"
    if dead_lettering == "retry":
        return "broker: a TTL queue whose dead letters go back to work"
    if dead_lettering == "dlq":
        return "broker: another queue dead-letters into it"
    if worked:
        return "broker: it has consumers or a work binding"
    if rules.configured_kind(name):
        return "name matches --retry-queues or --dead-letter-queues (or the default DLQ names)"
    return "default: a task queue"


def rules_for(settings: PollSettings, internal_names: Iterable[str] = ()) -> Rules:
    """The naming rules the configuration gives every poller of a broker (``internal_names``: the
    broker's own bookkeeping keys, never queues)."""
    return Rules(
        retry_globs=tuple(settings.retry_queues),
        dlq_globs=tuple(settings.dead_letter_queues),
        exclude_globs=(*settings.exclude_queues, settings.event_queue_prefix + "*"),
        internal_names=frozenset((*internal_names, OVERFLOW_LABEL)),
        task_names=frozenset(exact_names(settings.queues)),
    )


def pinned_queues(settings: PollSettings) -> tuple[str, ...]:
    """The queues always reported first (the default queue, configured names): never folded away."""
    return (settings.default_queue, *exact_names(settings.queues))


MAX_NAME_BYTES = 255  # AMQP short strings stop at 255 bytes; a label value needs no more either


def name_problem(name: str) -> str | None:
    """Why ``name`` must never reach the broker (None when it is fine): a queue name is an AMQP short
    string, at most 255 bytes, and a Redis key of a label value must be valid UTF-8 without NUL; names
    learnt from events may be anything."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, or bytes kept with surrogateescape
        return "not valid UTF-8"
    if "\x00" in name:
        return "contains NUL"
    if len(raw) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes ({len(raw)})"
    return None


def valid_queue_name(name: str) -> bool:
    """A name that can be a label value and a broker key or queue name (see ``name_problem``)."""
    return name_problem(name) is None


def exact_names(patterns: Iterable[str]) -> list[str]:
    """The entries of a names-or-globs list that are plain names (pollable without listing the broker)."""
    return [p for p in patterns if p and not is_glob(p)]


# ------------------------------------------------------------------------------------------- timestamps
_MS_THRESHOLD = 1e11  # epoch seconds reach 1e11 in the year 5138; anything above is milliseconds


def parse_timestamp(value: Any) -> float | None:
    """A DLQ entry's enqueue time as a Unix timestamp: ISO-8601 (naive means UTC, as ``utcnow()``
    writes it) or an epoch number in seconds or milliseconds, as a number or a numeric string."""
    if isinstance(value, bool) or value is None:
        return None
    ts: float
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            iso = parse_iso(text)
            if iso is None:
                return None
            ts = iso
    else:
        return None
    if not math.isfinite(ts) or ts <= 0:
        return None
    return ts / 1000.0 if ts > _MS_THRESHOLD else ts


def entry_timestamp(raw: bytes | str | None, field_name: str) -> float | None:
    """The timestamp field of one JSON DLQ entry (``a.b`` reaches into nested objects), or None."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    # RecursionError (an entry nested 100,000 levels deep) is left to the caller, which counts the skip.
    for part in field_name.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return parse_timestamp(doc)


# ------------------------------------------------------------------------------------------- the cap
def cap_queues(result: PollResult, max_queues: int, pinned: Sequence[str] = ()) -> PollResult:
    """Keep at most ``max_queues`` distinct queue names; the rest fold into ``__overflow__`` (lengths
    and counts summed, the oldest timestamp kept). ``pinned`` names (the default queue, configured
    names) are kept first, then the rest in name order, so the HPA's queue never folds away."""
    names = result.names()
    if len(names) <= max_queues:
        return result
    order = [n for n in dict.fromkeys(pinned) if n in names]
    order += sorted(names.difference(order))
    keep = set(order[:max_queues])

    queues: dict[str, QueueDepth] = {}
    folded: list[QueueDepth] = []
    for name, depth in result.queues.items():
        if name in keep:
            queues[name] = depth
        else:
            folded.append(depth)
    if folded:
        queues[OVERFLOW_LABEL] = QueueDepth(
            ready=sum(d.ready for d in folded),
            unacked=_sum_opt(d.unacked for d in folded),
            consumers=_sum_opt(d.consumers for d in folded),
        )
    retry = _fold(result.retry, keep)
    dlq = _fold(result.dead_letter, keep)
    oldest = {n: ts for n, ts in result.dead_letter_oldest.items() if n in keep}
    dropped = [ts for n, ts in result.dead_letter_oldest.items() if n not in keep]
    if dropped:
        oldest[OVERFLOW_LABEL] = min(dropped)
    dlq_depth = {n: d for n, d in result.dead_letter_depth.items() if n in keep}
    return PollResult(queues, retry, dlq, oldest, result.broker_unacked, dlq_depth, result.skipped,
                      result.mismatched_options,
                      reasons={n: r for n, r in result.reasons.items() if n in keep},
                      unrouted_dead_letters=result.unrouted_dead_letters)


def _fold(values: Mapping[str, float], keep: set[str]) -> dict[str, float]:
    out = {n: v for n, v in values.items() if n in keep}
    rest = [v for n, v in values.items() if n not in keep]
    if rest:
        out[OVERFLOW_LABEL] = float(sum(rest))
    return out


def _sum_opt(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None
