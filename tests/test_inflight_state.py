"""What the state does with an in-flight inventory, after a stream reconnect, with the heartbeats'
``processed`` count, and with timestamps from a clock running fast: pure tests on literal events and
inventories, read through ``Snapshot``."""

from __future__ import annotations

import pytest

from exporter.config import state_settings
from exporter.events.decode import FUTURE_SKEW, SENT_AT, decode_event_objects
from exporter.events.ingest import Ingest
from exporter.inflight import ACTIVE, WAITING, HeldTask, Inventory
from exporter.state import ClusterState
from tests._events import T0, ev, heartbeat, received, sent, started, succeeded
from tests._support import FakeClock

W = "celery@w1"
NAME, QUEUE = "app.long", "reports"
KEY = (NAME, QUEUE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def state(clock: FakeClock) -> ClusterState:
    return ClusterState(state_settings(), clock)


def apply(state: ClusterState, *events: dict[str, object]) -> None:
    for event in events:
        state.apply(event)


def held(uuid: str, state_: str = ACTIVE, since: float = T0 - 40, worker: str = W) -> HeldTask:
    return HeldTask(uuid, NAME, QUEUE, worker, state_, since)


def inventory(*tasks: HeldTask, answered: tuple[str, ...] = (W,)) -> Inventory:
    return Inventory(T0, answered, tasks)


# ------------------------------------------------------------------ adoption
def test_an_adopted_running_task_is_active_with_its_age_and_ends_under_its_name(state: ClusterState,
                                                                                 clock: FakeClock) -> None:
    state.adopt_inflight(inventory(held("a")))
    snap = state.snapshot()
    assert snap.active[KEY] == 1
    assert snap.oldest_running[KEY] == T0 - 40
    clock.advance(20)
    apply(state, succeeded("a", T0 + 20, 60.0))
    snap = state.snapshot()
    assert snap.active[KEY] == 0 and snap.oldest_running == {}
    assert snap.counters[KEY][state_counter("succeeded")] == 1
    assert snap.unnamed_tasks == 0
    assert snap.durations[(NAME, QUEUE, 0)].counts != [0] * len(snap.durations[(NAME, QUEUE, 0)].counts)


def state_counter(name: str) -> int:
    from exporter.state import STARTED, SUCCEEDED

    return {"started": STARTED, "succeeded": SUCCEEDED}[name]


def test_events_held_before_the_inventory_are_named_by_it(state: ClusterState, clock: FakeClock) -> None:
    # The task ended before the answer came: its nameless task-succeeded waited for a name.
    apply(state, succeeded("a", T0 - 1, 39.0))
    state.adopt_inflight(inventory(held("a")))
    snap = state.snapshot()
    assert snap.counters[KEY][state_counter("succeeded")] == 1
    assert snap.active[KEY] == 0 and snap.unnamed_tasks == 0


def test_a_task_the_stream_saw_end_is_not_brought_back(state: ClusterState) -> None:
    apply(state, received("a", NAME, T0 - 50), started("a", T0 - 40), succeeded("a", T0 - 1, 39.0))
    state.adopt_inflight(inventory(held("a")))
    snap = state.snapshot()
    assert snap.active[("app.long", "celery")] == 0
    assert KEY not in snap.active or snap.active[KEY] == 0


def test_a_task_the_stream_saw_start_keeps_its_start(state: ClusterState) -> None:
    apply(state, received("a", NAME, T0 - 50), started("a", T0 - 30))
    state.adopt_inflight(inventory(held("a", since=T0 - 31)))
    snap = state.snapshot()
    assert snap.active[(NAME, "celery")] == 1
    assert snap.oldest_running[(NAME, "celery")] == T0 - 30


def test_a_task_started_after_the_inventory_replaces_the_adopted_start(state: ClusterState) -> None:
    # Celery buffers task events: the task-started of a task the inventory found running may come after.
    state.adopt_inflight(inventory(held("a", since=T0 - 0.2)))
    apply(state, started("a", T0 - 0.1))
    snap = state.snapshot()
    assert snap.active[KEY] == 1
    assert snap.oldest_running[KEY] == T0 - 0.1
    assert snap.counters[KEY][state_counter("started")] == 1
    apply(state, succeeded("a", T0 + 5, 5.0))
    assert state.snapshot().active[KEY] == 0


def test_prefetched_tasks_wait_in_their_queue(state: ClusterState) -> None:
    state.adopt_inflight(inventory(held("r", WAITING, since=T0), held("s", WAITING, since=T0 + 120)))
    snap = state.snapshot()
    assert snap.oldest_waiting == {QUEUE: T0}
    assert snap.active[KEY] == 0
    apply(state, started("r", T0 + 1))
    snap = state.snapshot()
    assert snap.oldest_waiting == {QUEUE: T0 + 120} and snap.active[KEY] == 1


def test_an_inventory_running_task_seen_waiting_starts(state: ClusterState) -> None:
    apply(state, sent("a", NAME, T0 - 50, queue=QUEUE))
    state.adopt_inflight(inventory(held("a", since=T0 - 45)))
    snap = state.snapshot()
    assert snap.oldest_waiting == {}
    assert snap.active[KEY] == 1 and snap.oldest_running[KEY] == T0 - 45


def test_a_worker_lost_loses_its_adopted_tasks(state: ClusterState, clock: FakeClock) -> None:
    state.adopt_inflight(inventory(held("a")))
    apply(state, ev("worker-offline", T0 + 1, hostname=W))
    snap = state.snapshot()
    assert snap.active[KEY] == 0 and snap.lost[KEY] == 1


# ------------------------------------------------------------------ reconnects
def test_after_a_reconnect_without_inventory_waiting_tasks_are_dropped(state: ClusterState) -> None:
    apply(state, sent("a", NAME, T0 - 50, queue=QUEUE))
    assert state.snapshot().oldest_waiting == {QUEUE: T0 - 50}
    state.stream_resumed(expect_inventory=False)
    assert state.snapshot().oldest_waiting == {}


def test_after_a_reconnect_the_inventory_confirms_what_still_waits(state: ClusterState) -> None:
    apply(state, sent("a", NAME, T0 - 50, queue=QUEUE), sent("b", NAME, T0 - 40, queue=QUEUE),
          sent("c", NAME, T0 - 30, queue=QUEUE))
    state.stream_resumed(expect_inventory=True)
    assert state.snapshot().oldest_waiting == {QUEUE: T0 - 50}  # until the answer comes
    # "a" started during the outage, "b" is still prefetched, "c" ended unseen.
    state.adopt_inflight(inventory(held("a", since=T0 - 20), held("b", WAITING, since=T0)))
    snap = state.snapshot()
    assert snap.oldest_waiting == {QUEUE: T0 - 40}  # b keeps the wait it had
    assert snap.active[KEY] == 1 and snap.oldest_running[KEY] == T0 - 20


def test_after_a_reconnect_an_inventory_nobody_answered_drops_the_waiting(state: ClusterState) -> None:
    apply(state, sent("a", NAME, T0 - 50, queue=QUEUE))
    state.stream_resumed(expect_inventory=True)
    state.adopt_inflight(Inventory(T0))
    assert state.snapshot().oldest_waiting == {}


def test_a_task_sent_after_the_reconnect_is_not_dropped(state: ClusterState) -> None:
    state.stream_resumed(expect_inventory=True)
    apply(state, sent("new", NAME, T0 + 1, queue=QUEUE))
    state.adopt_inflight(Inventory(T0))
    assert state.snapshot().oldest_waiting == {QUEUE: T0 + 1}


def test_ingest_hands_an_inventory_to_the_state_on_its_next_turn(state: ClusterState, clock: FakeClock) -> None:
    ingest = Ingest(state, clock)
    asked: list[bool] = []
    ingest.on_connect = lambda: asked.append(True)
    ingest.connected(events_lost=False)
    assert asked == [True]
    ingest.offer_inventory(inventory(held("a")))
    assert state.snapshot().active == {}
    ingest.idle()
    assert state.snapshot().active[KEY] == 1


# ------------------------------------------------------------------ missed events
def beat(state: ClusterState, clock: FakeClock, processed: int, host: str = W,
         type_: str = "worker-heartbeat") -> None:
    clock.advance(2)
    apply(state, heartbeat(host, clock.now, processed=processed, type_=type_))


def run_tasks(state: ClusterState, clock: FakeClock, first: int, n: int, host: str = W,
              deliver: bool = True) -> None:
    for i in range(first, first + n):
        if deliver:
            apply(state, ev("task-received", clock.now, hostname=host, uuid=f"t{i}", name=NAME),
                  ev("task-started", clock.now + 0.001, hostname=host, uuid=f"t{i}"))


def test_a_clean_run_misses_nothing_whatever_the_race(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 0, type_="worker-online")
    done = 0
    for _ in range(10):
        # The heartbeat reports 5 starts whose events are still in the worker's buffer.
        beat(state, clock, done + 5)
        run_tasks(state, clock, done, 5)
        done += 5
    beat(state, clock, done)
    beat(state, clock, done)
    snap = state.snapshot()
    assert snap.events_missed == 0
    assert snap.workers[W].processed == done and snap.workers[W].missed == 0
    assert snap.workers[W].task_events == done


def test_lost_starts_are_counted_once(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 0, type_="worker-online")
    run_tasks(state, clock, 0, 10)
    beat(state, clock, 10)
    run_tasks(state, clock, 10, 7, deliver=False)  # a cut: seven starts never arrive
    run_tasks(state, clock, 17, 3)
    for _ in range(4):
        beat(state, clock, 20)
    snap = state.snapshot()
    assert snap.events_missed == 7 and snap.workers[W].missed == 7


def test_an_exporter_restart_counts_nothing(state: ClusterState, clock: FakeClock) -> None:
    # The first heartbeat seen says the worker accepted 5,000 tasks: none of those is counted.
    beat(state, clock, 5000)
    run_tasks(state, clock, 0, 4)
    beat(state, clock, 5004)
    beat(state, clock, 5004)
    assert state.snapshot().events_missed == 0


def test_a_worker_restart_starts_a_new_count(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 100)
    run_tasks(state, clock, 0, 10)
    beat(state, clock, 110)
    beat(state, clock, 0, type_="worker-online")  # restarted: processed starts again
    run_tasks(state, clock, 10, 3)
    beat(state, clock, 3)
    beat(state, clock, 3)
    snap = state.snapshot()
    assert snap.events_missed == 0 and snap.workers[W].processed == 3


def test_a_worker_without_task_events_misses_every_start(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 0, type_="worker-online")
    for n in (10, 20, 30, 30):
        beat(state, clock, n)
    snap = state.snapshot()
    assert snap.events_missed == 30 and snap.workers[W].task_events == 0


def test_a_duplicate_task_started_does_not_hide_a_lost_one(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 0, type_="worker-online")
    run_tasks(state, clock, 0, 2)
    apply(state, ev("task-started", clock.now + 0.001, hostname=W, uuid="t1"))  # an AMQP redelivery
    beat(state, clock, 3)  # a third start was lost
    beat(state, clock, 3)
    assert state.snapshot().events_missed == 1


def test_a_start_held_for_its_name_counts_as_received(state: ClusterState, clock: FakeClock) -> None:
    beat(state, clock, 0, type_="worker-online")
    apply(state, ev("task-started", clock.now, hostname=W, uuid="x"))  # no name yet: held
    beat(state, clock, 1)
    beat(state, clock, 1)
    assert state.snapshot().events_missed == 0
    apply(state, received("x", NAME, clock.now - 1))  # named: replayed, not counted twice
    beat(state, clock, 1)
    beat(state, clock, 2)
    beat(state, clock, 2)
    assert state.snapshot().events_missed == 1
    assert state.snapshot().workers[W].task_events == 1


@pytest.mark.parametrize("processed", [-1, 1.5, "7", True, None, 2**70])
def test_a_processed_that_is_not_a_count_is_ignored(state: ClusterState, clock: FakeClock,
                                                    processed: object) -> None:
    beat(state, clock, 0, type_="worker-online")
    clock.advance(2)
    apply(state, {**heartbeat(W, clock.now), "processed": processed})
    beat(state, clock, 0)
    snap = state.snapshot()
    assert snap.events_missed == 0 and snap.workers[W].processed == 0


# ------------------------------------------------------------------ clocks running fast
def test_an_event_a_day_ahead_is_clamped_and_counted(state: ClusterState, clock: FakeClock) -> None:
    ingest = Ingest(state, clock)
    ingest.feed_objects([heartbeat("celery@fast", T0 + 23 * 3600), heartbeat("celery@ok", T0 + 2)])
    snap = state.snapshot()
    assert snap.last_event_ts == T0 + 2
    assert snap.workers["celery@fast"].heartbeat_ts == T0
    assert snap.clamped == 1


def test_decode_clamps_past_the_skew_and_refuses_past_a_day() -> None:
    out = decode_event_objects([ev("worker-heartbeat", T0 + FUTURE_SKEW - 1),
                                ev("worker-heartbeat", T0 + FUTURE_SKEW + 1),
                                ev("worker-heartbeat", T0 + 2 * 86_400)], T0)
    assert [e["timestamp"] for e in out.events] == [T0 + FUTURE_SKEW - 1, T0]
    assert out.events[1][SENT_AT] == T0 + FUTURE_SKEW + 1 and SENT_AT not in out.events[0]
    assert out.clamped == 1 and out.invalid == ["bad_timestamp"]


# ------------------------------------------------------------------ which reconnects lose events
@pytest.mark.parametrize(("keeps", "away", "lost"), [(0.0, 1.0, True), (60.0, 5.0, False), (60.0, 90.0, True)])
def test_a_reconnect_loses_events_only_past_what_the_broker_keeps(state: ClusterState, clock: FakeClock,
                                                                   keeps: float, away: float,
                                                                   lost: bool) -> None:
    import threading

    from exporter.brokers.backoff import Backoff
    from exporter.brokers.supervisor import Supervisor
    from exporter.status import StreamStatus

    ingest = Ingest(state, clock)
    seen: list[bool] = []
    ingest.connected = seen.append  # type: ignore[method-assign]
    mono = FakeClock(0.0)
    stop = threading.Event()
    sup = Supervisor("test", "redis://h", ingest, StreamStatus(clock), Backoff(initial=0.001, cap=0.001),
                     clock=mono, keeps_events_for=keeps)
    sessions = iter(range(2))

    def session(stop_: threading.Event, on_up: object) -> None:
        on_up()  # type: ignore[operator]
        if next(sessions) == 0:
            raise ConnectionError("cut")
        stop.set()

    real_failed = sup._failed

    def failed(exc: Exception, delay: float) -> None:
        real_failed(exc, delay)
        mono.advance(away)  # the outage

    sup._failed = failed  # type: ignore[method-assign]
    sup.run(session, stop)
    assert seen == [False, lost]
