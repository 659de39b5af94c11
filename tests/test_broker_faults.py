"""Broker faults, for real, against the real daemon: a private redis-server killed and restarted, the
exporter's RabbitMQ connections force-closed through the management API, and a broker that is not there
at start-up. Throughout, a watcher scrapes /metrics and /readyz every 50 ms and the tests check that
/metrics always answered 200, /readyz reported the outage and the recovery, no counter went backwards,
the stream was back within 5 s of the broker, and events published after recovery were counted exactly.

RabbitMQ runs in a throw-away vhost, so other tests publishing on the shared broker cannot disturb the
exact counts.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests._broker_helpers import RedisServer, amqp_url
from tests._reliability_helpers import EVENTS, captured_channels
from tests._support import Daemon, free_port, parse_samples, wait_for

pytestmark = pytest.mark.integration

CAPTURED_EVENTS = 96  # per replay of tests/testdata/events (see its README)
RECONNECT_WITHIN = 5.0
MGMT = "http://127.0.0.1:15672/api"
GUEST = ("guest", "guest")


# ---------------------------------------------------------------- the watcher
@dataclass
class Observation:
    at: float
    metrics_status: int
    ready_status: int
    samples: dict[str, float] = field(default_factory=dict)


class Watcher:
    """Scrapes /metrics and /readyz in a loop (its own connections, 5 s time-out) until stopped."""

    def __init__(self, port: int, interval: float = 0.05) -> None:
        self.port = port
        self.interval = interval
        self.seen: list[Observation] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-watcher", daemon=True)

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""  # no answer at all: recorded as such, and fails the "always 200" check
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            m_status, body = self._get("/metrics")
            r_status, _ = self._get("/readyz")
            samples = parse_samples(body.decode()) if m_status == 200 else {}
            self.seen.append(Observation(time.monotonic(), m_status, r_status, samples))
            self._stop.wait(self.interval)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A fast recovery can end a test within 20 scrapes: watch on until check_always_served's minimum
        # (the daemon is still up here), so that check does not depend on how fast the broker came back.
        deadline = time.monotonic() + 10
        while len(self.seen) <= 20 and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(self.interval)
        self._stop.set()
        self._thread.join(10)

    # ---- questions asked afterwards
    def first(self, ready: int, after: float) -> float | None:
        return next((o.at for o in self.seen if o.at >= after and o.ready_status == ready), None)

    def check_always_served(self) -> None:
        bad = [(round(o.at, 2), o.metrics_status) for o in self.seen if o.metrics_status != 200]
        assert not bad, f"/metrics did not answer 200: {bad[:5]}"
        assert len(self.seen) > 20

    def check_counters_monotonic(self) -> None:
        last: dict[str, float] = {}
        for o in self.seen:
            for key, value in o.samples.items():
                name = key.split("{", 1)[0]
                # celery_worker_tasks_accepted_total is the worker's own count (heartbeats' processed):
                # it starts again when the worker restarts, as the replayed capture's worker does.
                if name.endswith(("_total", "_count", "_sum", "_bucket")) and name != "celery_worker_tasks_accepted_total":
                    assert value >= last.get(key, 0.0), f"{key} went back from {last[key]} to {value}"
                    last[key] = value


def events_total(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("celery_exporter_events_total{"))


def counted(daemon: Daemon) -> float:
    return events_total(daemon.metrics())


# ---------------------------------------------------------------- Redis
def publish_redis(port: int) -> None:
    import redis

    client = redis.Redis(port=port, socket_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for channel, payload in captured_channels():
            pipe.publish(channel.replace("/15.", "/0.", 1), payload)
        receivers = pipe.execute()
        assert all(n == 1 for n in receivers), f"not everything reached one subscriber: {receivers}"
    finally:
        client.close()


def test_redis_killed_and_restarted() -> None:
    with RedisServer() as server, Daemon(["--broker-url", server.url(), "--poll-interval", "1",
                                          "--log-format", "json"]) as daemon:
        daemon.start()
        with Watcher(daemon.port) as watcher:
            wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the first connection")
            publish_redis(server.port)
            wait_for(lambda: counted(daemon) == CAPTURED_EVENTS, 10, what="the first replay counted")

            killed = time.monotonic()
            server.kill()
            wait_for(lambda: watcher.first(503, killed), 10, what="/readyz to report the outage")
            time.sleep(2.0)  # a real outage, several reconnect attempts long
            assert daemon.get("/metrics")[0] == 200
            server.start()
            back = time.monotonic()
            wait_for(lambda: watcher.first(200, back), 15, what="/readyz to report the recovery")
            recovered = watcher.first(200, back)
            assert recovered is not None and recovered - back < RECONNECT_WITHIN, recovered and recovered - back

            publish_redis(server.port)
            wait_for(lambda: counted(daemon) >= 2 * CAPTURED_EVENTS, 10, what="the second replay counted")
            time.sleep(0.5)  # nothing more may trickle in
        samples = daemon.metrics()
    assert events_total(samples) == 2 * CAPTURED_EVENTS
    assert samples["celery_exporter_broker_reconnects_total"] == 1
    assert samples["celery_exporter_broker_connected"] == 1
    watcher.check_always_served()
    watcher.check_counters_monotonic()
    assert watcher.first(503, killed) is not None


def test_redis_unreachable_at_start_up() -> None:
    port = free_port()  # nothing listens here yet
    with Daemon(["--broker-url", f"redis://127.0.0.1:{port}/0", "--poll-interval", "1",
                 "--log-format", "json"]) as daemon:
        daemon.start()  # waits for /healthz 200: the daemon runs without its broker
        assert daemon.get("/readyz")[0] == 503
        with Watcher(daemon.port) as watcher:
            wait_for(lambda: daemon.output().count("event stream cannot connect") >= 3, 15,
                     what="repeated reconnect attempts in the logs")
            assert daemon.get("/healthz")[0] == 200
            with RedisServer(port) as server:
                back = time.monotonic()
                wait_for(lambda: watcher.first(200, back), 15, what="/readyz to report the connection")
                recovered = watcher.first(200, back)
                assert recovered is not None and recovered - back < RECONNECT_WITHIN, recovered - back
                publish_redis(server.port)
                wait_for(lambda: counted(daemon) >= CAPTURED_EVENTS, 10, what="events counted")
                assert counted(daemon) == CAPTURED_EVENTS
        attempts = [line for line in daemon.log_lines() if line.get("event") == "event stream cannot connect"]
        assert len(attempts) >= 3
        assert all(line.get("retry_in", 99) <= 30 for line in attempts)  # capped backoff
    watcher.check_always_served()
    watcher.check_counters_monotonic()


# ---------------------------------------------------------------- RabbitMQ
def publish_amqp(vhost: str) -> None:
    import pika

    params = pika.ConnectionParameters("127.0.0.1", 5672, vhost, pika.PlainCredentials(*GUEST))
    conn = pika.BlockingConnection(params)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.exchange_declare("celeryev", exchange_type="topic", durable=True, auto_delete=False)
        for line in map(json.loads, (EVENTS / "amqp_messages.jsonl").read_text().splitlines()):
            channel.basic_publish(
                "celeryev", line["routing_key"], line["body"].encode(),
                pika.BasicProperties(content_type=line["content_type"], content_encoding=line["content_encoding"],
                                     delivery_mode=line["delivery_mode"]),
                mandatory=True,  # unroutable (no queue bound yet) would be an error, not silence
            )
    finally:
        conn.close()


def exporter_connections(vhost: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{MGMT}/vhosts/{quote(vhost, safe='')}/connections", auth=GUEST, timeout=10)
    resp.raise_for_status()
    return [c for c in resp.json()
            if (c.get("client_properties") or {}).get("product") == "celery-exporter"]


def test_rabbitmq_connections_force_closed(vhost: str) -> None:
    with Daemon(["--broker-url", amqp_url(vhost), "--poll-interval", "1", "--log-format", "json"]) as daemon:
        daemon.start()
        with Watcher(daemon.port) as watcher:
            wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the first connection")
            publish_amqp(vhost)
            wait_for(lambda: counted(daemon) == CAPTURED_EVENTS, 10, what="the first replay counted")

            # The management API lists connections with a few seconds' delay.
            conns = wait_for(lambda: exporter_connections(vhost), 20, what="the exporter's connections")
            closed = time.monotonic()
            for conn in conns:
                requests.delete(f"{MGMT}/connections/{quote(conn['name'], safe='')}", auth=GUEST, timeout=10,
                                headers={"X-Reason": "celery-exporter fault test"}).raise_for_status()
            wait_for(lambda: watcher.first(503, closed), 10, what="/readyz to report the outage")
            wait_for(lambda: watcher.first(200, closed), 15, what="/readyz to report the recovery")
            recovered = watcher.first(200, closed)
            assert recovered is not None and recovered - closed < RECONNECT_WITHIN, recovered - closed
            wait_for(lambda: daemon.metrics()["celery_exporter_broker_reconnects_total"] == 1, 10,
                     what="the reconnect to be counted")

            publish_amqp(vhost)
            wait_for(lambda: counted(daemon) >= 2 * CAPTURED_EVENTS, 10, what="the second replay counted")
            time.sleep(0.5)
        samples = daemon.metrics()
        assert daemon.terminate() == 0
    assert events_total(samples) == 2 * CAPTURED_EVENTS
    assert samples["celery_exporter_broker_connected"] == 1
    watcher.check_always_served()
    watcher.check_counters_monotonic()
