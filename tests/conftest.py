"""One fixture per concept, each built on the one helper that implements it:

- ``free_tcp_port``: a port nobody listens on (``tests._support.free_port``);
- ``fake_clock``: an injectable clock at ``T0`` that only the test moves (``tests._support.FakeClock``);
- ``redis_server``: a private redis-server on a free port, killed at teardown
  (``tests._broker_helpers.RedisServer``);
- ``vhost``: a private RabbitMQ vhost, deleted at teardown (``tests._broker_helpers.rabbit_vhost``);
- ``exporter_process``: start the real daemon with some arguments; every one started is killed at
  teardown (``tests._support.Daemon``).

Waiting for a condition is a plain function, ``tests._support.wait_for(cond, timeout)``: helpers call it
too, so it is not a fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests._broker_helpers import RedisServer, rabbit_vhost
from tests._events import T0
from tests._support import Daemon, FakeClock, free_port


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def vhost() -> Iterator[str]:
    with rabbit_vhost() as name:
        yield name


@pytest.fixture
def exporter_process() -> Iterator[Callable[..., Daemon]]:
    """``exporter_process(args, env=None, wait_healthy=True)``: a started ``Daemon``."""
    started: list[Daemon] = []

    def start(args: list[str], env: dict[str, str] | None = None, wait_healthy: bool = True) -> Daemon:
        daemon = Daemon(args, env=env)
        started.append(daemon)
        return daemon.start(wait_healthy)

    yield start
    for daemon in started:
        daemon.close()
