"""The RabbitMQ pollers against the real RabbitMQ, for what the management statistics alone got wrong:
a 2 s retry queue's 7 messages seen inside their TTL (read live over AMQP, not from the 5 s statistics);
a DLQ's publish count rising by 5 letters (and none for a DLQ fed by a real DLX, which RabbitMQ's publish
count leaves out); queue names from events that the broker
cannot take skipped and counted while the rest of the poll succeeds; and quiet polling of queues that do
not exist (no pika WARNING, no `not_found` per poll in RabbitMQ's own log), with a fake clock and for 60 s
of a real daemon; seed 004's consumed `dead_letter` work queue next to real DLQs, with a real worker.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from exporter.brokers.model import name_problem, rules_for
from exporter.brokers.polling import build_polling
from exporter.brokers.rabbitmq.poller import AmqpPoller, amqp_parameters
from exporter.config import Config, poll_settings
from tests._broker_helpers import MGMT_URL, amqp_url, by_queue, management_available, poll
from tests._support import ROOT, FakeClock, celery_worker, wait_for

pytestmark = pytest.mark.integration
T = 1_700_000_000.0


@pytest.fixture(scope="module", autouse=True)
def management() -> None:
    if not management_available():
        pytest.fail("RabbitMQ management API not reachable on 127.0.0.1:15672")


@pytest.fixture
def channel(vhost: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        yield conn.channel()
    finally:
        conn.close()


def rabbit_log() -> Path:
    """RabbitMQ's own log file, as `rabbitmq-diagnostics log_location` names it."""
    out = subprocess.run(["rabbitmq-diagnostics", "-q", "log_location"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    paths = [Path(line.strip()) for line in out.splitlines() if line.strip().endswith(".log")]
    assert paths and paths[0].exists(), out
    return paths[0]


def not_found_lines(log: Path, vhost: str) -> list[str]:
    return [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
            if "not_found" in line and f"in vhost '{vhost}'" in line]


# ------------------------------------------------------------------------------------------ live depths
def test_retry_2s_holding_7_messages_for_2s_is_reported_as_7_inside_the_window(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel, exporter_process) -> None:
    """seeds/000's ladder: task_queue -> retry_exchange -> retry_2s (TTL 2 s) -> task_exchange -> task_queue.
    The management statistics refresh every 5 s; a poll every 0.5 s must see the 7 while they wait."""
    for exchange in ("task_exchange", "retry_exchange"):
        channel.exchange_declare(exchange, "direct")
    channel.queue_declare("task_queue")
    channel.queue_bind("task_queue", "task_exchange", "task_queue")
    channel.queue_declare("retry_2s", arguments={"x-message-ttl": 2000, "x-dead-letter-exchange": "task_exchange"})
    channel.queue_bind("retry_2s", "retry_exchange", "task_queue")
    daemon = exporter_process(["--broker-url", amqp_url(vhost), "--rabbitmq-management-url", MGMT_URL,
                               "--default-queue", "task_queue", "--poll-interval", "0.5"])
    retry, task = 'celery_retry_queue_length{queue="retry_2s"}', 'celery_queue_length{queue="task_queue"}'
    wait_for(lambda: daemon.metrics().get(retry) == 0.0, 40, what="retry_2s classified and reported")

    for attempt in (1, 2):  # twice: a statistics refresh is unlikely to land inside both windows by luck
        published = time.monotonic()
        for i in range(7):
            channel.basic_publish("retry_exchange", "task_queue", f'{{"n": {i}}}'.encode())
        seen: list[tuple[float, float | None]] = []
        while time.monotonic() - published < 1.9:
            seen.append((time.monotonic() - published, daemon.metrics().get(retry)))
            time.sleep(0.1)
        assert any(v == 7.0 for _, v in seen), seen
        # After the TTL the 7 are back in task_queue, and retry_2s reads 0 within a poll or two.
        emptied = wait_for(lambda: daemon.metrics().get(retry), 10, ok=lambda v: v == 0.0, every=0.1)
        assert (emptied, time.monotonic() - published < 2.0 + 1.5) == (0.0, True)
        wait_for(lambda: daemon.metrics().get(task), 15, ok=lambda v, n=attempt: v == 7.0 * n)


def test_dlq_publish_count_rises_by_5_and_dlx_fed_dlqs_report_none(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """RabbitMQ counts in a queue's ``message_stats.publish`` what clients publish into it, not what it
    dead-letters into it. seeds/000's final ``dlq`` receives failed tasks published by the application:
    5 more dead letters -> published_total +5. seeds/004's ``dead_letters`` is fed by a real DLX (the
    ``default`` queue's): its publish count would stay flat, so none is reported and the letters-added
    counter follows its length instead."""
    channel.exchange_declare("dlx", "direct")
    channel.queue_declare("dead_letters")
    channel.queue_bind("dead_letters", "dlx", "dead_letter")
    channel.queue_declare("default", arguments={"x-dead-letter-exchange": "dlx",
                                                "x-dead-letter-routing-key": "dead_letter"})
    channel.queue_declare("dlq")
    polling = build_polling(poll_settings(Config(amqp_url(vhost), rabbitmq_management_url=MGMT_URL,
                                                 default_queue="default")), lambda: ())

    def dlqs() -> dict[str, tuple[float | None, float]]:
        polling.poll_once()
        (view,) = polling.views()
        assert view.success and view.result is not None, view
        return {n: (d.published_total, view.result.dead_letter[n])
                for n, d in view.result.dead_letter_depth.items()}

    def through_the_dlx(n: int) -> None:
        for i in range(n):
            channel.basic_publish("", "default", f"{i}".encode())
        for _ in range(n):
            method, _, _ = channel.basic_get("default")
            assert method is not None
            channel.basic_reject(method.delivery_tag, requeue=False)

    def published(n: int) -> None:
        for i in range(n):
            channel.basic_publish("", "dlq", f'{{"failed": {i}}}'.encode())

    try:
        # Never received a message: no publish count yet (both queues there, length 0).
        assert wait_for(dlqs, 40, every=0.5, ok=lambda d: d == {"dlq": (None, 0.0), "dead_letters": (None, 0.0)})
        published(2)
        through_the_dlx(2)
        wait_for(dlqs, 40, every=0.5, ok=lambda d: d == {"dlq": (2.0, 2.0), "dead_letters": (None, 2.0)})
        published(5)
        through_the_dlx(5)
        got = wait_for(dlqs, 40, every=0.5, ok=lambda d: d["dlq"][0] != 2.0 and d["dead_letters"][1] == 7.0)
        assert got == {"dlq": (7.0, 7.0), "dead_letters": (None, 7.0)}
    finally:
        polling.close()


def test_live_queues_option_reads_a_task_queue_live(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    channel.queue_declare("task_queue")
    config = Config(amqp_url(vhost), rabbitmq_management_url=MGMT_URL, default_queue="task_queue",
                    rabbitmq_live_queues=("task_*",))
    source = (("source", "rabbitmq_management"),)
    wait_for(lambda: by_queue(poll(config, FakeClock(T)), "celery_queue_length"), 40, every=0.5,
             ok=lambda d: d == {"task_queue": 0.0})
    for i in range(3):
        channel.basic_publish("", "task_queue", f"{i}".encode())
    got = poll(config, FakeClock(T))  # at once: the statistics cannot have caught up in these milliseconds
    assert (by_queue(got, "celery_queue_length"), got[("celery_exporter_poll_success", source)]) == (
        {"task_queue": 3.0}, 1.0)


def test_live_reads_failing_fall_back_to_the_statistics(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """The AMQP port unreachable from the exporter (say, a firewall): the poll still serves the DLQ."""
    channel.queue_declare("dlq")
    channel.basic_publish("", "dlq", b"{}")
    unreachable = amqp_url(vhost).replace(":5672/", ":1/")
    config = Config(unreachable, rabbitmq_management_url=MGMT_URL, poll_timeout=2.0)
    got = wait_for(lambda: poll(config, FakeClock(T)), 40, every=0.5,
                   ok=lambda g: by_queue(g, "celery_dead_letter_queue_length") == {"dlq": 1.0})
    assert got[("celery_exporter_poll_success", (("source", "rabbitmq_management"),))] == 1.0


# ------------------------------------------------------------------------------------------ hostile names
HOSTILE = ("q" * 512, "é" * 128, "bad\ud800", "a\x00b")


def test_names_from_events_the_broker_cannot_take_are_skipped_and_the_poll_succeeds(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    assert all(name_problem(n) for n in HOSTILE)
    channel.queue_declare("task_queue")
    channel.basic_publish("", "task_queue", b"{}")
    config = Config(amqp_url(vhost), default_queue="task_queue")
    polling = build_polling(poll_settings(config), lambda: ("q" * 255, *HOSTILE, "orders"))
    try:
        for _ in range(2):
            polling.poll_once()
        (view,) = polling.views()
        assert view.success and view.errors == 0
        assert view.result is not None and view.result.queues["task_queue"].ready == 1.0
        assert view.skipped == {"invalid_name": 2 * len(HOSTILE)}
    finally:
        polling.close()
    got = poll(config, FakeClock(T), seen=HOSTILE)
    assert got[("celery_exporter_poll_success", (("source", "rabbitmq_amqp"),))] == 1.0
    assert got[("celery_exporter_poll_skipped_total", (("reason", "invalid_name"), ("source", "rabbitmq_amqp")))] \
        == len(HOSTILE)
    assert by_queue(got, "celery_queue_length") == {"task_queue": 1.0}


# ------------------------------------------------------------------------------------------ quiet polling
def test_a_missing_queue_is_declared_at_start_and_then_only_every_ten_minutes(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel,
        caplog: pytest.LogCaptureFixture) -> None:
    channel.queue_declare("task_queue")
    log = rabbit_log()
    clock = FakeClock(1000.0)
    poller = AmqpPoller(amqp_parameters(amqp_url(vhost), 5.0, 60), lambda: ["task_queue", "gone_a", "gone_b"],
                        rules_for(poll_settings(Config("amqp://"))), clock)
    caplog.set_level(logging.DEBUG, logger="pika")
    # A deadline is a time on the poller's own clock (SourceRunner takes both from one clock). A deadline
    # from time.monotonic() (seconds since boot) next to this fake clock at 1000..2205 s made the test fail
    # on any machine booted less than about 37 minutes before: "the poll deadline passed".
    try:
        first = poller.poll(clock() + 5)
        assert dict(first.queues) == {"task_queue": first.queues["task_queue"]}
        assert wait_for(lambda: len(not_found_lines(log, vhost)), 10, ok=lambda n: n == 2) == 2
        for _ in range(119):  # ten minutes of 5 s polls, less one
            clock.now += 5.0
            assert "task_queue" in poller.poll(clock() + 5).queues
        time.sleep(1.0)  # RabbitMQ writes its log asynchronously
        assert len(not_found_lines(log, vhost)) == 2
        clock.now += 5.0  # 600 s since the first declare: checked again, once
        poller.poll(clock() + 5)
        assert wait_for(lambda: len(not_found_lines(log, vhost)), 10, ok=lambda n: n == 4) == 4
        channel.queue_declare("gone_a")  # created meanwhile: found at the next recheck
        clock.now += 600.0
        assert "gone_a" in poller.poll(clock() + 5).queues
    finally:
        poller.close()
    loud = [r for r in caplog.records if r.name.startswith("pika") and r.levelno >= logging.WARNING]
    assert loud == []


@pytest.mark.slow
def test_sixty_seconds_without_the_management_api_are_quiet(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel, exporter_process) -> None:
    """The issue's run: a real exporter without --rabbitmq-management-url for 60 s. The default queue
    `celery` and the default DLQ names `dlq` and `celery:dead_letter_queue` do not exist here."""
    channel.queue_declare("task_queue")
    channel.exchange_declare("celeryev", "topic", durable=True)  # as any worker of the cluster has made it
    log = rabbit_log()
    daemon = exporter_process(["--broker-url", amqp_url(vhost), "--queues", "task_queue",
                               "--poll-interval", "1", "--log-format", "json"])
    wait_for(lambda: daemon.metrics().get('celery_exporter_poll_success{source="rabbitmq_amqp"}') == 1.0, 20)
    at_start = wait_for(lambda: len(not_found_lines(log, vhost)), 10, ok=lambda n: n >= 3)
    time.sleep(1.0)  # RabbitMQ writes its log asynchronously
    assert len(not_found_lines(log, vhost)) == at_start == 3  # celery, celery:dead_letter_queue, dlq: once each
    time.sleep(60)
    assert daemon.metrics()['celery_queue_length{queue="task_queue"}'] == 0.0
    assert len(not_found_lines(log, vhost)) == at_start
    lines = daemon.log_lines()
    assert not [r for r in lines if str(r.get("logger", "")).startswith("pika")
                and str(r.get("level", "")).lower() in {"warning", "error", "critical"}]
    assert "Channel.Close" not in daemon.output()
    missing = [r for r in lines if "queue not found" in str(r.get("event", ""))]
    assert sorted(r["queue"] for r in missing) == ["celery", "celery:dead_letter_queue", "dlq"]
    assert {str(r.get("level")).lower() for r in missing} == {"info"}


# ------------------------------------------------------------------------------------------ seed 004
@pytest.mark.slow
def test_seed_004_dead_letter_work_queue_is_a_task_queue_with_a_real_worker(
        vhost: str, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """A real Celery worker of seed 004's app consumes its task_queues, as `celery worker` without -Q does:
    `dead_letter` (matched by the default `dead_letter*` DLQ pattern) is a task queue with its consumer,
    and stays one when the worker is gone (its Celery binding remains); `dead_letters`, consumed too but
    behind default's DLX, and seed 000's `dlq` are DLQs."""
    channel.queue_declare("dlq", durable=True)
    config = Config(amqp_url(vhost), rabbitmq_management_url=MGMT_URL, default_queue="default")

    def kinds() -> dict[str, dict[str, float]]:
        got = poll(config, FakeClock(T))
        return {m: by_queue(got, m) for m in ("celery_queue_length", "celery_queue_consumers",
                                              "celery_dead_letter_queue_length")}

    expected_dlqs = {"dead_letters": 0.0, "dlq": 0.0}
    with celery_worker("tests._seed004_app", "default,dead_letter,dead_letters", "seed004@%h",
                       {"SEED004_BROKER": amqp_url(vhost)}, ROOT, pool="solo", concurrency=1):
        got = wait_for(kinds, 60, every=1.0, ok=lambda k: k["celery_queue_consumers"].get("dead_letter") == 1.0
                       and k["celery_dead_letter_queue_length"] == expected_dlqs)
        assert set(got["celery_queue_length"]) == {"default", "dead_letter"}
    got = wait_for(kinds, 40, every=1.0, ok=lambda k: k["celery_queue_consumers"].get("dead_letter") == 0.0)
    assert set(got["celery_queue_length"]) == {"default", "dead_letter"}
    assert got["celery_dead_letter_queue_length"] == expected_dlqs
