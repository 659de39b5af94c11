"""Every delivery counted under its own name (issue 12) and events idempotent where Celery's delivery is
not (issue 16 item 7): ClusterState on each ordering, literally, with an injected clock. The orderings
are the ones real prefork workers produced (tests/testdata/events/deliveries_*.jsonl, replayed whole in
test_deliveries_replay.py)."""

from __future__ import annotations

import pytest

from exporter.config import state_settings
from exporter.state import (
    HOLD_SECONDS,
    RECEIVED,
    REJECTED,
    REVOKED,
    SENT,
    STARTED,
    SUCCEEDED,
    UNKNOWN_TASK,
    ClusterState,
    exception_class,
)
from tests._events import T0, ev, failed, heartbeat, received, retried, sent, started, succeeded
from tests._support import FakeClock

Q = "celery"


def make(clock: FakeClock | None = None, **settings: object) -> ClusterState:
    return ClusterState(state_settings(**settings), clock or FakeClock())  # type: ignore[arg-type]


def feed(state: ClusterState, *events: dict) -> None:
    for e in events:
        state.apply(e)


def rejected(uuid: str, ts: float, requeue: bool = False) -> dict:
    return ev("task-rejected", ts, uuid=uuid, requeue=requeue)


def revoked(uuid: str, ts: float, terminated: bool = False, expired: bool = False) -> dict:
    return ev("task-revoked", ts, uuid=uuid, terminated=terminated, signum=None, expired=expired)


def start_on(uuid: str, ts: float, host: str) -> dict:
    return ev("task-started", ts, hostname=host, uuid=uuid)


REJECT = ("reject requeue=False: not now", "Traceback (most recent call last):\n  File ...\n"
          "celery.exceptions.Reject: ('not now', False)\n")


def test_reject_through_a_dlx_ladder_keeps_its_name_on_every_delivery() -> None:
    # task-failed then a nameless task-rejected; the DLX brings the message back as a new task-received.
    s = make()
    feed(s, sent("u", "t", T0), received("u", "t", T0))
    for i in range(2):
        feed(s, started("u", T0 + 10 * i + 1), failed("u", T0 + 10 * i + 2, REJECT[0]) | {"traceback": REJECT[1]},
             rejected("u", T0 + 10 * i + 2), received("u", "t", T0 + 10 * i + 5))
    feed(s, started("u", T0 + 30), succeeded("u", T0 + 31, runtime=1.0))
    c = s.counters[("t", Q)]
    assert (c[SENT], c[RECEIVED], c[STARTED], c[REJECTED], c[SUCCEEDED]) == (1, 3, 3, 2, 1)
    assert s.failed[("t", Q, "Reject")] == 2
    assert not any(k[0] == UNKNOWN_TASK for k in s.counters) and s.unnamed_tasks == 0
    assert s.active[("t", Q)] == 0 and s.sizes().tasks == ()
    assert sum(s.durations[("t", Q, 1)].counts) == 2  # each failed delivery one failed duration


def test_hard_time_limit_sends_two_task_failed_and_counts_one() -> None:
    tb = "Traceback ...\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n"
    s = make()
    feed(s, sent("u", "t", T0), received("u", "t", T0), started("u", T0 + 1),
         failed("u", T0 + 2, "ExceptionWithTraceback()") | {"traceback": tb},
         failed("u", T0 + 2.03, "ExceptionWithTraceback()") | {"traceback": tb})
    assert s.failed[("t", Q, "TimeLimitExceeded")] == 1
    assert s.ignored["duplicate"] == 1
    assert sum(s.durations[("t", Q, 1)].counts) == 1


def test_redelivered_terminal_event_and_start_after_the_end_change_only_a_self_metric() -> None:
    s = make()
    done = succeeded("u", T0 + 2, runtime=1.0)
    feed(s, sent("u", "t", T0), received("u", "t", T0), started("u", T0 + 1), done)
    before = (s.counters[("t", Q)][:], dict(s.active), {k: h.counts[:] for k, h in s.durations.items()})
    feed(s, dict(done), started("u", T0 + 1), started("u", T0 + 9))  # redelivered; a start after the end
    assert (s.counters[("t", Q)], dict(s.active), {k: h.counts for k, h in s.durations.items()}) == before
    assert s.ignored["duplicate"] == 2 and s.ignored["after_terminal"] == 1
    assert not any(k[0] == UNKNOWN_TASK for k in s.counters)


def test_an_earlier_attempts_events_overtaken_by_the_final_outcome_still_count() -> None:
    # Attempt 1 ran on a worker that flushed its events late; attempt 2 (another worker) already finished
    # (the event benchmark's flood has this ordering). Its received/started/retried are late, not repeats.
    s = make()
    feed(s, sent("u", "t", T0), received("u", "t", T0), started("u", T0 + 1), retried("u", T0 + 2),
         sent("u", "t", T0 + 2, retries=1), sent("u", "t", T0 + 3, retries=2),
         received("u", "t", T0 + 5, retries=2), started("u", T0 + 5.5), succeeded("u", T0 + 6, runtime=0.5),
         received("u", "t", T0 + 3.1, retries=1), started("u", T0 + 3.2), retried("u", T0 + 3.7))
    c = s.counters[("t", Q)]
    assert (c[RECEIVED], c[STARTED], c[SUCCEEDED]) == (3, 3, 1)
    assert s.retried[("t", Q, "ConnectionError")] == 2
    assert sum(s.durations[("t", Q, 2)].counts) == 2  # each retried attempt one sample
    assert s.durations[("t", Q, 2)].total == pytest.approx(1.0 + 0.5)
    assert s.active[("t", Q)] == 0 and s.sizes().tasks == () and s.ignored["after_terminal"] == 0


def test_late_task_retried_does_not_erase_the_next_attempts_start() -> None:
    # Retry with jitter (captured: deliveries_redis.jsonl, jitter c0b6d5): the next attempt's task-started
    # arrives before the task-retried of the attempt before it.
    s = make()
    feed(s, sent("u", "t", T0), received("u", "t", T0), started("u", T0 + 1),
         sent("u", "t", T0 + 1.5, retries=1), received("u", "t", T0 + 1.6, retries=1),
         started("u", T0 + 2), retried("u", T0 + 2.5), succeeded("u", T0 + 5, runtime=3.0))
    key = ("t", Q)
    assert sum(s.durations[(*key, 2)].counts) == 1 and s.durations[(*key, 2)].total == pytest.approx(1.5)
    assert sum(s.durations[(*key, 0)].counts) == 1 and s.durations[(*key, 0)].total == pytest.approx(3.0)
    assert s.active[key] == 0 and s.sizes().tasks == ()


def test_task_retried_after_the_final_event_still_gets_its_duration() -> None:
    s = make()
    feed(s, sent("u", "t", T0), received("u", "t", T0), started("u", T0 + 1), started("u", T0 + 2),
         failed("u", T0 + 4), retried("u", T0 + 4.5))
    key = ("t", Q)
    assert s.durations[(*key, 1)].total == pytest.approx(2.0)  # the final attempt: the newest start
    assert s.durations[(*key, 2)].total == pytest.approx(3.5)  # the retried one: the oldest
    assert s.retried[(*key, "ConnectionError")] == 1 and s.active[key] == 0


def test_nameless_events_are_held_then_replayed_under_the_name() -> None:
    s = make()
    feed(s, started("u", T0 + 1))
    assert s.counters == {} and s.active == {}  # held, counted nowhere
    feed(s, received("u", "t", T0))
    key = ("t", Q)
    assert s.counters[key][STARTED] == 1 and s.counters[key][RECEIVED] == 1 and s.active[key] == 1
    feed(s, succeeded("u", T0 + 2, runtime=1.0))
    assert s.active[key] == 0 and s.unnamed_tasks == 0 and UNKNOWN_TASK not in {k[0] for k in s.counters}


def test_unknown_only_for_a_task_never_seen_named_and_counted() -> None:
    clock = FakeClock()
    s = make(clock)
    feed(s, started("ghost", T0), succeeded("ghost", T0 + 1, runtime=1.0))
    assert s.counters == {}  # held: its name may still come
    clock.advance(HOLD_SECONDS)
    s.tick()
    key = (UNKNOWN_TASK, Q)
    assert s.counters[key][STARTED] == 1 and s.counters[key][SUCCEEDED] == 1 and s.unnamed_tasks == 1
    assert s.active[key] == 0
    # Its task-sent, late: counted under the name it carries; nothing under unknown moves back.
    feed(s, sent("ghost", "t", T0 - 1))
    assert s.counters[("t", Q)][SENT] == 1 and s.counters[key][STARTED] == 1


def test_a_terminal_event_overtaking_the_task_sent_keeps_the_name() -> None:
    # An expired task is revoked at receipt, without task-received: its task-revoked (worker connection)
    # can overtake the producer's task-sent (seen on RabbitMQ by tests/test_deliveries_e2e.py).
    clock = FakeClock()
    s = make(clock)
    feed(s, revoked("u", T0 + 1, expired=True))
    clock.advance(3)
    feed(s, sent("u", "t", T0))
    clock.advance(HOLD_SECONDS)
    s.tick()
    assert s.revoked == {("t", Q, "expired"): 1} and s.counters[("t", Q)][SENT] == 1
    assert s.unnamed_tasks == 0 and s.sizes().tasks == ()


def test_revoke_reasons_from_the_events_flags() -> None:
    s = make()
    for u, kw in (("a", {}), ("b", {"terminated": True}), ("c", {"expired": True})):
        feed(s, sent(u, "t", T0), revoked(u, T0 + 1, **kw))
    assert s.counters[("t", Q)][REVOKED] == 1
    assert s.revoked == {("t", Q, "terminated"): 1, ("t", Q, "expired"): 1}


def test_worker_silent_past_the_timeout_loses_its_started_tasks() -> None:
    clock = FakeClock()
    s = make(clock, worker_timeout=10)
    feed(s, heartbeat("w1", T0, type_="worker-online"), sent("u", "t", T0), received("u", "t", T0),
         start_on("u", T0 + 1, "w1"), sent("v", "t", T0), received("v", "t", T0))  # v never started
    key = ("t", Q)
    assert s.active[key] == 1
    clock.advance(9)
    s.tick()
    assert s.lost[key] == 0
    clock.advance(2)
    s.tick()
    assert s.active[key] == 0 and s.lost[key] == 1
    s.tick()
    assert s.lost[key] == 1  # once
    # A later event for it still counts normally (the message was redelivered and finished elsewhere).
    feed(s, succeeded("u", T0 + 30, runtime=2.0))
    assert s.counters[key][SUCCEEDED] == 1 and s.active[key] == 0 and s.lost[key] == 1


def test_worker_offline_with_tasks_running_loses_them() -> None:
    s = make()
    feed(s, heartbeat("w1", T0, type_="worker-online"), received("u", "t", T0), start_on("u", T0 + 1, "w1"),
         received("x", "t", T0), start_on("x", T0 + 1, "w2"), heartbeat("w1", T0 + 2, type_="worker-offline"))
    assert s.lost[("t", Q)] == 1 and s.active[("t", Q)] == 1  # x runs on w2


def test_heartbeat_reporting_fewer_active_tasks_reconciles_the_oldest() -> None:
    # Ignore ends a task without any event; the worker's heartbeats stop counting it.
    s = make()
    feed(s, heartbeat("w1", T0, type_="worker-online"), received("old", "t", T0), start_on("old", T0 + 1, "w1"),
         received("new", "t", T0), start_on("new", T0 + 2, "w1"))
    key = ("t", Q)
    feed(s, heartbeat("w1", T0 + 3, active=1))
    assert s.active[key] == 2 and s.lost[key] == 0  # suspect only: its final event may be in flight
    feed(s, heartbeat("w1", T0 + 5, active=1))
    assert s.active[key] == 1 and s.lost[key] == 1
    feed(s, succeeded("new", T0 + 6, runtime=4.0))
    assert s.active[key] == 0 and s.lost[key] == 1


def test_heartbeat_ahead_of_a_buffered_final_event_loses_nothing() -> None:
    # Celery buffers task events, not heartbeats: the heartbeat that no longer counts a task can arrive
    # before that task's task-succeeded.
    s = make()
    feed(s, heartbeat("w1", T0, type_="worker-online"), received("u", "t", T0), start_on("u", T0 + 1, "w1"),
         heartbeat("w1", T0 + 2, active=0), succeeded("u", T0 + 1.9, runtime=0.9),
         heartbeat("w1", T0 + 4, active=0))
    assert s.lost[("t", Q)] == 0 and s.active[("t", Q)] == 0 and s.counters[("t", Q)][SUCCEEDED] == 1


def test_finished_memory_is_bounded() -> None:
    s = make(max_finished_tasks=10)
    for i in range(100):
        feed(s, sent(f"u{i}", "t", T0), started(f"u{i}", T0), succeeded(f"u{i}", T0, 0.1))
    assert 5 <= s.sizes().finished <= 10 and s.sizes().tasks == ()


def test_held_events_are_bounded_per_task() -> None:
    s = make()
    feed(s, *[retried("u", T0 + i) for i in range(20)])
    assert s.unnamed_tasks == 1 and s.retried[(UNKNOWN_TASK, Q, "ConnectionError")] == 20


def test_total_series_cap_folds_new_series_into_overflow() -> None:
    s = make(max_series=200, duration_buckets=(1.0,), queue_wait_buckets=(1.0,))
    for i in range(100):
        feed(s, sent(f"u{i}", f"t{i}", T0), started(f"u{i}", T0 + 1), failed(f"u{i}", T0 + 2, f"E{i}('x')"))
    assert s.sizes().series <= 200 and s.overflow["series"] > 0
    assert ("__overflow__", "__overflow__") in s.counters
    total_started = sum(c[STARTED] for c in s.counters.values())
    assert total_started == 100  # nothing dropped: folded


@pytest.mark.parametrize(("exception", "traceback", "expected"), [
    # Captured from real prefork workers, Celery 5.7 / billiard 4.3 (tests/testdata/events/deliveries_*).
    ("reject requeue=False: not now", "Traceback ...\ncelery.exceptions.Reject: ('not now', False)\n", "Reject"),
    ("ExceptionWithTraceback()", "Traceback ...\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n",
     "TimeLimitExceeded"),
    ("SoftTimeLimitExceeded()", "Traceback ...\nbilliard.exceptions.SoftTimeLimitExceeded: SoftTimeLimitExceeded()",
     "SoftTimeLimitExceeded"),
    ("ExceptionWithTraceback()", "Traceback ...\nbilliard.exceptions.WorkerLostError: Worker exited prematurely: "
     "signal 9 (SIGKILL) Job: 6.", "WorkerLostError"),
    ("ConnectionError('upstream down')", "celery.exceptions.Retry: Retry in 1s: ConnectionError('upstream down')",
     "ConnectionError"),
    ("Retry(Retry(...), ConnectionError('x'), 1)", None, "ConnectionError"),  # solo/threads pools
    ("Retry in 5s", "Traceback ...\ncelery.exceptions.Retry: Retry in 5s", "Retry"),
    ("requests.exceptions.HTTPError('500')", None, "requests.exceptions.HTTPError"),
    ("ExceptionWithTraceback()", None, "ExceptionWithTraceback"),  # no traceback to look into
])
def test_exception_classes_from_what_celery_sends(exception: str, traceback: str | None, expected: str) -> None:
    assert exception_class(exception, traceback) == expected
