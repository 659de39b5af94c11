"""Library logs go through our logger, at our level, one line per distinct problem per minute.

Pure: ``LibraryLogLimiter`` on a fake clock. At the wire: the real daemon with a wrong RabbitMQ password
(pika logged 6 ERROR lines per connection attempt, on the stream and on every poll) and with 1,000 queue
names that do not exist in its vhost (pika logged a line per missing queue per poll) logs a bounded
number of pika lines, while the attempts and polls go on.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import pytest
import structlog

from exporter.logs import LIBRARIES, LibraryLogLimiter, configure_logging
from tests._broker_helpers import amqp_url
from tests._support import Daemon, FakeClock, wait_for


def record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_line_per_problem_per_interval_with_the_count_held_back() -> None:
    clock = FakeClock(0.0)
    limiter = LibraryLogLimiter(interval=60.0, monotonic=clock)
    passed = [r for i in range(1_000) if limiter.filter(r := record("pika.channel", "no queue %r", f"q{i}"))]
    assert len(passed) == 1 and passed[0].suppressed_since_last == 0  # type: ignore[attr-defined]
    assert limiter.filter(record("pika.channel", "no queue %r", "q1", level=logging.ERROR))  # another level
    assert limiter.filter(record("pika.connection", "auth failed"))  # another problem
    assert all(limiter.filter(record("exporter.brokers", "ours")) for _ in range(3))  # ours: not limited
    clock.advance(59.0)
    assert not limiter.filter(record("pika.channel", "no queue %r", "q1"))
    clock.advance(1.0)
    again = record("pika.channel", "no queue %r", "q1")
    assert limiter.filter(again) and again.suppressed_since_last == 1_000  # type: ignore[attr-defined]


def test_a_bare_placeholder_template_is_told_apart_by_its_text() -> None:
    limiter = LibraryLogLimiter(monotonic=FakeClock(0.0))
    assert limiter.filter(record("kombu", "%s", "Connection refused to port 5672"))
    assert not limiter.filter(record("kombu", "%s", "Connection refused to port 5673"))  # numbers blanked
    assert limiter.filter(record("kombu", "%s", "Authentication failed"))


def test_remembered_problems_are_bounded() -> None:
    clock = FakeClock(0.0)
    limiter = LibraryLogLimiter(monotonic=clock, max_keys=10)
    for i in range(100):
        clock.advance(0.01)
        assert limiter.filter(record("lib", f"problem {chr(65 + i % 26)}{i // 26} here"))
    assert len(limiter._last) <= 10


def test_library_records_are_rendered_by_structlog_at_our_level() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in LIBRARIES},
             structlog.get_config())
    try:
        configure_logging("error", "json", stream=out)
        logging.getLogger("pika.connection").warning("below our level")
        logging.getLogger("redis.sentinel").error("pw=%s", "redis://:hunter2@h/0")
        assert logging.getLogger("celery").level == logging.ERROR
        configure_logging("info", "json", stream=out)
        assert logging.getLogger("kombu").level == logging.WARNING  # their info is per-connection chatter
    finally:  # leave logging as the other tests of this session had it
        root.handlers[:], level, libraries, config = saved
        root.setLevel(level)
        for name, lib_level in libraries.items():
            logging.getLogger(name).setLevel(lib_level)
        structlog.configure(**config)
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["logger"] == "redis.sentinel" and line["level"] == "error"
    assert "hunter2" not in line["event"] and line["suppressed_since_last"] == 0


def pika_lines(daemon: Daemon) -> list[dict[str, object]]:
    return [x for x in daemon.log_lines() if str(x.get("logger", "")).startswith("pika")]


@pytest.mark.integration
def test_wrong_rabbitmq_password_logs_a_bounded_number_of_pika_lines(
        exporter_process: Callable[..., Daemon]) -> None:
    daemon = exporter_process(["--broker-url", "amqp://guest:wrong-pw@127.0.0.1:5672//", "--log-format", "json",
                               "--poll-interval", "1", "--poll-timeout", "1"])
    # Both the stream (backoff capped at 5 s) and the poller (every second) retry the login.
    wait_for(lambda: daemon.output().count("event stream cannot connect") >= 4, 40, what="four attempts")
    attempts = daemon.output().count("event stream cannot connect")
    assert daemon.terminate() == 0
    lines = pika_lines(daemon)
    assert lines, "pika's lines are routed through our logger"
    assert len(lines) <= 8, [x["event"] for x in lines]  # the templates of one failure, once each
    assert attempts >= 4
    assert not [x for x in lines if int(x.get("suppressed_since_last", 0)) < 0]


@pytest.mark.integration
def test_a_thousand_unknown_queues_do_not_flood_the_log(vhost: str,
                                                        exporter_process: Callable[..., Daemon]) -> None:
    names = ",".join(f"missing-{i:04d}" for i in range(1_000))
    daemon = exporter_process(["--broker-url", amqp_url(vhost), "--log-format", "json", "--queues", names,
                               "--max-queues", "2000", "--poll-interval", "1", "--poll-timeout", "5"])

    durations: set[float] = set()  # one value per completed poll (the gauge of the last one)

    def completed_polls() -> int:
        value = daemon.metrics().get('celery_exporter_poll_duration_seconds{source="rabbitmq_amqp"}')
        if value:
            durations.add(value)
        return len(durations)

    wait_for(completed_polls, 120, ok=lambda n: n >= 3, every=0.5, what="three polls over the 1,000 names")
    assert daemon.terminate() == 0
    lines = pika_lines(daemon)
    assert len(lines) <= 20, (len(lines), [x["event"] for x in lines[:5]])
