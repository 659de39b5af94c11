"""The Redis poller: the I/O half. One poll is a bounded SCAN (never KEYS) plus two pipelined round
trips, however many queues there are; ``keys.py`` decides what to ask and what the replies mean.

Queues come from config, from kombu's ``_kombu.binding.*`` sets, from task-sent events, and from the
priority sub-queue keys the scan finds. Retry queues and DLQs come from the config globs (defaults
``dlq:*`` and ``celery:dead_letter_queue``): lists, LPUSH'ed or RPUSH'ed JSON entries carrying a
timestamp field, or sorted sets scored by time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis
import structlog

from exporter.brokers.model import Kind, PollResult
from exporter.brokers.redis.connection import connection_pool
from exporter.brokers.redis.keys import (
    Command,
    RedisSettings,
    first_round,
    index_keys,
    make_plan,
    redis_result,
)

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
    plan = make_plan(index, first, settings, seen, remembered, truncated)
    replies = run_pipeline(client, plan.commands)
    return {"plan": plan, "replies": replies, "truncated": truncated, "scanned": len(names)}


class RedisPoller:
    """Polls one Redis broker; keeps the client (and its connection pool) between polls."""

    source = "redis"

    def __init__(self, settings: RedisSettings, client_factory: Callable[[], redis.Redis],
                 queues_seen: Callable[[], Iterable[str]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.client_factory = client_factory
        self.queues_seen = queues_seen
        self.monotonic = monotonic
        self.remembered: dict[str, Kind] = {}
        self.truncated = False
        self._client: redis.Redis | None = None

    def poll(self, deadline: float) -> PollResult:
        if self._client is None:
            self._client = self.client_factory()
        fetched = fetch_redis(self._client, self.settings, tuple(self.queues_seen()), self.remembered,
                              deadline, self.monotonic)
        if fetched["truncated"] and not self.truncated:
            log.warning("redis scan stopped at --max-scan-keys; sub-queues and DLQs beyond it may be missed",
                        max_scan_keys=self.settings.max_scan_keys, keys_seen=fetched["scanned"])
        self.truncated = fetched["truncated"]
        result, existing = redis_result(fetched["plan"], fetched["replies"], self.settings.timestamp_field)
        for name, kind in existing.items():
            # Task queues keep their kombu binding when empty; retry lists and DLQs vanish when drained.
            if kind != "task" and (name in self.remembered or len(self.remembered) < REMEMBER_LIMIT):
                self.remembered[name] = kind
        return result

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
