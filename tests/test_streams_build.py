"""Choosing a reader by URL scheme, and the reconnect Supervisor every reader runs under (driven here by
scripted sessions, so its retry, backoff-reset and redaction logic is checked without a broker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from exporter.brokers.backoff import Backoff
from exporter.brokers.kombu.stream import KombuEventStream
from exporter.brokers.rabbitmq.stream import AmqpEventStream
from exporter.brokers.redis.stream import RedisEventStream
from exporter.brokers.registry import build_stream
from exporter.brokers.settings import BrokerSettingsError
from exporter.brokers.supervisor import STABLE_AFTER, Supervisor
from exporter.config import Config, state_settings, stream_settings
from exporter.events.ingest import Ingest
from exporter.secrets import describe_error as describe
from exporter.secrets import url_secrets
from exporter.state import ClusterState
from exporter.status import StreamStatus


def build(url: str, **kw: object) -> object:
    state = ClusterState(state_settings())
    return build_stream(stream_settings(Config(broker_url=url, **kw)),  # type: ignore[arg-type]
                        Ingest(state), StreamStatus())


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", RedisEventStream),
        ("rediss://:pw@cache.example:6380/2", RedisEventStream),
        ("REDIS://h/1", RedisEventStream),
        ("amqp://guest:guest@127.0.0.1:5672//", AmqpEventStream),
        ("amqps://u:p@rabbit/prod", AmqpEventStream),
        ("pyamqp://rabbit//;pyamqp://rabbit2//", AmqpEventStream),
        ("memory://", KombuEventStream),
        # One registry for streams and pollers: a Unix-socket Redis is streamed by the Redis package.
        ("redis+socket:///tmp/redis.sock", RedisEventStream),
        ("socket:///tmp/redis.sock", RedisEventStream),
        ("librabbitmq://rabbit//", AmqpEventStream),
        ("filesystem://", KombuEventStream),
    ],
)
def test_build_stream_chooses_by_scheme_without_connecting(url: str, kind: type) -> None:
    assert isinstance(build(url), kind)


def test_build_stream_passes_the_config_slices() -> None:
    s = build("redis://h:6379/4", broker_transport_options={"global_keyprefix": "k:"})
    assert isinstance(s, RedisEventStream) and s.pattern == "k:/4.celeryev/*"
    a = build("amqp://h//", event_queue_prefix="evq", event_queue_ttl=0.0, event_queue_expires=30.0,
              event_prefetch=7, event_queue_max_length=500, event_queue_max_bytes=10_000)
    assert isinstance(a, AmqpEventStream)
    assert a.queue.startswith("evq.") and a.prefetch == 7
    assert a.arguments == {"x-queue-type": "classic", "x-expires": 30_000, "x-max-length": 500,
                           "x-max-length-bytes": 10_000, "x-overflow": "drop-head"}
    other = build("amqp://h//")
    assert isinstance(other, AmqpEventStream) and other.queue != a.queue  # one per process/stream


def test_sentinel_without_master_name_is_a_config_error() -> None:
    with pytest.raises(BrokerSettingsError, match="master_name"):
        build("sentinel://127.0.0.1:26379")
    s = build("sentinel://:pw@10.0.0.1:26379/3;sentinel://10.0.0.2:26379",
              broker_transport_options={"master_name": "mymaster"})
    assert isinstance(s, RedisEventStream) and s.pattern == "/3.celeryev/*"


def test_url_secrets_and_describe_scrub_passwords() -> None:
    assert set(url_secrets("redis://:p%40ss@h/0;redis://u:two@h2/0")) == {"p%40ss", "p@ss", "two"}
    err = ConnectionError("AUTH failed for redis://:p@ss@h/0")
    assert describe(err, url_secrets("redis://:p%40ss@h/0")) == "ConnectionError: AUTH failed for redis://:***@h/0"
    assert describe(OSError(), ()) == "OSError: OSError"


class Script:
    """Sessions that fail or connect in a given order; the last one stops the supervisor."""

    def __init__(self, steps: list[str], stop: threading.Event, clock: list[float]) -> None:
        self.steps = steps
        self.stop = stop
        self.clock = clock
        self.calls = 0

    def __call__(self, stop: threading.Event, on_up: Callable[[], None]) -> None:
        step = self.steps[self.calls]
        self.calls += 1
        if step == "refused":
            raise ConnectionRefusedError("connect to redis://:hunter2@h:1/0 refused")
        on_up()
        if step == "up-then-drop":
            raise ConnectionResetError("reset by peer")
        if step == "up-long-then-drop":
            self.clock[0] += STABLE_AFTER + 1
            raise ConnectionResetError("reset by peer")
        if step == "up-then-end":
            return
        self.stop.set()


def run_script(steps: list[str], backoff: Backoff) -> tuple[StreamStatus, Script, list[Any]]:
    stop = threading.Event()
    clock = [100.0]
    status = StreamStatus()
    script = Script(steps, stop, clock)
    sup = Supervisor("test", "redis://:hunter2@h:1/0", Ingest(ClusterState(state_settings())), status, backoff,
                     clock=lambda: clock[0])
    with capture_logs() as logs:
        sup.run(script, stop)
    return status, script, logs


def test_supervisor_retries_until_up_and_counts_reconnects() -> None:
    backoff = Backoff(initial=0.01, cap=0.04, jitter=0.0)
    status, script, logs = run_script(["refused", "refused", "up-then-drop", "up-then-end", "up"], backoff)
    assert script.calls == 5
    assert status.connects == 3 and status.reconnects == 2
    assert status.connected is False and status.last_error == "stopped"
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["event stream cannot connect"] * 2 + \
        ["event stream disconnected"] * 2
    assert warnings[0]["error"] == "ConnectionRefusedError: connect to redis://:***@h:1/0 refused"
    assert warnings[3]["error"] == "ConnectionError: the broker ended the event subscription"
    # Without a long-lived connection in between, the backoff keeps growing to its cap.
    assert [e["retry_in"] for e in warnings] == [0.01, 0.02, 0.04, 0.04]
    assert backoff.attempt == 2
    assert "hunter2" not in repr(logs)


def test_supervisor_resets_the_backoff_after_a_stable_connection() -> None:
    backoff = Backoff(initial=0.01, cap=0.04, jitter=0.0)
    run_script(["refused", "refused", "refused", "up-long-then-drop", "up"], backoff)
    # Three failures grew it to the cap; the stable connection reset it, so the drop cost one step.
    assert backoff.attempt == 1


def test_supervisor_returns_promptly_when_stopped_during_backoff() -> None:
    stop = threading.Event()
    status = StreamStatus()
    calls = []

    def always_refused(_stop: threading.Event, _on_up: Callable[[], None]) -> None:
        calls.append(1)
        stop.set()  # the stop arrives while the session fails: no wait, no retry
        raise ConnectionRefusedError("refused")

    Supervisor("t", "redis://h/0", Ingest(ClusterState(state_settings())), status, Backoff(initial=60, cap=60)).run(
        always_refused, stop)
    assert calls == [1]


def test_default_reconnect_wait_is_capped_at_five_seconds() -> None:
    # Issue: the stream must be back within 5 s of the broker returning, however long it was away.
    from exporter.brokers.supervisor import RECONNECT_CAP

    sup = Supervisor("t", "redis://h/0", Ingest(ClusterState(state_settings())), StreamStatus())
    waits = [sup.backoff.next_delay() for _ in range(50)]
    assert RECONNECT_CAP <= 5.0 and max(waits) <= RECONNECT_CAP
