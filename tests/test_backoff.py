"""Unit tests for the reconnect backoff (pure; the random source is injected)."""

from __future__ import annotations

import pytest

from exporter.brokers.backoff import Backoff


def test_grows_exponentially_then_caps_without_jitter() -> None:
    b = Backoff(initial=0.5, cap=4.0, factor=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_attempt_stops_counting_at_the_cap() -> None:
    b = Backoff(initial=1.0, cap=8.0, jitter=0.0)
    for _ in range(10_000):  # a broker down for a long time must not overflow 2.0 ** attempt
        b.next_delay()
    assert b.attempt == 3
    assert b.next_delay() == 8.0


def test_jitter_draws_below_the_base_by_the_injected_fraction() -> None:
    draws = iter([0.0, 1.0, 0.5])
    b = Backoff(initial=2.0, cap=100.0, factor=3.0, jitter=0.5, rng=lambda: next(draws))
    assert b.next_delay() == 2.0  # rng 0 -> the full base
    assert b.next_delay() == 3.0  # base 6, rng 1 -> 6 * (1 - 0.5)
    assert b.next_delay() == 13.5  # base 18, rng 0.5 -> 18 * 0.75


def test_reset_starts_over() -> None:
    b = Backoff(initial=0.25, cap=10.0, jitter=0.0)
    for _ in range(5):
        b.next_delay()
    assert b.peek() == 8.0
    b.reset()
    assert b.next_delay() == 0.25


def test_full_jitter_stays_within_bounds_with_the_real_rng() -> None:
    b = Backoff(initial=1.0, cap=5.0, jitter=1.0)
    for _ in range(200):
        base = b.peek()
        d = b.next_delay()
        assert 0.0 <= d <= base <= 5.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0.0}, {"initial": 2.0, "cap": 1.0}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
