"""What the Redis poller learns from the messages at the ends of its lists: ``HeadTracker`` (since when
the same message has sat at each end kombu consumes next, the queue-age lower bound served when producers
send no task-sent events) and ``message_task_id`` (the task id in a kombu Redis message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class HeadTracker:
    """Since when the same message has sat at each end of a queue that is consumed next.

    Fed by the Redis poller with ``{queue: {sub-list: task id}}`` once per poll (kombu LPUSHes and
    BRPOPs, so a list's oldest message is at its tail). A message that stays at the tail for ``t``
    seconds has waited at least ``t``: the lower bound served when producers send no task-sent events.
    """

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, int], tuple[str, float]] = {}

    def update(self, heads: Mapping[str, Mapping[int, str]], now: float) -> dict[str, tuple[str, float]]:
        """queue -> (task id, first seen at the head) of its longest-standing head message."""
        seen: dict[tuple[str, int], tuple[str, float]] = {}
        out: dict[str, tuple[str, float]] = {}
        for queue, by_step in heads.items():
            for step, task_id in by_step.items():
                if len(seen) >= self.limit:
                    break
                slot = (queue, step)
                old = self._seen.get(slot)
                since = old[1] if old is not None and old[0] == task_id else now
                seen[slot] = (task_id, since)
                best = out.get(queue)
                if best is None or since < best[1]:
                    out[queue] = (task_id, since)
        self._seen = seen  # a queue drained (no head) forgets its entry
        return out


def message_task_id(raw: Any) -> str | None:
    """The task id in a kombu Redis message (its JSON ``headers.id``, protocol 2; ``properties
    .correlation_id`` otherwise), or None when the message is not one."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    for part, field in (("headers", "id"), ("properties", "correlation_id")):
        section = message.get(part)
        if isinstance(section, dict):
            value = section.get(field)
            if isinstance(value, str) and value and len(value) <= 255:
                return value
    return None
