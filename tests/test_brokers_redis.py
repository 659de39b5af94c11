"""The Redis poller against the real Redis: Celery's priority sub-queues, the seeds' DLQ list and sorted
set (oldest age under a fake clock), global_keyprefix, kombu's unacked hash, and a broker that hangs or
goes away while the event metrics keep being served."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import pytest
import redis
from celery import Celery
from kombu import Connection

from exporter.brokers.polling import build_polling
from exporter.collectors.tasks import TaskCollector
from exporter.config import Config, poll_settings, state_settings
from exporter.state import ClusterState
from tests._broker_helpers import (
    REDIS_URL,
    RedisSentinel,
    RedisServer,
    by_queue,
    poll,
    polled_registry,
    samples,
    unique,
)
from tests._events import sent
from tests._support import FakeClock, free_port, wait_for

pytestmark = pytest.mark.integration
T = 1_700_000_000.0
SEP = "\x06\x16"


class RedisDb(redis.Redis):
    """The test database, deleting the keys a test registered in ``created`` (globs) afterwards."""

    created: list[str]


@pytest.fixture
def rdb() -> Iterator[RedisDb]:
    client = RedisDb(connection_pool=redis.ConnectionPool.from_url(REDIS_URL))
    client.ping()
    client.created = []
    yield client
    for pattern in client.created:
        for key in list(client.scan_iter(match=pattern, count=1000)):
            client.delete(key)
    client.close()


def producer_app(queue: str, options: Mapping[str, object], broker: str = REDIS_URL) -> Celery:
    app = Celery(unique("poll-test"), broker=broker, set_as_current=False)
    app.conf.broker_transport_options = options
    app.conf.task_default_queue = queue

    @app.task(name=f"{app.main}.add")
    def add(x: int, y: int) -> int:  # never runs: no worker is started, the messages stay queued
        return x + y

    return app


def test_celery_priorities_spread_over_sub_queues_are_all_counted(rdb: RedisDb) -> None:
    queue = unique("prio")
    rdb.created += [f"{queue}*", f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    # The producer uses ten priority steps; the exporter is told nothing, so it knows kombu's 0,3,6,9.
    app = producer_app(queue, {"priority_steps": list(range(10)), "queue_order_strategy": "priority"})
    with app.connection_for_write() as conn:
        for priority in (0, 1, 2, 5, 5, 9, 9, 9, 7):
            app.tasks[f"{app.main}.add"].apply_async((1, 2), priority=priority, connection=conn)
    keys = sorted(k.decode() for k in rdb.scan_iter(match=f"{queue}*"))
    assert keys == [queue] + [f"{queue}{SEP}{p}" for p in (1, 2, 5, 7, 9)]
    assert rdb.llen(queue) == 1  # what a plain LLEN would report

    got = poll(Config(REDIS_URL), FakeClock(T))
    assert by_queue(got, "celery_queue_length")[queue] == 9.0
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert got[("celery_exporter_poll_errors_total", (("source", "redis"),))] == 0.0
    assert queue not in by_queue(got, "celery_queue_messages_unacked")  # Redis: per-queue unacked unknown


def test_seed_dead_letter_list_and_sorted_set_with_oldest_age(rdb: RedisDb) -> None:
    task = f"tests.{unique('dlq')}.pay"
    list_key, zset_key = f"dlq:{task}", "celery:dead_letter_queue"
    rdb.created += [list_key, zset_key]
    rdb.delete(zset_key)
    # shared/seeds/002 move_to_dlq: LPUSH a JSON entry with an ISO-8601 UTC "timestamp".
    for age in (300, 200, 100):
        entry = {"task_name": task, "task_id": unique("id"), "args": {}, "error": "boom", "retries": 3,
                 "timestamp": datetime.fromtimestamp(T - age, UTC).isoformat()}
        rdb.lpush(list_key, json.dumps(entry))
    # shared/seeds/001 move_to_dlq: ZADD the entry scored by its failure time.
    for age in (500, 50):
        entry = {"task_name": task, "task_id": unique("id"), "failed_at": "x"}
        rdb.zadd(zset_key, {json.dumps(entry): T - age})

    clock = FakeClock(T)
    config = Config(REDIS_URL)  # the defaults find both conventions
    polling = build_polling(poll_settings(config), lambda: ())
    registry = polled_registry(polling, clock)
    try:
        polling.poll_once()
        got = samples(registry)
        assert by_queue(got, "celery_dead_letter_queue_length")[list_key] == 3.0
        assert by_queue(got, "celery_dead_letter_queue_length")[zset_key] == 2.0
        ages = by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds")
        assert (ages[list_key], ages[zset_key]) == (300.0, 500.0)
        assert list_key not in by_queue(got, "celery_queue_length")

        clock.now += 60  # the age grows at scrape time, between polls
        ages = by_queue(samples(registry), "celery_dead_letter_queue_oldest_message_age_seconds")
        assert (ages[list_key], ages[zset_key]) == (360.0, 560.0)

        # seeds/002 process_dlq drains with RPOP: the oldest leaves first; Redis deletes the empty list.
        rdb.rpop(list_key)
        polling.poll_once()
        got = samples(registry)
        assert by_queue(got, "celery_dead_letter_queue_length")[list_key] == 2.0
        assert by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds")[list_key] == 260.0
        rdb.rpop(list_key, 2)
        assert not rdb.exists(list_key)
        polling.poll_once()
        got = samples(registry)
        assert by_queue(got, "celery_dead_letter_queue_length")[list_key] == 0.0
        assert list_key not in by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds")
    finally:
        polling.close()


def test_global_keyprefix_the_hpa_queue_and_the_unacked_hash(rdb: RedisDb) -> None:
    prefix = unique("app") + ":"
    rdb.created.append(f"{prefix}*")
    options = {"global_keyprefix": prefix}
    app = producer_app("default", options)
    with app.connection_for_write() as conn:
        for priority in (0, 0, 9):
            app.tasks[f"{app.main}.add"].apply_async((1, 2), priority=priority, connection=conn)
    # A kombu consumer takes one message and does not ack it: kombu keeps it in the "unacked" hash.
    with Connection(REDIS_URL, transport_options=options) as conn:
        jobs = conn.SimpleQueue("jobs")
        for i in range(3):
            jobs.put({"n": i})
        held = jobs.get(timeout=5)
        assert held.payload == {"n": 0}
        assert rdb.hlen(f"{prefix}unacked") == 1
        # Without the prefix the exporter sees none of it; with it, exactly these queues.
        got = poll(Config(REDIS_URL, broker_transport_options=options, default_queue="default"),
                   FakeClock(T))
        jobs.close()
    lengths = by_queue(got, "celery_queue_length")
    assert lengths == {"default": 3.0, "jobs": 2.0}
    assert got[("celery_broker_unacked_messages", ())] == 1.0
    assert "unacked" not in lengths and "unacked_index" not in lengths


def test_a_broker_that_hangs_or_goes_away_fails_its_poll_alone(redis_server: RedisServer) -> None:
    clock = FakeClock(T)
    state = ClusterState(state_settings(), clock)
    with state.lock:
        state.apply(sent("u1", "tests.polling.add", T - 1, queue="emails"))
    port = redis_server.port
    client = redis.Redis(port=port)
    client.sadd("_kombu.binding.emails", f"emails{SEP}{SEP}emails")
    client.lpush("emails", "m1", "m2")
    config = Config(f"redis://127.0.0.1:{port}/0", poll_timeout=0.5, poll_interval=1.0)
    polling = build_polling(poll_settings(config), state.queues_seen)
    registry = polled_registry(polling, clock, TaskCollector(state.take_snapshot))
    src = (("source", "redis"),)
    try:
        polling.poll_once()
        got = samples(registry)
        assert by_queue(got, "celery_queue_length") == {"celery": 0.0, "emails": 2.0}

        # The server stops answering in the middle of the next poll: the poll times out.
        sleeper = threading.Thread(target=_debug_sleep, args=(port, 2.0))
        sleeper.start()
        time.sleep(0.2)
        polling.poll_once()
        got = samples(registry)
        assert got[("celery_exporter_poll_success", src)] == 0.0
        assert got[("celery_exporter_poll_errors_total", src)] == 1.0
        assert by_queue(got, "celery_queue_length")["emails"] == 2.0  # last good value, not stale yet
        assert _task_sent(got) == 1.0  # the event metrics are untouched
        sleeper.join(timeout=10)
        # The overrunning poll ends by its own socket timeout (0.5 s); only then may the next start.
        wait_for(lambda: polling.runners[0]._inflight, 10, ok=lambda t: t is None or not t.is_alive())

        polling.poll_once()  # recovered
        assert samples(registry)[("celery_exporter_poll_success", src)] == 1.0

        redis_server.kill()
        polling.poll_once()
        got = samples(registry)
        assert got[("celery_exporter_poll_success", src)] == 0.0
        assert got[("celery_exporter_poll_errors_total", src)] == 2.0
        assert _task_sent(got) == 1.0
    finally:
        polling.close()


def _debug_sleep(port: int, seconds: float) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "SLEEP", str(seconds)], timeout=seconds + 10,
                   check=False, capture_output=True)


def _task_sent(got: dict) -> float:
    return sum(v for (n, labels), v in got.items()
               if n == "celery_task_sent_total" and dict(labels).get("task_name") == "tests.polling.add")


def test_run_polls_in_the_background_until_stopped(redis_server: RedisServer) -> None:
    redis_server.client().lpush("celery", "m1")
    polling = build_polling(poll_settings(Config(redis_server.url(), poll_interval=0.05)), lambda: ())
    registry = polled_registry(polling, time.time)
    stop = threading.Event()
    runner = threading.Thread(target=polling.run, args=(stop,))
    runner.start()
    try:
        got = wait_for(lambda: samples(registry), 10,
                       ok=lambda s: by_queue(s, "celery_queue_length") == {"celery": 1.0})
        assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert polling.runners[0].poller.inner._client is None  # type: ignore[attr-defined]  # closed


def test_sentinel_broker_url_with_master_name(redis_server: RedisServer) -> None:
    redis_server.client().lpush("celery", "m1", "m2")
    with RedisSentinel(redis_server.port, "mymaster") as sentinel_server:
        sentinel_port = sentinel_server.port
        sentinel = redis.Redis(port=sentinel_port, socket_timeout=1)
        wait_for(lambda: _master_known(sentinel), 10, every=0.1)
        config = Config(f"sentinel://127.0.0.1:{sentinel_port};sentinel://127.0.0.1:{free_port()}",
                        broker_transport_options={"master_name": "mymaster"})
        got = poll(config, FakeClock(T))
        assert by_queue(got, "celery_queue_length") == {"celery": 2.0}


def _master_known(client: redis.Redis) -> bool:
    try:
        return bool(client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"))
    except redis.RedisError:
        return False
