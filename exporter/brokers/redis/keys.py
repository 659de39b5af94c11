"""Pure logic of the Redis poller: kombu's key layout, what the scanned keys mean, which commands one
poll sends, and how their replies become a ``PollResult``. ``poller.py`` does the I/O around it.

kombu's Redis transport keeps a queue ``q`` as a list under ``<global_keyprefix>q`` for priority 0 and
``<global_keyprefix>q<sep><step>`` for the other priority steps (``sep`` defaults to ``\\x06\\x16``); its
bindings as sets ``_kombu.binding.<exchange>`` whose members are ``routing_key<sep>pattern<sep>queue``;
delivered-but-unacked messages in one hash, ``unacked``. Producers may use other priority steps than the
exporter was told, so the sub-queues that exist (found by SCAN) are counted, not only configured ones.
A producer may also use another separator than the exporter was told: ``detect_sep`` reads the one the
bindings were written with, and a binding member that does not split is never turned into a queue name.

A key, entry or name that cannot be read (not UTF-8, a NUL, over 255 bytes, a key of another type, a DLQ
entry nested too deep to parse) is skipped and counted in ``PollResult.skipped`` by reason; the rest of the
poll is served. ``RedisSettings.dead_letters_only`` is a ``--dead-letter-redis-url`` database: only the DLQ
conventions and globs are searched there (no task queues, no bindings, no unacked hash).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.brokers.model import (
    INTERNAL_EXCHANGES,
    Kind,
    Rules,
    entry_timestamp,
    kind_of,
    matches,
    parse_timestamp,
    valid_queue_name,
)
from exporter.brokers.redis.head import message_task_id
from exporter.status import PollResult, QueueDepth

KOMBU_SEP = "\x06\x16"
KOMBU_STEPS = (0, 3, 6, 9)
BINDING_PREFIX = "_kombu.binding."
Command = tuple[Any, ...]


@dataclass(frozen=True)
class RedisLayout:
    """Where kombu puts things, from Celery's ``broker_transport_options``."""

    prefix: str = ""
    sep: str = KOMBU_SEP
    priority_steps: tuple[int, ...] = KOMBU_STEPS
    unacked_key: str = "unacked"
    internal_keys: frozenset[str] = frozenset({"unacked", "unacked_index", "unacked_mutex"})

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisLayout:
        steps = options.get("priority_steps") or KOMBU_STEPS
        keys = {str(options.get(k) or d) for k, d in (
            ("unacked_key", "unacked"), ("unacked_index_key", "unacked_index"),
            ("unacked_mutex_key", "unacked_mutex"))}
        return cls(
            prefix=str(options.get("global_keyprefix") or ""),
            sep=str(options.get("sep") or KOMBU_SEP),
            priority_steps=tuple(sorted({int(s) for s in steps})),
            unacked_key=str(options.get("unacked_key") or "unacked"),
            internal_keys=frozenset(keys),
        )

    def sub_keys(self, queue: str, extra_steps: Iterable[int] = ()) -> list[tuple[int, str]]:
        """``(step, unprefixed key)`` of each list of a queue: the bare name for step 0, then one per
        non-zero step (configured or found)."""
        steps = sorted({s for s in (*self.priority_steps, *extra_steps) if s})
        return [(0, queue)] + [(s, f"{queue}{self.sep}{s}") for s in steps]


@dataclass(frozen=True)
class RedisSettings:
    """The slice of the config the Redis poller needs."""

    layout: RedisLayout
    rules: Rules
    queue_names: tuple[str, ...] = ()  # exact names: config queues and the default queue
    queue_globs: tuple[str, ...] = ()
    retry_names: tuple[str, ...] = ()  # exact config names, queried even if a scan missed them
    dlq_names: tuple[str, ...] = ()
    timestamp_field: str = "timestamp"
    max_scan_keys: int = 10_000
    dead_letters_only: bool = False
    # Read the task id of the message at the tail of each task queue list (kombu LPUSHes and BRPOPs, so
    # the tail is the oldest message): the poller's HeadTracker turns it into a lower bound of the
    # oldest task's wait. One LINDEX per list that holds messages, in the second round trip.
    peek_heads: bool = False


@dataclass
class KeyIndex:
    """The scanned keys (prefix removed), sorted into what kombu and the DLQ conventions make of them."""

    exchanges: list[str] = field(default_factory=list)  # from _kombu.binding.<exchange>
    substeps: dict[str, set[int]] = field(default_factory=dict)  # queue -> priority steps that exist
    plain: set[str] = field(default_factory=set)


def index_keys(names: Iterable[str], layout: RedisLayout) -> KeyIndex:
    index = KeyIndex()
    for name in names:
        if name.startswith(BINDING_PREFIX):
            index.exchanges.append(name[len(BINDING_PREFIX):])
            continue
        base, sep, step = name.rpartition(layout.sep)
        if sep and base and step.isdigit():
            index.substeps.setdefault(base, set()).add(int(step))
        else:
            index.plain.add(name)
    index.exchanges.sort()
    return index


def binding_queue(member: str, sep: str) -> str | None:
    """The queue of a binding member ``routing_key<sep>pattern<sep>queue``, or None when the member was
    not written with ``sep``. If a name contains the separator, prefer the split where the routing key
    equals the queue (Celery's default)."""
    parts = member.split(sep)
    if len(parts) < 3:
        return None
    if len(parts) > 3 and len(parts) % 2 == 1:
        half = (len(parts) - 1) // 2
        if parts[:half] == parts[half + 1:]:
            return sep.join(parts[half + 1:])
    return parts[-1]


def detect_sep(member: str) -> str | None:
    """The separator a binding member was written with, from Celery's default binding (routing key =
    queue, empty pattern: ``q<sep><sep>q``), or None when the member does not have that shape."""
    for i in range(1, len(member) // 2):
        queue = member[:i]
        middle = member[i:len(member) - i]
        if member.endswith(queue) and middle and len(middle) % 2 == 0:
            half = len(middle) // 2
            if middle[:half] == middle[half:]:
                return middle[:half]
    return None


def binding_members(index: KeyIndex, first: Sequence[Any], settings: RedisSettings) -> list[str]:
    """The binding members of the first round's replies (empty for a dead-letters-only source)."""
    if settings.dead_letters_only:
        return []
    members: list[str] = []
    for reply in first[1:1 + len(bindable(index.exchanges))]:
        if isinstance(reply, (set, list)):
            members += sorted(_text(m) for m in reply)
    return members


def first_round(index: KeyIndex, settings: RedisSettings, remembered: Mapping[str, Kind]) -> list[Command]:
    """Round trip 1: the unacked total, every (non-internal) binding set, and the TYPE of every key that
    may be a retry queue or DLQ (a zset is read differently from a list)."""
    layout = settings.layout
    cmds: list[Command] = [("HLEN", layout.prefix + layout.unacked_key)]
    if not settings.dead_letters_only:
        cmds += [("SMEMBERS", f"{layout.prefix}{BINDING_PREFIX}{x}") for x in bindable(index.exchanges)]
    cmds += [("TYPE", layout.prefix + name) for name in special_candidates(index, settings, remembered)]
    return cmds


def bindable(exchanges: Iterable[str]) -> list[str]:
    return [x for x in exchanges if x not in INTERNAL_EXCHANGES]


def special_candidates(index: KeyIndex, settings: RedisSettings, remembered: Mapping[str, Kind]) -> list[str]:
    rules = settings.rules
    if settings.dead_letters_only:
        names = set(settings.dlq_names) | {n for n, kind in remembered.items() if kind == "dlq"}
        names |= {n for n in index.plain | set(index.substeps) if rules.configured_kind(n) == "dlq"}
    else:
        names = set(settings.retry_names) | set(settings.dlq_names)
        names |= {n for n, kind in remembered.items() if kind != "task"}
        names |= {n for n in index.plain | set(index.substeps) if rules.configured_kind(n) is not None}
    return sorted(n for n in names if not _internal(n, settings) and valid_queue_name(n))


def _internal(name: str, settings: RedisSettings) -> bool:
    return name in settings.layout.internal_keys or settings.rules.excluded(name)


@dataclass
class Plan:
    """Round trip 2: which commands, and which reply belongs to which queue."""

    commands: list[Command] = field(default_factory=list)
    # name -> (kind, redis type, [(reply index, what)]) with what in llen|zcard|head|tail|zoldest
    slots: dict[str, tuple[Kind, str, list[tuple[int, str]]]] = field(default_factory=dict)
    broker_unacked: float | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    mismatched: tuple[str, ...] = ()
    found_steps: set[int] = field(default_factory=set)  # priority steps of existing sub-queue keys
    found_by: dict[str, str] = field(default_factory=dict)  # name -> where this poll learnt it

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def make_plan(index: KeyIndex, first: Sequence[Any], settings: RedisSettings, seen: Iterable[str],
              remembered: Mapping[str, Kind], truncated: bool) -> Plan:
    """Decide the queues of this poll from the scan, the first round's replies, config and events."""
    layout, rules = settings.layout, settings.rules
    only_dlq = settings.dead_letters_only
    plan = Plan(broker_unacked=None if only_dlq else _int(first[0]))
    n_bind = 0 if only_dlq else len(bindable(index.exchanges))
    names: dict[str, str] = {}  # name -> redis type ("" when not asked)
    bound: set[str] = set()  # named by a kombu binding: a queue Celery declared, so a task queue
    found_by = plan.found_by

    def add(name: str, why: str) -> None:
        names.setdefault(name, "")
        found_by.setdefault(name, why)

    if not only_dlq:  # a kombu binding is the best evidence: the queue is declared in this database
        for member in binding_members(index, first, settings):
            queue = binding_queue(member, layout.sep)
            if queue is not None:  # written with another separator: never invent a name from it
                add(queue, "kombu binding")
                bound.add(queue)
    for name, held in remembered.items():  # a drained list Redis deleted is reported as 0, not dropped
        if held == "dlq" or not only_dlq:
            add(name, "its key existed at an earlier poll")
    if not only_dlq:
        for name in settings.queue_names:
            add(name, "--default-queue or --queues (no key, no kombu binding)")
        for name in seen:
            add(name, "named by task events only (no key, no kombu binding)")
        for name in index.plain | set(index.substeps):
            if matches(name, settings.queue_globs):
                add(name, "key matches --queues")
        if layout.sep == KOMBU_SEP:  # with kombu's own separator a sub-queue key can only be a kombu queue
            for name in index.substeps:
                add(name, "priority sub-queue keys")
    # Only names this poll would report count as skipped, not every odd key of the database.
    wanted = ("dlq",) if only_dlq else ("dlq", "retry")
    considered = set(names) | {n for n in index.plain | set(index.substeps)
                               if rules.configured_kind(n) in wanted}
    invalid = {n for n in considered if not valid_queue_name(n)}
    if invalid:
        plan.skip("invalid_name", len(invalid))
    known = set(names)
    for name, rtype in zip(special_candidates(index, settings, remembered), first[1 + n_bind:], strict=False):
        rtype = "" if isinstance(rtype, Exception) else _text(rtype)
        if rtype == "none" and name not in known and name not in index.substeps:
            continue  # a configured DLQ or retry key that does not exist (yet): no series
        names[name] = rtype
        found_by.setdefault(name, "key matches --retry-queues or --dead-letter-queues")

    guess_steps = range(10) if truncated else ()
    for name, rtype in sorted(names.items()):
        if _internal(name, settings) or name in invalid:
            continue
        if rtype not in ("", "list", "zset", "none"):
            plan.skip("wrong_type")  # a hash or string where a DLQ or retry list should be
            continue
        # Bindings before name patterns, as on RabbitMQ: seed 004's consumed work queue `dead_letter`
        # matches the default `dead_letter*` DLQ glob but has its kombu binding. A drained key keeps the
        # kind it had (Redis deleted it) where nothing else decides.
        kind = kind_of(name, rules, worked=name in bound, fallback=remembered.get(name, "task"))
        if kind is None or (only_dlq and kind != "dlq"):
            continue
        found = index.substeps.get(name, set())
        if kind == "task" and rtype == "zset":
            continue  # a sorted set that no rule names as a retry queue or DLQ is not a task queue
        if kind == "task" and found - {0, *layout.priority_steps}:
            plan.mismatched = ("priority_steps",)
            plan.found_steps |= found
        slots: list[tuple[int, str]] = []
        cmds = plan.commands
        peek = settings.peek_heads and kind == "task"
        if rtype == "zset":
            slots.append((len(cmds), "zcard"))
            cmds.append(("ZCARD", layout.prefix + name))
            if kind == "dlq":
                slots.append((len(cmds), "zoldest"))
                cmds.append(("ZRANGE", layout.prefix + name, 0, 0, "WITHSCORES"))
        else:
            for step, key in layout.sub_keys(name, (*found, *guess_steps)):
                slots.append((len(cmds), "llen"))
                cmds.append(("LLEN", layout.prefix + key))
                if peek and (step in found if step else True):
                    slots.append((len(cmds), f"oldest_id:{step}"))
                    cmds.append(("LINDEX", layout.prefix + key, -1))
                if kind == "dlq" and (step in found if step else rtype != "none"):
                    # LPUSH lists keep the oldest entry at the tail, RPUSH lists at the head: read both.
                    slots += [(len(cmds), "head"), (len(cmds) + 1, "tail")]
                    cmds += [("LINDEX", layout.prefix + key, 0), ("LINDEX", layout.prefix + key, -1)]
        plan.slots[name] = (kind, rtype, slots)
    return plan


def _reason(found_by: str, kind: Kind) -> str:
    """Why a queue is reported with its kind: where it was found, and what made it a retry queue or DLQ."""
    why = {"retry": "; retry queue by --retry-queues", "dlq": "; DLQ by --dead-letter-queues or its defaults",
           "task": ""}[kind]
    return (found_by or "found") + why


def redis_result(
    plan: Plan, replies: Sequence[Any], timestamp_field: str
) -> tuple[PollResult, dict[str, Kind]]:
    """The poll result, and the retry/DLQ/task names that exist now (remembered for later polls, so a
    drained list that Redis deleted is reported as 0 rather than vanishing)."""
    queues: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    oldest: dict[str, float] = {}
    heads: dict[str, dict[int, str]] = {}
    existing: dict[str, Kind] = {}
    skipped = dict(plan.skipped)
    for name, (kind, rtype, slots) in plan.slots.items():
        length = 0
        stamps: list[float] = []
        for i, what in slots:
            reply = replies[i] if i < len(replies) else None
            if isinstance(reply, Exception):
                if "WRONGTYPE" in str(reply):  # a task queue's name held by a hash or string
                    skipped["wrong_type"] = skipped.get("wrong_type", 0) + 1
                continue
            if what in ("llen", "zcard"):
                length += _int(reply) or 0
            elif what in ("head", "tail"):
                try:
                    ts = entry_timestamp(reply, timestamp_field)
                except RecursionError:  # nested deeper than the JSON parser goes: skip the entry
                    skipped["unreadable_entry"] = skipped.get("unreadable_entry", 0) + 1
                    continue
                if ts is not None:
                    stamps.append(ts)
            elif what.startswith("oldest_id:"):
                task_id = message_task_id(reply)
                if task_id is not None:
                    heads.setdefault(name, {})[int(what[10:])] = task_id
            elif what == "zoldest":
                ts = _oldest_score(reply)
                if ts is not None:
                    stamps.append(ts)
        if length or rtype in ("list", "zset"):
            existing[name] = kind
        if kind == "task":
            queues[name] = QueueDepth(ready=float(length))
        elif kind == "retry":
            retry[name] = float(length)
        else:
            dlq[name] = float(length)
            if stamps and length:
                oldest[name] = min(stamps)
    reasons = {n: _reason(plan.found_by.get(n, ""), k) for n, (k, _t, _s) in plan.slots.items()}
    result = PollResult(queues, retry, dlq, oldest, plan.broker_unacked, skipped=skipped,
                        mismatched_options=plan.mismatched, head_ids=heads, reasons=reasons)
    return result, existing


def _oldest_score(reply: Any) -> float | None:
    """The score of ``ZRANGE key 0 0 WITHSCORES``: ``[member, score]`` raw, or ``[[member, score]]`` as
    redis-py parses it."""
    if not isinstance(reply, (list, tuple)) or not reply:
        return None
    pair = reply[0] if isinstance(reply[0], (list, tuple)) else reply
    return parse_timestamp(_text(pair[1])) if len(pair) >= 2 else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
