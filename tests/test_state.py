"""ClusterState on literal Celery 5 events, with an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from exporter.collectors.workers import worker_up
from exporter.config import state_settings
from exporter.state import (
    EXHAUSTED,
    OVERFLOW_LABEL,
    RECEIVED,
    REVOKED,
    SENT,
    STARTED,
    SUCCEEDED,
    ClusterState,
    exception_class,
    parse_eta,
)
from tests._events import (
    T0,
    ev,
    failed,
    heartbeat,
    received,
    retried,
    sent,
    started,
    succeeded,
)
from tests._support import FakeClock


def make(clock: FakeClock | None = None, **settings) -> ClusterState:
    return ClusterState(state_settings(**settings), clock or FakeClock())


def feed(state: ClusterState, *events: dict) -> None:
    for e in events:
        state.apply(e)


def test_full_lifecycle_counts_and_histograms() -> None:
    s = make()
    feed(s, sent("u1", "proj.add", T0, queue="default"), received("u1", "proj.add", T0 + 0.5),
         started("u1", T0 + 2.0), succeeded("u1", T0 + 3.0, runtime=0.75))
    key = ("proj.add", "default")
    c = s.counters[key]
    assert (c[SENT], c[RECEIVED], c[STARTED], c[SUCCEEDED]) == (1, 1, 1, 1)
    snap = s.snapshot()
    wait = snap.queue_wait[key]
    assert sum(wait.counts) == 1 and wait.total == pytest.approx(2.0)
    dur = snap.durations[("proj.add", "default", 0)]
    assert sum(dur.counts) == 1 and dur.total == pytest.approx(0.75)  # the event's runtime, not ts delta
    assert snap.active[key] == 0
    assert snap.tracked_tasks == 0  # finished tasks leave the table


def test_series_start_at_zero_once_a_name_is_seen() -> None:
    s = make()
    feed(s, sent("u1", "proj.add", T0))
    key = ("proj.add", "celery")
    assert s.counters[key] == [1, 0, 0, 0, 0, 0, 0]
    assert s.failed[(*key, "")] == 0 and s.retried[(*key, "")] == 0


def test_failure_by_exception_class_and_failed_duration() -> None:
    s = make()
    feed(s, sent("u1", "t", T0), started("u1", T0 + 1), failed("u1", T0 + 4, "KeyError('x')"))
    assert s.failed[("t", "celery", "KeyError")] == 1
    assert s.durations[("t", "celery", 1)].total == pytest.approx(3.0)
    assert s.counters[("t", "celery")][EXHAUSTED] == 0  # first attempt failing is not exhaustion


def test_retry_with_backoff_then_success() -> None:
    s = make()
    key = ("t", "q")
    feed(s, sent("u", "t", T0, queue="q"), received("u", "t", T0), started("u", T0 + 1),
         retried("u", T0 + 2, "ConnectionError('x')"))
    # The worker re-publishes with a countdown (ETA 2 s later); it may arrive before or after task-retried.
    eta = "2023-11-14T22:13:24+00:00"  # T0 + 4
    feed(s, sent("u", "t", T0 + 2, queue="q", retries=1, eta=eta), received("u", "t", T0 + 2.1, retries=1, eta=eta),
         started("u", T0 + 5), succeeded("u", T0 + 6, runtime=1.0))
    assert s.retried[(*key, "ConnectionError")] == 1
    assert s.counters[key][SENT] == 2 and s.counters[key][SUCCEEDED] == 1
    waits = s.queue_wait[key]
    assert sum(waits.counts) == 2
    # first attempt waited 1 s; the retry waited from its ETA (T0+4) to T0+5, not from T0+2
    assert waits.total == pytest.approx(1.0 + 1.0)
    assert s.durations[(*key, 2)].total == pytest.approx(1.0)  # the retried attempt ran 1 s
    assert s.active[key] == 0


def test_retries_exhausted_counts_failure_on_a_retry_attempt() -> None:
    s = make()
    feed(s, sent("u", "t", T0), started("u", T0), retried("u", T0 + 1),
         sent("u", "t", T0 + 1, retries=1), received("u", "t", T0 + 2, retries=1), started("u", T0 + 2),
         retried("u", T0 + 3), received("u", "t", T0 + 4, retries=2), started("u", T0 + 4),
         failed("u", T0 + 5, "ConnectionError('still down')"))
    key = ("t", "celery")
    assert s.counters[key][EXHAUSTED] == 1
    assert s.failed[(*key, "ConnectionError")] == 1
    assert s.retried[(*key, "ConnectionError")] == 2


def test_missing_sent_event_falls_back_to_received_and_routes() -> None:
    s = make(task_routes=(("proj.email.*", "email"),), default_queue="default")
    feed(s, received("u1", "proj.email.send", T0), started("u1", T0 + 3),
         received("u2", "proj.other", T0), started("u2", T0 + 1))
    assert s.queue_wait[("proj.email.send", "email")].total == pytest.approx(3.0)
    assert ("proj.other", "default") in s.counters
    assert s.active[("proj.email.send", "email")] == 1


def test_eta_task_wait_is_measured_from_the_eta() -> None:
    s = make()
    eta = "2023-11-14T22:14:20"  # naive ISO: UTC, T0 + 60
    assert parse_eta(eta) == pytest.approx(T0 + 60)
    feed(s, sent("u", "t", T0, eta=eta), received("u", "t", T0 + 0.1, eta=eta), started("u", T0 + 60.5))
    assert s.queue_wait[("t", "celery")].total == pytest.approx(0.5)


def test_events_for_unknown_uuid_are_counted_not_lost() -> None:
    clock = FakeClock()
    s = make(clock)
    feed(s, started("ghost", T0), succeeded("ghost", T0 + 1, 1.0), ev("task-revoked", T0, uuid="x"))
    clock.advance(10)  # held for their name (exporter/state/settings.py HOLD_SECONDS), then counted as unknown
    s.tick()
    key = ("unknown", "celery")
    assert s.counters[key][STARTED] == 1 and s.counters[key][SUCCEEDED] == 1
    assert s.counters[key][REVOKED] == 1


def test_task_table_is_lru_capped_and_ages_out(fake_clock: FakeClock) -> None:
    clock = fake_clock
    s = make(clock, max_tracked_tasks=3, task_max_age=100)
    for i in range(5):
        feed(s, sent(f"u{i}", "t", T0))
    assert len(s.sizes().tasks) == 3 and s.evicted["capacity"] == 2
    feed(s, started("u2", T0))  # touching u2 makes it most recent
    assert s.sizes().tasks == ("u3", "u4", "u2")
    assert s.active[("t", "celery")] == 1
    clock.advance(101)
    s.tick()
    assert s.sizes().tasks == () and s.evicted["age"] == 3
    assert s.active[("t", "celery")] == 0  # an evicted active task no longer counts as active


def test_cardinality_caps_fold_into_overflow() -> None:
    s = make(max_task_names=2, max_exception_types=1, max_workers=1)
    for i in range(4):
        feed(s, sent(f"u{i}", f"task{i}", T0), failed(f"u{i}", T0, f"E{i}('x')"))
    names = {k[0] for k in s.counters}
    assert names == {"task0", "task1", OVERFLOW_LABEL}
    assert s.overflow["task_name"] == 2
    assert {k[2] for k in s.failed if k[2]} == {"E0", OVERFLOW_LABEL}
    feed(s, heartbeat("a@h", T0), heartbeat("b@h", T0))
    assert list(s.workers) == ["a@h"] and s.overflow["worker"] == 1


def test_worker_timeout_and_purge_with_injected_clock(fake_clock: FakeClock) -> None:
    clock = fake_clock
    s = make(clock, worker_timeout=10, worker_purge_after=60)
    feed(s, heartbeat("celery@w1", T0, active=3, type_="worker-online"))
    w = s.workers["celery@w1"]
    assert worker_up(w, clock(), 10) and w.active == 3 and w.version == "5.7.0"
    clock.advance(11)
    assert not worker_up(w, clock(), 10)
    assert "celery@w1" in s.snapshot().workers  # down, but still reported until purged
    clock.advance(50)
    assert "celery@w1" not in s.snapshot().workers  # the scrape stops yielding it at once
    s.tick()
    assert s.workers == {} and s.workers_purged == 1


def test_worker_offline_marks_down_immediately(fake_clock: FakeClock) -> None:
    clock = fake_clock
    s = make(clock)
    feed(s, heartbeat("w", T0), heartbeat("w", T0 + 1, type_="worker-offline"))
    assert not worker_up(s.workers["w"], clock(), s.settings.worker_timeout)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ValueError('boom')", "ValueError"), ("requests.exceptions.HTTPError(...)", "requests.exceptions.HTTPError"),
     ("Retry(Retry(...), ConnectionError('x'), 1)", "ConnectionError"),  # solo/threads pools
     ("celery.exceptions.Retry(None, requests.exceptions.HTTPError('500'), 3)", "requests.exceptions.HTTPError"),
     ("Retry(Retry(...), None, 1)", "Retry"),
     ("", "Unknown"), (None, "Unknown"), ("'quoted'", "Unknown"), ("X" * 500, "X" * 128)],
)
def test_exception_class_is_reduced_and_bounded(text, expected) -> None:
    assert exception_class(text) == expected


def test_negative_wait_from_clock_skew_is_clamped() -> None:
    s = make()
    feed(s, sent("u", "t", T0 + 10), started("u", T0))
    h = s.queue_wait[("t", "celery")]
    assert h.counts[0] == 1 and h.total == 0.0


def test_retry_events_overtaking_the_start_of_the_attempt_that_retried() -> None:
    # Order seen from a real prefork worker (tests/testdata/events/amqp_messages.jsonl): the retry's
    # task-sent/received (published by the child) overtake the parent's task-started of that attempt.
    s = make()
    eta1 = "2023-11-14T22:13:22+00:00"  # T0 + 2
    feed(s, sent("u", "t", T0), received("u", "t", T0), sent("u", "t", T0 + 1.0, retries=1, eta=eta1),
         started("u", T0 + 0.5), received("u", "t", T0 + 1.1, retries=1, eta=eta1), retried("u", T0 + 1.2),
         started("u", T0 + 2.5), succeeded("u", T0 + 3, runtime=0.5))
    h = s.queue_wait[("t", "celery")]
    assert sum(h.counts) == 2
    assert h.total == pytest.approx(0.5 + 0.5)  # attempt 0 waited 0.5 s; attempt 1 waited from its ETA
    assert s.active[("t", "celery")] == 0 and s.sizes().tasks == ()


def test_received_overtaking_sent_uses_the_queue_learned_from_earlier_sent_events() -> None:
    # task-sent comes from the producer's connection, task-received from the worker's: the received
    # event can arrive first. The task keeps one key for all its events (no counter moves), and once a
    # task-sent has shown the name's queue, later early arrivals get that queue, not the fallback.
    s = make(default_queue="fallback")
    feed(s, received("u1", "t", T0), sent("u1", "t", T0, queue="work"), started("u1", T0 + 1),
         succeeded("u1", T0 + 2, 1.0))
    assert s.counters[("t", "fallback")][SENT] == 1 and s.counters[("t", "fallback")][SUCCEEDED] == 1
    feed(s, received("u2", "t", T0 + 3), sent("u2", "t", T0 + 3, queue="work"), started("u2", T0 + 4),
         succeeded("u2", T0 + 5, 1.0))
    assert s.counters[("t", "work")][SENT] == 1 and s.counters[("t", "work")][SUCCEEDED] == 1
    assert s.counters[("t", "work")][RECEIVED] == 1


def test_a_batch_reads_the_clock_once_and_goes_on_past_an_event_that_raises() -> None:
    clock = FakeClock()
    reads = []

    def counting_clock() -> float:
        reads.append(clock())
        return clock()

    s = ClusterState(state_settings(), counting_clock)
    batch = iter([sent("u1", "t", T0), {"type": "task-sent"}, sent("u2", "t", T0 + 1)])  # no timestamp
    with pytest.raises(KeyError):
        s.apply_many(batch, clock())
    s.apply_many(batch, clock())  # the same iterator: the event that raised is behind it
    snap = s.snapshot()
    assert snap.counters[("t", "celery")][SENT] == 2 and snap.events_by_type == {"task-sent": 2}
    assert reads == [clock()]  # the snapshot's own read; applying a batch never reads it
    s.apply(sent("u3", "t", T0 + 2))
    assert len(reads) == 2  # a single event reads it once
