"""Dead letters wherever they are kept, against real Redis (a private redis-server per test) and RabbitMQ:
seed 001's sorted set in db 3 beside a Redis broker on db 0 and beside a RabbitMQ broker, a producer
whose transport options the exporter was not told, hostile keys and entries, and names from events."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from structlog.testing import capture_logs

from exporter.brokers.polling import build_polling
from exporter.brokers.registry import dead_letter_pollers_for
from exporter.brokers.scheduler import Polling
from exporter.brokers.settings import BrokerSettingsError
from exporter.config import Config, poll_settings
from tests._broker_helpers import (
    RedisServer,
    amqp_url,
    by_queue,
    polled_registry,
    samples,
    unique,
)
from tests._support import Daemon, FakeClock, wait_for

pytestmark = pytest.mark.integration
T = 1_700_000_000.0
ZSET = "celery:dead_letter_queue"


def seed_001_entries(client: redis.Redis, ages: tuple[float, ...]) -> None:
    """seeds/001 move_to_dlq: ZADD a JSON entry scored by its failure time (here fixed, T - age)."""
    for age in ages:
        entry = {"task_name": "app.pay", "task_id": unique("id"), "args": [], "kwargs": {},
                 "exception": "boom", "traceback": "", "failed_at": "2023-11-14T22:13:20"}
        client.zadd(ZSET, {json.dumps(entry): T - age})


@pytest.fixture
def polled() -> Iterator[list[Polling]]:
    made: list[Polling] = []
    yield made
    for polling in made:
        polling.close()


def start(polled: list[Polling], config: Config, seen: tuple[str, ...] = ()) -> Polling:
    polling = build_polling(poll_settings(config), lambda: seen)
    polled.append(polling)
    return polling


def view(polling: Polling, source: str) -> object:
    return next(v for v in polling.views() if v.source == source)


def test_seed_001_zset_in_db_3_beside_a_redis_broker_on_db_0(redis_server: RedisServer,
                                                            polled: list[Polling]) -> None:
    seed_001_entries(redis_server.client(3), (500.0, 120.0, 30.0))
    redis_server.client(0).lpush("celery", b"{}")  # the broker's own task queue on db 0
    dlq_db = redis_server.url(3)
    source = f"redis_dlq:127.0.0.1:{redis_server.port}/3"
    clock = FakeClock(T)
    polling = start(polled, Config(redis_server.url(0), dead_letter_redis_urls=(dlq_db,)))
    registry = polled_registry(polling, clock)
    polling.poll_once()
    got = samples(registry)
    assert by_queue(got, "celery_dead_letter_queue_length") == {ZSET: 3.0}
    assert by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds") == {ZSET: 500.0}
    assert by_queue(got, "celery_queue_length") == {"celery": 1.0}  # from db 0 only
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert got[("celery_exporter_poll_success", (("source", source),))] == 1.0
    dlq_view = view(polling, source)
    assert dlq_view.result.queues == {} and dlq_view.result.broker_unacked is None  # type: ignore[attr-defined]
    clock.now += 60
    ages = by_queue(samples(registry), "celery_dead_letter_queue_oldest_message_age_seconds")
    assert ages == {ZSET: 560.0}


def test_seed_001_zset_beside_a_rabbitmq_broker(redis_server: RedisServer, vhost: str,
                                                polled: list[Polling]) -> None:
    seed_001_entries(redis_server.client(3), (900.0, 10.0))
    source = f"redis_dlq:127.0.0.1:{redis_server.port}/3"
    polling = start(polled, Config(amqp_url(vhost), dead_letter_redis_urls=(redis_server.url(3),)))
    polling.poll_once()
    got = samples(polled_registry(polling, FakeClock(T)))
    assert by_queue(got, "celery_dead_letter_queue_length")[ZSET] == 2.0
    assert by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds")[ZSET] == 900.0
    assert got[("celery_exporter_poll_success", (("source", source),))] == 1.0
    assert {v.source for v in polling.views()} == {"rabbitmq_amqp", source}


def test_the_dlq_database_reports_no_task_queue_and_its_password_never_shows(
        polled: list[Polling]) -> None:
    with RedisServer(extra=("--requirepass", "s3cret-pw")) as server:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/2"
        client = redis.Redis(port=server.port, db=2, password="s3cret-pw")
        client.lpush("dlq:app.pay", json.dumps({"timestamp": T - 42}))
        client.lpush("celery", b"{}")  # a task-queue-looking list in the DLQ database: not reported
        client.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
        polling = start(polled, Config(amqp_url("/"), dead_letter_redis_urls=(url,)))
        source = f"redis_dlq:127.0.0.1:{server.port}/2"
        assert source in {v.source for v in polling.views()}
        assert "s3cret-pw" not in source
        runner = next(r for r in polling.runners if r.poller.source == source)
        runner.tick()
        result = view(polling, source).result  # type: ignore[attr-defined]
        assert result.dead_letter == {"dlq:app.pay": 1.0} and result.queues == {}
        server.kill()
        with capture_logs() as logs:
            runner.tick()
        assert logs and all("s3cret-pw" not in repr(entry) for entry in logs)


def test_a_producer_with_another_sep_and_ten_steps_is_read_right_with_one_warning(
        redis_server: RedisServer, polled: list[Polling]) -> None:
    # Celery's docs for Redis priorities: sep ":" and ten steps; the exporter is left at its defaults.
    app = Celery(unique("sep"), broker=redis_server.url(0), set_as_current=False)
    app.conf.broker_transport_options = {"sep": ":", "priority_steps": list(range(10)),
                                         "queue_order_strategy": "priority"}
    app.conf.task_default_queue = "default"

    @app.task(name="app.add")
    def add(x: int, y: int) -> int:  # never runs: the messages stay queued
        return x + y

    with app.connection_for_write() as conn:
        for i in range(24):
            add.apply_async((i, i), priority=i % 10, connection=conn)
    keys = {k.decode() for k in redis_server.client(0).scan_iter(match="default*")}
    assert keys == {"default"} | {f"default:{p}" for p in range(1, 10)}

    polling = start(polled, Config(redis_server.url(0)))
    registry = polled_registry(polling, FakeClock(T))
    with capture_logs() as logs:
        polling.poll_once()
        polling.poll_once()
    got = samples(registry)
    lengths = by_queue(got, "celery_queue_length")
    assert lengths["default"] == 24.0  # every message, all ten sub-queues
    assert not any("::" in name or name.startswith("default:") for name in lengths)  # nothing invented
    assert got[("celery_exporter_poll_option_mismatch", (("option", "sep"), ("source", "redis")))] == 1.0
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("option") == "sep"]
    assert len(warnings) == 1 and "'{\"sep\": \":\"}'" in warnings[0]["set"]


def test_hostile_keys_and_entries_are_skipped_and_counted_and_the_rest_is_served(
        redis_server: RedisServer, polled: list[Polling]) -> None:
    db = redis_server.client(0)
    db.lpush(b"dlq:bad\xff\xfe", b"{}")  # a key name that is not UTF-8
    db.lpush("dlq:deep", b"[" * 100_000 + b"]" * 100_000)  # one entry 100,000 levels deep
    db.lpush("dlq:deep", json.dumps({"timestamp": T - 5}))
    db.hset("dlq:hash", "a", "b")  # a DLQ name held by a hash
    db.lpush("dlq:good", json.dumps({"timestamp": T - 70}))
    db.lpush("celery", b"{}", b"{}")
    polling = start(polled, Config(redis_server.url(0)))
    polling.poll_once()
    polling.poll_once()
    got = samples(polled_registry(polling, FakeClock(T)))
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert by_queue(got, "celery_queue_length") == {"celery": 2.0}
    assert by_queue(got, "celery_dead_letter_queue_length") == {"dlq:deep": 2.0, "dlq:good": 1.0}
    assert by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds")["dlq:good"] == 70.0
    skipped = {dict(labels)["reason"]: value for (name, labels), value in got.items()
               if name == "celery_exporter_poll_skipped_total"}
    assert skipped == {"invalid_name": 2.0, "wrong_type": 2.0, "unreadable_entry": 2.0}  # two polls


def test_queue_names_from_events_are_validated_before_they_reach_the_broker(
        redis_server: RedisServer, polled: list[Polling]) -> None:
    redis_server.client(0).lpush("emails", b"{}")
    seen = ("emails", "q" * 512, "nul\x00name", "bad\udcff", "ok")
    polling = start(polled, Config(redis_server.url(0)), seen=seen)
    monitor = redis_server.client(0)
    polling.poll_once()
    got = samples(polled_registry(polling, FakeClock(T)))
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert set(by_queue(got, "celery_queue_length")) == {"celery", "emails", "ok"}
    assert monitor.llen("q" * 512) == 0


def test_poll_errors_name_the_dlq_source_not_the_url(polled: list[Polling]) -> None:
    with RedisServer() as server:
        url = f"redis://user:hunter2-pw@127.0.0.1:{server.port}/5"
        polling = start(polled, Config(amqp_url("/"), dead_letter_redis_urls=(url,)))
        source = f"redis_dlq:127.0.0.1:{server.port}/5"
    runner = next(r for r in polling.runners if r.poller.source == source)
    with capture_logs() as logs:
        assert runner.tick() is False
    assert [e["source"] for e in logs if e["event"] == "broker poll failed"] == [source]
    assert "hunter2" not in repr(logs)



def test_the_registry_hands_each_dlq_url_to_the_package_of_its_scheme() -> None:
    urls = ("redis://127.0.0.1:1/3", "redis://u:pw@127.0.0.1:1/3", "rediss://h:2/4")
    pollers = dead_letter_pollers_for(poll_settings(Config("amqp://", dead_letter_redis_urls=urls)))
    assert [p.source for p in pollers] == ["redis_dlq:127.0.0.1:1/3", "redis_dlq:127.0.0.1:1/3#2", "redis_dlq:h:2/4"]
    # The configuration admits only Redis URLs there; settings built past it are refused, not polled.
    with pytest.raises(BrokerSettingsError, match="dead_letter_redis_urls"):
        dead_letter_pollers_for(poll_settings(Config("amqp://", dead_letter_redis_urls=("amqp://h//",))))


def test_the_daemon_with_seed_001s_exact_flags(redis_server: RedisServer,
                                                exporter_process: Callable[..., Daemon]) -> None:
    seed_001_entries(redis_server.client(3), (600.0, 5.0))
    dlq = redis_server.client(3)
    daemon = exporter_process(["--broker-url", redis_server.url(0), "--dead-letter-redis-url",
                               f"redis://:pw-not-needed@127.0.0.1:{redis_server.port}/3",
                               "--poll-interval", "0.5"])
    source = f'source="redis_dlq:127.0.0.1:{redis_server.port}/3"'
    key = f'celery_dead_letter_queue_length{{queue="{ZSET}"}}'
    wait_for(lambda: daemon.metrics().get(key) == 2.0, 20, what="the db-3 DLQ")
    dlq.zadd(ZSET, {f"burst-{i}": T for i in range(40)})
    added = f'celery_dead_letter_messages_added_total{{queue="{ZSET}"}}'
    wait_for(lambda: daemon.metrics().get(added) == 40.0, 20, what="40 letters added")
    got = daemon.metrics()
    assert got[f"celery_exporter_poll_success{{{source}}}"] == 1.0
    assert got['celery_exporter_poll_success{source="redis"}'] == 1.0
    assert got[f'celery_dead_letter_queue_oldest_message_age_seconds{{queue="{ZSET}"}}'] >= 600.0
    # Task queues come from the broker's db 0 only (its empty default queue), none from db 3.
    assert {n for n in got if n.startswith("celery_queue_length")} == {'celery_queue_length{queue="celery"}'}
    assert "pw-not-needed" not in daemon.output()


def test_a_hung_dlq_database_fails_alone_under_its_own_deadline(redis_server: RedisServer,
                                                                polled: list[Polling]) -> None:
    redis_server.client(0).lpush("default", b"{}", b"{}")
    with RedisServer() as dlq_server:
        seed_001_entries(dlq_server.client(3), (60.0,))
        config = Config(redis_server.url(0), dead_letter_redis_urls=(dlq_server.url(3),), poll_timeout=1.0,
                        queues=("default",))
        polling = start(polled, config)
        source = f"redis_dlq:127.0.0.1:{dlq_server.port}/3"
        polling.poll_once()
        dlq_server.pause()  # SIGSTOP: connections hang, as a wedged server's do
        try:
            polling.poll_once()
            got = samples(polled_registry(polling, FakeClock(T)))
        finally:
            dlq_server.resume()
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert got[("celery_exporter_poll_success", (("source", source),))] == 0.0
    assert got[("celery_exporter_poll_errors_total", (("source", "redis"),))] == 0.0
    assert by_queue(got, "celery_queue_length")["default"] == 2.0
    assert got[("celery_exporter_poll_duration_seconds", (("source", source),))] < 2.0


def test_odd_keys_that_are_no_queue_are_not_counted_as_skipped(redis_server: RedisServer,
                                                              polled: list[Polling]) -> None:
    db = redis_server.client(3)
    db.set(b"cache:\xff\xfe", b"x")  # the application's own binary key: not a DLQ candidate
    db.lpush("dlq:app.pay", b"{}")
    polling = start(polled, Config(redis_server.url(0), dead_letter_redis_urls=(redis_server.url(3),)))
    polling.poll_once()
    got = samples(polled_registry(polling, FakeClock(T)))
    assert by_queue(got, "celery_dead_letter_queue_length") == {"dlq:app.pay": 1.0}
    assert not [k for k in got if k[0] == "celery_exporter_poll_skipped_total"]


# ------------------------------------------------------------------------------------------ seed 004
@pytest.mark.slow
def test_seed_004_dead_letter_work_queue_is_a_task_queue_on_redis_too(redis_server: RedisServer) -> None:
    """Seed 004's app on Redis, with a real worker consuming its queues: `dead_letter` matches the default
    `dead_letter*` DLQ glob but has a kombu binding (in `_kombu.binding.default`: Celery binds a queue
    declared without an exchange to its default exchange, `default` here), so it is a task queue,
    as on RabbitMQ, and stays one with its tasks waiting once the worker is gone; an idle `dlq:x` list that
    nothing binds stays a DLQ."""
    from celery import Celery

    from tests._broker_helpers import poll
    from tests._support import ROOT, celery_worker

    url = redis_server.url(0)
    client = redis_server.client(0)
    client.lpush("dlq:x", json.dumps({"task": "app.pay", "timestamp": T - 30}))
    config = Config(url, default_queue="default")

    def kinds() -> dict[str, dict[str, float]]:
        got = poll(config, FakeClock(T))
        return {m: by_queue(got, m) for m in ("celery_queue_length", "celery_dead_letter_queue_length")}

    with celery_worker("tests._seed004_app", "default,dead_letter,dead_letters", "seed004@%h",
                       {"SEED004_BROKER": url}, ROOT, pool="solo", concurrency=1):
        member = b"default\x06\x16\x06\x16dead_letter"  # routing key, pattern, queue
        wait_for(lambda: member in client.smembers("_kombu.binding.default"), 60, what="the worker's bindings")
        got = kinds()
    assert "dead_letter" in got["celery_queue_length"], got
    assert got["celery_dead_letter_queue_length"] == {"dlq:x": 1.0}, got

    producer = Celery("seed004-producer", broker=url, set_as_current=False)
    for i in range(3):
        producer.send_task("seed004.handle_dead_letter", args=("app.pay", f"boom {i}"), queue="dead_letter")
    got = kinds()
    assert got["celery_queue_length"]["dead_letter"] == 3.0, got
    assert got["celery_dead_letter_queue_length"] == {"dlq:x": 1.0}, got
