"""Dead letters added: the ``celery_dead_letter_messages_added_total{queue}`` counter, kept per source from
successive poll results (``PollStore`` feeds it, ``QueueCollector`` serves it).

Two ways to count, per DLQ and per poll:

* the broker's own cumulative publish count (``QueueDepth.published_total`` in
  ``PollResult.dead_letter_depth``, RabbitMQ's management statistics): the counter follows its increases;
  a count that went down (the queue was deleted and declared again) adds what was published since;
* otherwise the positive difference between this poll's length and the last one: a drop then a rise
  counts the rise, so letters added while a replay drains the queue still count, as far as one poll
  interval can see (letters added and removed between two polls are not seen).

The first sight of a DLQ adds 0 whichever way it is counted: an old, large DLQ seen after a restart or a
new install is not growth. A DLQ missing from one poll keeps its last value for the next comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.status import PollResult

# DLQ names tracked per source; a poll result is already capped at --max-queues, this only bounds churn.
MAX_TRACKED = 10_000


@dataclass
class _Seen:
    length: float
    published: float | None


class DeadLetterAdded:
    """Per-DLQ added-letter totals of one source. Not thread-safe: ``PollStore`` holds its lock."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._last: dict[str, _Seen] = {}
        self._total: dict[str, float] = {}

    def observe(self, result: PollResult) -> None:
        for name, length in result.dead_letter.items():
            depth = result.dead_letter_depth.get(name)
            published = depth.published_total if depth is not None else None
            last = self._last.get(name)
            if last is None:
                if len(self._last) >= self.max_tracked:
                    continue
                self._total[name] = 0.0
            else:
                self._total[name] += _added(last, length, published)
            self._last[name] = _Seen(length, published)

    def totals(self) -> Mapping[str, float]:
        return dict(self._total)


def _added(last: _Seen, length: float, published: float | None) -> float:
    if published is not None and last.published is not None:
        return published - last.published if published >= last.published else published
    return max(0.0, length - last.length)
