"""``celery_dead_letter_messages_added_total``: pure tests of the counting rules on literal poll results,
then the same situations against a real Redis DLQ through the real pollers (burst, trickle, a replay
draining while letters arrive, an exporter restart finding an old, large DLQ)."""

from __future__ import annotations

import json

import pytest

from exporter.brokers.growth import DeadLetterAdded
from exporter.brokers.polling import build_polling
from exporter.config import Config, poll_settings
from exporter.status import PollResult, QueueDepth
from tests._broker_helpers import RedisServer, by_queue, polled_registry, samples
from tests._support import FakeClock

ADDED = "celery_dead_letter_messages_added_total"


def lengths(*values: float, name: str = "dlq:a") -> list[PollResult]:
    return [PollResult(dead_letter={name: v}) for v in values]


def added_after(results: list[PollResult]) -> float:
    counter = DeadLetterAdded()
    for result in results:
        counter.observe(result)
    return counter.totals()["dlq:a"]


def test_first_sight_adds_nothing_however_full() -> None:
    assert added_after(lengths(50_000)) == 0.0


def test_a_burst_counts_every_letter() -> None:
    assert added_after(lengths(0, 5_000, 5_000)) == 5_000


def test_a_trickle_counts_one_by_one() -> None:
    assert added_after(lengths(3, 4, 4, 5, 6)) == 3


def test_a_drop_then_a_rise_counts_the_rise() -> None:
    # A replay drains 10 while 2 new letters arrive, then 3 more arrive.
    assert added_after(lengths(10, 2, 5)) == 3
    assert added_after(lengths(10, 0, 0, 4)) == 4


def test_a_missing_poll_compares_with_the_last_seen_length() -> None:
    results = [*lengths(2), PollResult(), *lengths(7)]
    assert added_after(results) == 5


def test_the_brokers_publish_count_wins_over_length_differences() -> None:
    def pub(length: float, published: float) -> PollResult:
        return PollResult(dead_letter={"dlq:a": length},
                          dead_letter_depth={"dlq:a": QueueDepth(length, published_total=published)})

    # 40 published while consumers drained the queue: the length never moved, the count did.
    assert added_after([pub(3, 100), pub(3, 140)]) == 40
    # The queue was deleted and declared again: its count restarted; what was published since counts.
    assert added_after([pub(3, 100), pub(1, 6)]) == 6
    # First sight of the count adds nothing.
    assert added_after([pub(3, 1_000)]) == 0


@pytest.mark.integration
def test_against_real_redis_burst_trickle_drain_and_restart(redis_server: RedisServer) -> None:
    db = redis_server.client(3)
    db.rpush("dlq:app.pay", *[json.dumps({"timestamp": 1.7e9})] * 300)  # old letters, before the start
    config = Config(redis_server.url(0), dead_letter_redis_urls=(redis_server.url(3),))
    clock = FakeClock(1.7e9)

    def run() -> tuple[object, object]:
        polling = build_polling(poll_settings(config), lambda: ())
        return polling, polled_registry(polling, clock)

    polling, registry = run()
    try:
        polling.poll_once()
        assert by_queue(samples(registry), ADDED) == {"dlq:app.pay": 0.0}  # found full: not growth
        db.rpush("dlq:app.pay", *[b"{}"] * 5_000)  # burst
        polling.poll_once()
        assert by_queue(samples(registry), ADDED)["dlq:app.pay"] == 5_000.0
        for _ in range(3):  # trickle
            db.rpush("dlq:app.pay", b"{}")
            polling.poll_once()
        assert by_queue(samples(registry), ADDED)["dlq:app.pay"] == 5_003.0
        db.ltrim("dlq:app.pay", 5_000, -1)  # a replay drains 5,000 ...
        db.rpush("dlq:app.pay", *[b"{}"] * 7)  # ... while 7 new letters arrive
        polling.poll_once()
        db.rpush("dlq:app.pay", *[b"{}"] * 2)
        polling.poll_once()
        assert by_queue(samples(registry), ADDED)["dlq:app.pay"] == 5_005.0  # the drop hid 7; the rise counts
        db.delete("dlq:app.pay")  # drained; Redis deletes the list
        polling.poll_once()
        db.rpush("dlq:app.pay", b"{}")
        polling.poll_once()
        assert by_queue(samples(registry), ADDED)["dlq:app.pay"] == 5_006.0
    finally:
        polling.close()  # type: ignore[attr-defined]

    db.rpush("dlq:app.pay", *[b"{}"] * 100)
    polling, registry = run()  # the exporter restarts and finds 101 letters
    try:
        polling.poll_once()
        assert by_queue(samples(registry), ADDED) == {"dlq:app.pay": 0.0}
    finally:
        polling.close()  # type: ignore[attr-defined]
