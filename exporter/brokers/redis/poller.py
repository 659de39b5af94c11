"""The Redis poller: the I/O half. One poll is a bounded SCAN (never KEYS) plus two pipelined round
trips, however many queues there are; ``keys.py`` decides what to ask and what the replies mean.

Queues come from config, from kombu's ``_kombu.binding.*`` sets, from task-sent events, and from the
priority sub-queue keys the scan finds. Retry queues and DLQs come from the config globs (defaults
``dlq:*`` and ``celery:dead_letter_queue``): lists, LPUSH'ed or RPUSH'ed JSON entries carrying a
timestamp field, or sorted sets scored by time. A ``--dead-letter-redis-url`` database is polled by its
own ``RedisPoller`` with ``dead_letters_only`` settings and its own ``source``.

When the broker's bindings were written with another separator than the configured ``sep`` (a producer
with ``broker_transport_options={"sep": ":"}``, the exporter left at defaults), the poller switches to the
separator the bindings use, polls again with it, and logs one warning naming the option to set; the result
carries the mismatch for ``celery_exporter_poll_option_mismatch``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis
import structlog

from exporter.brokers.model import Kind
from exporter.brokers.redis.connection import connection_pool
from exporter.brokers.redis.head import HeadTracker
from exporter.brokers.redis.keys import (
    Command,
    RedisSettings,
    binding_members,
    binding_queue,
    detect_sep,
    first_round,
    index_keys,
    make_plan,
    redis_result,
)
from exporter.status import PollResult

log = structlog.get_logger("exporter.brokers")

SCAN_COUNT = 1000
REMEMBER_LIMIT = 10_000


class PollDeadline(TimeoutError):
    """The poll ran out of its time budget."""


def make_client(broker_url: str, options: Mapping[str, Any], timeout: float) -> redis.Redis:
    """A redis-py client for the broker, over the same connection builder as the event stream."""
    pool, _db = connection_pool(
        broker_url, options, socket_timeout=timeout, socket_connect_timeout=timeout,
        encoding_errors="surrogateescape",  # key names round-trip even when they are not UTF-8
    )
    return redis.Redis(connection_pool=pool)


def scan_keys(client: redis.Redis, prefix: str, max_keys: int, deadline: float,
              monotonic: Callable[[], float] = time.monotonic) -> tuple[list[str], bool]:
    """Key names under ``prefix`` (prefix stripped), examining at most about ``max_keys`` keys.
    Returns ``(names, truncated)``."""
    match = _glob_escape(prefix) + "*" if prefix else None
    count = max(1, min(SCAN_COUNT, max_keys))
    cursor, examined, names = 0, 0, []
    while True:
        if monotonic() > deadline:
            raise PollDeadline("the poll deadline passed during SCAN")
        cursor, keys = client.scan(cursor=cursor, match=match, count=count)
        examined += count
        for key in keys:
            text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)
            names.append(text[len(prefix):])
        if int(cursor) == 0:
            return names, False
        if examined >= max_keys:
            return names, True


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def run_pipeline(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """One round trip for all ``commands``; a failing command's reply is its exception."""
    if not commands:
        return []
    pipe = client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    return list(pipe.execute(raise_on_error=False))


def fetch_redis(client: redis.Redis, settings: RedisSettings, seen: Iterable[str],
                remembered: Mapping[str, Kind], deadline: float,
                monotonic: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """All the I/O of one poll: SCAN, round trip 1 (bindings, unacked, types), round trip 2 (lengths,
    oldest entries). Returns everything ``redis_result`` needs."""
    names, truncated = scan_keys(client, settings.layout.prefix, settings.max_scan_keys, deadline, monotonic)
    index = index_keys(names, settings.layout)
    first = run_pipeline(client, first_round(index, settings, remembered))
    if monotonic() > deadline:
        raise PollDeadline("the poll deadline passed after the first round trip")
    other_sep = bindings_sep(binding_members(index, first, settings), settings.layout.sep)
    if other_sep is not None:
        return {"sep": other_sep}
    plan = make_plan(index, first, settings, seen, remembered, truncated)
    replies = run_pipeline(client, plan.commands)
    return {"plan": plan, "replies": replies, "truncated": truncated, "scanned": len(names)}


def bindings_sep(members: Iterable[str], sep: str) -> str | None:
    """The separator the bindings were written with, when it is not ``sep`` (None when they agree)."""
    for member in members:
        if binding_queue(member, sep) is None:
            found = detect_sep(member)
            if found is not None and found != sep:
                return found
    return None


class RedisPoller:
    """Polls one Redis broker; keeps the client (and its connection pool) between polls."""

    def __init__(self, settings: RedisSettings, client_factory: Callable[[], redis.Redis],
                 queues_seen: Callable[[], Iterable[str]],
                 monotonic: Callable[[], float] = time.monotonic, source: str = "redis",
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.settings = settings
        self.configured_sep = settings.layout.sep
        self.warned: set[str] = set()
        self.client_factory = client_factory
        self.queues_seen = queues_seen
        self.monotonic = monotonic
        self.clock = clock  # wall time of head sightings, compared with time() at scrape
        self.heads = HeadTracker()
        self.remembered: dict[str, Kind] = {}
        self.truncated = False
        self._client: redis.Redis | None = None

    def poll(self, deadline: float) -> PollResult:
        if self._client is None:
            self._client = self.client_factory()
        seen = () if self.settings.dead_letters_only else tuple(self.queues_seen())
        client, clock = self._client, self.monotonic
        fetched = fetch_redis(client, self.settings, seen, self.remembered, deadline, clock)
        if "sep" in fetched:  # the bindings use another separator: read them with it from now on
            self.settings = replace(self.settings, layout=replace(self.settings.layout, sep=fetched["sep"]))
            fetched = fetch_redis(client, self.settings, seen, self.remembered, deadline, clock)
            if "sep" in fetched:
                raise ValueError("the broker's bindings use more than one priority separator")
        if fetched["truncated"] and not self.truncated:
            log.warning("redis scan stopped at --max-scan-keys; sub-queues and DLQs beyond it may be missed",
                        max_scan_keys=self.settings.max_scan_keys, keys_seen=fetched["scanned"])
        self.truncated = fetched["truncated"]
        result, existing = redis_result(fetched["plan"], fetched["replies"], self.settings.timestamp_field)
        if self.settings.peek_heads:
            heads = self.heads.update(result.head_ids, self.clock())
            result = replace(result, queue_heads=heads, head_ids={})
        if self.settings.layout.sep != self.configured_sep:
            result = replace(result, mismatched_options=("sep", *result.mismatched_options))
        self._warn_mismatch(result.mismatched_options, fetched["plan"])
        for name, kind in existing.items():
            # Task queues keep their kombu binding when empty; retry lists and DLQs vanish when drained.
            if kind != "task" and (name in self.remembered or len(self.remembered) < REMEMBER_LIMIT):
                self.remembered[name] = kind
        return result

    def _warn_mismatch(self, options: Iterable[str], plan: Any) -> None:
        for option in options:
            if option in self.warned:
                continue
            self.warned.add(option)
            if option == "sep":
                value = json.dumps({"sep": self.settings.layout.sep})
                log.warning("the broker's Redis keys use another priority separator than configured; they "
                            "are read with the one the bindings use. Set it to match the producers",
                            source=self.source, option="sep", set=f"--broker-transport-options '{value}'")
            else:
                steps = sorted({0, *plan.found_steps, *self.settings.layout.priority_steps})
                value = json.dumps({"sep": self.settings.layout.sep, "priority_steps": steps})
                log.warning("the broker holds priority sub-queues for other priority steps than configured; "
                            "they are counted. Set priority_steps to match the producers",
                            source=self.source, option="priority_steps",
                            set=f"--broker-transport-options '{value}'")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
