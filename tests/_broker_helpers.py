"""The private brokers tests run against, and reading what a poll serves: a redis-server (and Sentinel) of
the test's own on a spare port, throw-away RabbitMQ vhosts through the management API, and exposition
parsing on a private registry. ``tests/conftest.py`` offers them as the ``redis_server`` and ``vhost``
fixtures."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests._support import FakeClock, free_port, wait_for

REDIS_URL = "redis://127.0.0.1:6379/11"  # db 11: broker-polling tests (13 and 15 belong to others)
AMQP_HOST = "127.0.0.1"
MGMT_URL = "http://guest:guest@127.0.0.1:15672"
MGMT_API = "http://127.0.0.1:15672/api"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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
class RedisServer:
    """A private redis-server on a spare port (no persistence): killed, paused and restarted on the same
    port at will; ``stop()`` (or leaving the ``with`` block) kills it and removes its directory."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="test-redis-")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def argv(self) -> list[str]:
        # DEBUG SLEEP (a server that hangs mid-poll) needs the debug command.
        return [_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", self.dir, "--loglevel", "warning", "--enable-debug-command", "local", *self.extra]

    def start(self) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self  # already running: ``with RedisServer().start()`` enters a started server
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._pings, 10, what=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _pings(self) -> bool:
        try:  # no retries: redis-py's default retry-with-backoff would slow each poll down to seconds
            return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                                    retry=Retry(NoBackoff(), 0)).ping())
        except (redis.AuthenticationError, redis.ResponseError):
            return True  # up, and wants a password
        except redis.RedisError:
            return False

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching one master as ``master_name``."""

    def __init__(self, master_port: int, master_name: str = "mymaster") -> None:
        super().__init__()
        self.conf = Path(self.dir) / "sentinel.conf"
        self.conf.write_text(f"port {self.port}\nbind 127.0.0.1\n"
                             f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n")

    def argv(self) -> list[str]:
        return [_redis_binary(), str(self.conf), "--sentinel"]


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    return binary


def polled_registry(polling: Any, clock: Callable[[], float], *others: Any) -> CollectorRegistry:
    """A private registry serving ``polling``'s results as the exporter does, plus ``others``."""
    from exporter.collectors.queues import QueueCollector

    return registry_of([QueueCollector(polling.views, clock), *others])


def poll(config: Any, clock: FakeClock, seen: tuple[str, ...] = ()) -> Samples:
    """One synchronous poll of every source ``config`` gives, and the samples its collectors serve."""
    from exporter.brokers.polling import build_polling
    from exporter.config import poll_settings

    polling = build_polling(poll_settings(config), lambda: seen)
    try:
        polling.poll_once()
        return samples(polled_registry(polling, clock))
    finally:
        polling.close()
