"""Pure logic of the Redis poller: kombu's key layout, what the scanned keys mean, which commands one
poll sends, and how their replies become a ``PollResult``. ``poller.py`` does the I/O around it.

kombu's Redis transport keeps a queue ``q`` as a list under ``<global_keyprefix>q`` for priority 0 and
``<global_keyprefix>q<sep><step>`` for the other priority steps (``sep`` defaults to ``\\x06\\x16``); its
bindings as sets ``_kombu.binding.<exchange>`` whose members are ``routing_key<sep>pattern<sep>queue``;
delivered-but-unacked messages in one hash, ``unacked``. Producers may use other priority steps than the
exporter was told, so the sub-queues that exist (found by SCAN) are counted, not only configured ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.brokers.model import (
    INTERNAL_EXCHANGES,
    Kind,
    PollResult,
    QueueDepth,
    Rules,
    entry_timestamp,
    matches,
    parse_timestamp,
)

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


def binding_queue(member: str, sep: str) -> str:
    """The queue of a binding member ``routing_key<sep>pattern<sep>queue``. If a name contains the
    separator, prefer the split where the routing key equals the queue (Celery's default)."""
    parts = member.split(sep)
    if len(parts) > 3 and len(parts) % 2 == 1:
        half = (len(parts) - 1) // 2
        if parts[:half] == parts[half + 1:]:
            return sep.join(parts[half + 1:])
    return parts[-1]


def first_round(index: KeyIndex, settings: RedisSettings, remembered: Mapping[str, Kind]) -> list[Command]:
    """Round trip 1: the unacked total, every (non-internal) binding set, and the TYPE of every key that
    may be a retry queue or DLQ (a zset is read differently from a list)."""
    layout = settings.layout
    cmds: list[Command] = [("HLEN", layout.prefix + layout.unacked_key)]
    cmds += [("SMEMBERS", f"{layout.prefix}{BINDING_PREFIX}{x}") for x in bindable(index.exchanges)]
    cmds += [("TYPE", layout.prefix + name) for name in special_candidates(index, settings, remembered)]
    return cmds


def bindable(exchanges: Iterable[str]) -> list[str]:
    return [x for x in exchanges if x not in INTERNAL_EXCHANGES]


def special_candidates(index: KeyIndex, settings: RedisSettings, remembered: Mapping[str, Kind]) -> list[str]:
    rules = settings.rules
    names = set(settings.retry_names) | set(settings.dlq_names)
    names |= {n for n, kind in remembered.items() if kind != "task"}
    names |= {n for n in index.plain | set(index.substeps) if rules.configured_kind(n) is not None}
    return sorted(n for n in names if not _internal(n, settings))


def _internal(name: str, settings: RedisSettings) -> bool:
    return name in settings.layout.internal_keys or settings.rules.excluded(name)


@dataclass
class Plan:
    """Round trip 2: which commands, and which reply belongs to which queue."""

    commands: list[Command] = field(default_factory=list)
    # name -> (kind, redis type, [(reply index, what)]) with what in llen|zcard|head|tail|zoldest
    slots: dict[str, tuple[Kind, str, list[tuple[int, str]]]] = field(default_factory=dict)
    broker_unacked: float | None = None


def make_plan(index: KeyIndex, first: Sequence[Any], settings: RedisSettings, seen: Iterable[str],
              remembered: Mapping[str, Kind], truncated: bool) -> Plan:
    """Decide the queues of this poll from the scan, the first round's replies, config and events."""
    layout, rules = settings.layout, settings.rules
    plan = Plan(broker_unacked=_int(first[0]))
    n_bind = len(bindable(index.exchanges))
    names: dict[str, str] = {}  # name -> redis type ("" when not asked)
    for members in first[1:1 + n_bind]:
        if isinstance(members, (set, list)):
            for m in members:
                names.setdefault(binding_queue(_text(m), layout.sep), "")
    for name in (*settings.queue_names, *seen, *remembered):
        names.setdefault(name, "")
    for name in index.plain | set(index.substeps):
        if matches(name, settings.queue_globs):
            names.setdefault(name, "")
    if layout.sep == KOMBU_SEP:  # with kombu's own separator a sub-queue key can only be a kombu queue
        for name in index.substeps:
            names.setdefault(name, "")
    known = set(names)
    for name, rtype in zip(special_candidates(index, settings, remembered), first[1 + n_bind:], strict=False):
        rtype = "" if isinstance(rtype, Exception) else _text(rtype)
        if rtype == "none" and name not in known and name not in index.substeps:
            continue  # a configured DLQ or retry key that does not exist (yet): no series
        names[name] = rtype

    guess_steps = range(10) if truncated else ()
    for name, rtype in sorted(names.items()):
        if _internal(name, settings) or rtype not in ("", "list", "zset", "none"):
            continue
        kind: Kind = rules.configured_kind(name) or remembered.get(name) or "task"
        found = index.substeps.get(name, set())
        if kind == "task" and rtype == "zset":
            continue  # a sorted set that no rule names as a retry queue or DLQ is not a task queue
        slots: list[tuple[int, str]] = []
        cmds = plan.commands
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
                if kind == "dlq" and (step in found if step else rtype != "none"):
                    # LPUSH lists keep the oldest entry at the tail, RPUSH lists at the head: read both.
                    slots += [(len(cmds), "head"), (len(cmds) + 1, "tail")]
                    cmds += [("LINDEX", layout.prefix + key, 0), ("LINDEX", layout.prefix + key, -1)]
        plan.slots[name] = (kind, rtype, slots)
    return plan


def redis_result(
    plan: Plan, replies: Sequence[Any], timestamp_field: str
) -> tuple[PollResult, dict[str, Kind]]:
    """The poll result, and the retry/DLQ/task names that exist now (remembered for later polls, so a
    drained list that Redis deleted is reported as 0 rather than vanishing)."""
    queues: dict[str, QueueDepth] = {}
    retry: dict[str, float] = {}
    dlq: dict[str, float] = {}
    oldest: dict[str, float] = {}
    existing: dict[str, Kind] = {}
    for name, (kind, rtype, slots) in plan.slots.items():
        length = 0
        stamps: list[float] = []
        for i, what in slots:
            reply = replies[i] if i < len(replies) else None
            if isinstance(reply, Exception):
                continue  # WRONGTYPE and the like: not a queue key
            if what in ("llen", "zcard"):
                length += _int(reply) or 0
            elif what in ("head", "tail"):
                ts = entry_timestamp(reply, timestamp_field)
                if ts is not None:
                    stamps.append(ts)
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
    return PollResult(queues, retry, dlq, oldest, plan.broker_unacked), existing


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
