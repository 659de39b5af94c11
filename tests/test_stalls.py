"""The stall signals on literal Celery 5 events with an injected clock: queue oldest-task age, oldest
running age, last event timestamps, the Redis head tracker, and the collector that combines them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from exporter.brokers.model import PollResult, QueueDepth, Rules
from exporter.brokers.redis.head import HeadTracker, message_task_id
from exporter.brokers.scheduler import SourceView
from exporter.collectors.stalls import StallCollector
from exporter.config import state_settings
from exporter.state import N_COUNTERS, OVERFLOW_LABEL, ClusterState
from tests._events import T0, ev, heartbeat, received, retried, sent, started, succeeded
from tests._support import FakeClock


def make(clock: FakeClock, **settings: object) -> ClusterState:
    return ClusterState(state_settings(**settings), clock)


def feed(state: ClusterState, *events: dict) -> None:
    for e in events:
        state.apply(e)


def value(st: ClusterState, name: str, views: list[SourceView] | None = None, **labels: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StallCollector(st.take_snapshot, lambda: views or [], st.clock))
    return registry.get_sample_value(name, labels)


def queue_age(state: ClusterState, queue: str, views: list[SourceView] | None = None) -> float | None:
    return value(state, "celery_queue_oldest_task_age_seconds", views, queue=queue)


def running_age(state: ClusterState, name: str, queue: str = "celery") -> float | None:
    return value(state, "celery_task_oldest_running_age_seconds", task_name=name, queue=queue)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_the_oldest_waiting_task_ages_until_it_starts_and_an_empty_queue_is_zero() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, sent("a", "app.a", T0), sent("b", "app.a", T0 + 5))
    clock.advance(20)
    assert queue_age(state, "celery") == 20.0
    # Reserved by a worker but not started: still waiting.
    feed(state, received("a", "app.a", T0 + 21))
    clock.advance(1)
    assert queue_age(state, "celery") == 21.0
    feed(state, started("a", T0 + 22))
    assert queue_age(state, "celery") == 16.0  # b, sent at T0 + 5, is the oldest now
    feed(state, started("b", T0 + 22), succeeded("a", T0 + 23, 1.0), succeeded("b", T0 + 23, 1.0))
    clock.advance(100)
    assert queue_age(state, "celery") == 0.0


def test_an_eta_task_waits_from_its_eta_not_from_its_sending() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, sent("e", "app.e", T0, eta=iso(T0 + 60)), received("e", "app.e", T0 + 0.1, eta=iso(T0 + 60)))
    clock.advance(30)
    assert queue_age(state, "celery") == 0.0  # not due yet: a countdown is not a stall
    clock.advance(45)
    assert queue_age(state, "celery") == 15.0  # due at T0 + 60 and not started at T0 + 75
    feed(state, sent("n", "app.e", T0 + 70))
    assert queue_age(state, "celery") == 15.0  # the due ETA task is older than n


def test_a_retry_re_enters_the_queue_even_when_its_task_sent_overtakes_the_retried_attempt() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, sent("r", "app.r", T0), received("r", "app.r", T0), started("r", T0 + 1))
    assert queue_age(state, "celery") == 0.0
    # The worker publishes the retry (countdown 10) before its own task-retried event arrives.
    feed(state, sent("r", "app.r", T0 + 2, retries=1, eta=iso(T0 + 12)), retried("r", T0 + 2.1))
    clock.advance(30)
    assert queue_age(state, "celery") == 18.0  # due at T0 + 12, now T0 + 30
    assert running_age(state, "app.r") is None  # the first attempt ended with its task-retried
    # The retry's task-received and the old attempt's late task-started must not end the wait ...
    feed(state, received("r", "app.r", T0 + 13, retries=1))
    assert queue_age(state, "celery") == 18.0
    feed(state, started("r", T0 + 31))
    assert queue_age(state, "celery") == 0.0
    assert running_age(state, "app.r") is not None


def test_an_older_attempts_late_task_started_does_not_end_the_retry_s_wait() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    # Attempt 0 received; the retry's task-sent (attempt 1) arrives before attempt 0's task-started.
    feed(state, sent("x", "app.x", T0), received("x", "app.x", T0 + 0.1),
         sent("x", "app.x", T0 + 2, retries=1))
    feed(state, started("x", T0 + 1))  # attempt 0's, overtaken
    clock.advance(10)
    assert queue_age(state, "celery") == 8.0  # attempt 1 still waits since T0 + 2


def test_a_task_sent_that_arrives_after_its_task_started_does_not_open_a_wait() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, received("o", "app.o", T0 + 0.5), started("o", T0 + 0.6), sent("o", "app.o", T0))
    clock.advance(50)
    assert queue_age(state, "celery") == 0.0
    assert running_age(state, "app.o") == pytest.approx(49.4)


def test_a_long_task_is_reported_while_far_more_tasks_than_the_table_holds_flow_past() -> None:
    clock = FakeClock(T0)
    state = make(clock, max_tracked_tasks=50, max_finished_tasks=50)
    feed(state, sent("long", "app.long", T0), received("long", "app.long", T0), started("long", T0))
    for i in range(5_000):
        ts = T0 + i * 0.01
        feed(state, sent(f"t{i}", "app.short", ts), received(f"t{i}", "app.short", ts), started(f"t{i}", ts),
             succeeded(f"t{i}", ts + 0.001, 0.001))
    clock.advance(6 * 3600)
    assert running_age(state, "app.long") == 6 * 3600
    assert running_age(state, "app.short") is None
    # Its record was evicted from the task table; its end still reaches the running tracker.
    feed(state, succeeded("long", T0 + 6 * 3600, 6 * 3600.0))
    assert running_age(state, "app.long") is None


def test_a_task_waiting_under_a_backlog_keeps_its_wait_and_name_once_its_record_is_evicted() -> None:
    clock = FakeClock(T0)
    state = make(clock, max_tracked_tasks=10)
    for i in range(100):
        feed(state, sent(f"b{i}", "app.b", T0 + i))
    snap = state.take_snapshot()
    assert snap.tracked_tasks == 10
    assert snap.stall_untracked["waiting_full"] == 90  # the oldest 10 are held, the newest are not
    clock.advance(200)
    assert queue_age(state, "celery") == 200.0  # b0, sent at T0, whose table record is long gone
    feed(state, ev("task-started", T0 + 200, hostname="celery@w9", uuid="b0"))
    assert queue_age(state, "celery") == 199.0
    clock.advance(5)
    assert running_age(state, "app.b") == 5.0  # named from the waiting tracker


def test_past_the_cap_a_sample_of_the_backlog_keeps_a_lower_bound() -> None:
    clock = FakeClock(T0)
    state = make(clock, max_tracked_tasks=100)
    feed(state, *(sent(f"b{i}", "app.b", T0 + i) for i in range(1_000)))
    clock.now = T0 + 2_000
    assert queue_age(state, "celery") == 2_000.0  # b0: exact while a tracked (oldest) task waits
    feed(state, *(started(f"b{i}", T0 + 1_500) for i in range(100)))
    # The 100 held in full have started; 25 of the other 900 were sampled, one in SAMPLE_STRIDE (64):
    # the oldest sample still waiting is b163 (the 64th untracked), the truth is b100.
    assert queue_age(state, "celery") == 2_000.0 - 163
    feed(state, *(started(f"b{i}", T0 + 1_600) for i in range(100, 1_000)))
    assert queue_age(state, "celery") == 0.0


def test_a_lost_worker_s_tasks_stop_counting_as_running() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, heartbeat("celery@w1", T0, active=1, type_="worker-online"),
         sent("l", "app.l", T0), received("l", "app.l", T0), started("l", T0 + 1))
    clock.advance(10)
    assert running_age(state, "app.l") == 9.0
    feed(state, ev("worker-offline", T0 + 10, hostname="celery@w1"))
    assert running_age(state, "app.l") is None


def test_a_lost_worker_s_long_task_stops_counting_even_once_evicted_from_the_table() -> None:
    clock = FakeClock(T0)
    state = make(clock, max_tracked_tasks=10, max_finished_tasks=10)
    feed(state, heartbeat("celery@w1", T0, active=1, type_="worker-online"),
         sent("long", "app.long", T0), received("long", "app.long", T0), started("long", T0 + 1))
    for i in range(50):  # on another worker: the table evicts long's record
        feed(state, sent(f"s{i}", "app.s", T0 + 2), ev("task-started", T0 + 2, hostname="celery@w2", uuid=f"s{i}"))
    clock.advance(100)
    assert running_age(state, "app.long") == 99.0
    feed(state, ev("worker-offline", T0 + 100, hostname="celery@w1"))
    assert running_age(state, "app.long") is None
    assert running_age(state, "app.s") == 98.0  # w2's tasks still run


def test_a_silent_worker_s_tasks_stop_counting_after_the_worker_timeout() -> None:
    clock = FakeClock(T0)
    state = make(clock, worker_timeout=60.0)
    feed(state, heartbeat("celery@w1", T0, active=1, type_="worker-online"),
         sent("s", "app.s", T0), received("s", "app.s", T0), started("s", T0 + 1))
    clock.advance(45 * 60)  # a 45-minute task on a worker heard from recently is not lost
    feed(state, heartbeat("celery@w1", clock.now, active=1))
    state.tick()
    assert running_age(state, "app.s") == 45 * 60 - 1
    clock.advance(61)
    state.tick()
    assert running_age(state, "app.s") is None


def test_a_waiting_task_whose_start_was_lost_is_dropped_after_the_task_max_age() -> None:
    clock = FakeClock(T0)
    state = make(clock, task_max_age=3600.0)
    feed(state, sent("z", "app.z", T0))
    clock.advance(3000)
    state.tick()
    assert queue_age(state, "celery") == 3000.0
    clock.advance(700)
    state.tick()
    assert queue_age(state, "celery") == 0.0
    assert state.take_snapshot().stall_untracked["waiting_expired"] == 1


def test_last_event_timestamps_never_move_back_and_fold_past_the_series_cap() -> None:
    clock = FakeClock(T0)
    state = make(clock)
    feed(state, sent("a", "app.a", T0 + 5), sent("b", "app.a", T0 + 2))  # out of order
    labels = {"task_name": "app.a", "queue": "celery"}
    last = "celery_task_last_event_timestamp_seconds"
    assert value(state, last, state="sent", **labels) == T0 + 5
    assert value(state, last, state="succeeded", **labels) is None  # no such event yet: no series
    feed(state, received("a", "app.a", T0 + 6), started("a", T0 + 6), succeeded("a", T0 + 7, 1.0),
         received("b", "app.a", T0 + 6), started("b", T0 + 6), retried("b", T0 + 8))
    assert value(state, last, state="started", **labels) == T0 + 6
    assert value(state, last, state="succeeded", **labels) == T0 + 7
    assert value(state, last, state="retried", **labels) == T0 + 8
    capped = make(clock, max_series=N_COUNTERS + 4 + 1)  # the first key's series and its sent stamp
    feed(capped, sent("c", "app.c", T0))
    feed(capped, sent("d", "app.d", T0 + 1))
    assert value(capped, last, task_name="app.c", queue="celery", state="sent") == T0
    assert value(capped, last, task_name=OVERFLOW_LABEL, queue=OVERFLOW_LABEL, state="sent") == T0 + 1


def test_the_head_tracker_keeps_the_first_sighting_of_the_same_message() -> None:
    tracker = HeadTracker()
    assert tracker.update({"q": {0: "m1"}}, T0) == {"q": ("m1", T0)}
    assert tracker.update({"q": {0: "m1", 9: "p1"}}, T0 + 5) == {"q": ("m1", T0)}
    assert tracker.update({"q": {0: "m2", 9: "p1"}}, T0 + 10) == {"q": ("p1", T0 + 5)}  # p1 starves
    assert tracker.update({}, T0 + 15) == {}  # drained: forgotten
    assert tracker.update({"q": {0: "m2"}}, T0 + 20) == {"q": ("m2", T0 + 20)}


def test_the_task_id_of_a_kombu_redis_message() -> None:
    message = {"body": "W1tdLCB7fSwge31d", "content-encoding": "utf-8", "content-type": "application/json",
               "headers": {"lang": "py", "task": "app.a", "id": "6f1c0a57-1c3d-4e43-9a55-5b8e0c4b6c6e"},
               "properties": {"correlation_id": "6f1c0a57-1c3d-4e43-9a55-5b8e0c4b6c6e",
                              "delivery_tag": "d1"}}
    assert message_task_id(json.dumps(message).encode()) == "6f1c0a57-1c3d-4e43-9a55-5b8e0c4b6c6e"
    protocol1 = {"body": "...", "headers": {}, "properties": {"correlation_id": "c1"}}
    assert message_task_id(json.dumps(protocol1)) == "c1"
    for junk in (None, b"not json", b"[1, 2]", b'{"headers": {"id": 5}}', b"[" * 100_000):
        assert message_task_id(junk) is None


def test_the_redis_head_raises_the_event_value_and_never_lowers_it() -> None:
    clock = FakeClock(T0 + 100)
    state = make(clock)
    feed(state, sent("a", "app.a", T0 + 90, queue="q1"))

    def view(heads: dict[str, tuple[str, float]]) -> list[SourceView]:
        result = PollResult(queues={"q1": QueueDepth(3.0), "q2": QueueDepth(1.0), "q3": QueueDepth(0.0)},
                            queue_heads=heads)
        return [SourceView("redis", True, 0.01, 0, result)]

    # Without task-sent events for q2 the head's sighting is the lower bound; q3 is empty: 0.
    views = view({"q1": ("a", T0 + 95), "q2": ("b", T0 + 40)})
    assert queue_age(state, "q1", views) == 10.0  # events know better
    assert queue_age(state, "q2", views) == 60.0
    assert queue_age(state, "q3", views) == 0.0
    assert queue_age(state, "q1", view({"q1": ("x", T0 + 10)})) == 90.0


def test_the_redis_plan_peeks_the_consumed_end_of_each_task_list_and_the_poller_tracks_it() -> None:
    from exporter.brokers.redis.keys import RedisLayout, RedisSettings, index_keys, make_plan, redis_result

    sep = "\x06\x16"
    cfg = RedisSettings(layout=RedisLayout(), rules=Rules(), queue_names=("celery",), peek_heads=True)
    index = index_keys(["celery", f"celery{sep}9"], cfg.layout)
    plan = make_plan(index, [0], cfg, seen=(), remembered={}, truncated=False)
    assert plan.commands == [
        ("LLEN", "celery"), ("LINDEX", "celery", -1), ("LLEN", f"celery{sep}3"), ("LLEN", f"celery{sep}6"),
        ("LLEN", f"celery{sep}9"), ("LINDEX", f"celery{sep}9", -1),
    ]
    message = json.dumps({"headers": {"id": "t-1", "task": "app.a"}, "properties": {}, "body": ""}).encode()
    starving = json.dumps({"headers": {"id": "t-9"}, "properties": {}, "body": ""}).encode()
    result, _ = redis_result(plan, [3, message, 0, 0, 1, starving], "timestamp")
    assert result.queues == {"celery": QueueDepth(4.0)}
    assert result.head_ids == {"celery": {0: "t-1", 9: "t-9"}}
    empty, _ = redis_result(plan, [0, None, 0, 0, 0, None], "timestamp")
    assert empty.head_ids == {}
