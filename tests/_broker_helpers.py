"""Shared pieces of the broker-polling tests: a fake clock, exposition parsing on a private registry,
RabbitMQ throw-away vhosts through the management API, and a private redis-server to kill."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests._support import free_port as free_port  # re-exported for the tests

REDIS_URL = "redis://127.0.0.1:6379/11"  # db 11: broker-polling tests (13 and 15 belong to others)
AMQP_HOST = "127.0.0.1"
MGMT_URL = "http://guest:guest@127.0.0.1:15672"
MGMT_API = "http://127.0.0.1:15672/api"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def registry_of(collectors: Iterable[Any]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


def samples(registry: CollectorRegistry) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value (``_created`` samples left out)."""
    out: Samples = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_queue(all_samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["queue"]: v for (n, labels), v in all_samples.items() if n == name}


def wait_for(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 40.0, every: float = 0.5) -> T:
    """Call ``fetch`` until ``ok`` accepts its value; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(every)


# ------------------------------------------------------------------------------------------ RabbitMQ
def mgmt(method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(
        MGMT_API + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def management_available() -> bool:
    try:
        mgmt("GET", "/overview", timeout=3)
        return True
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def rabbit_vhost(prefix: str = "exporter-poll-test") -> Iterator[str]:
    """A throw-away vhost with full permissions for guest, deleted afterwards."""
    vhost = unique(prefix)
    quoted = urllib.parse.quote(vhost, safe="")
    mgmt("PUT", f"/vhosts/{quoted}", {})
    try:
        mgmt("PUT", f"/permissions/{quoted}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        yield vhost
    finally:
        mgmt("DELETE", f"/vhosts/{quoted}")


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}:5672/{urllib.parse.quote(vhost, safe='')}"


# ------------------------------------------------------------------------------------------ Redis


@contextmanager
def private_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server of our own on a spare port (so the test may stop or kill it)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--enable-debug-command", "local"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        wait_for(lambda: _pings(client), bool, timeout=10, every=0.05)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def poll(config: Any, clock: FakeClock, seen: tuple[str, ...] = ()) -> Samples:
    """One synchronous poll of every source ``config`` gives, and the samples its collectors serve."""
    from exporter.app import poll_settings
    from exporter.brokers.polling import build_polling

    polling = build_polling(poll_settings(config), lambda: seen, clock=clock)
    try:
        polling.poll_once()
        return samples(registry_of(polling.collectors))
    finally:
        polling.close()
