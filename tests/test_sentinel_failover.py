"""The documented multi-sentinel URL (``sentinel://h1:26379;sentinel://h2:26379`` with ``master_name`` in
the transport options), against the real daemon: two ``redis-server --sentinel`` watching a private
master with one replica. The first sentinel of the URL is killed before the exporter starts; events and
queue depths still arrive through the second. Then the sentinel fails the master over to the replica and
the old master is killed: the event stream and the poller both follow to the new master.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis

from tests._broker_helpers import RedisSentinel, RedisServer
from tests._support import Daemon, wait_for
from tests.test_streams_redis import publish_captured

pytestmark = pytest.mark.integration
MASTER = "mymaster"


def events_total(daemon: Daemon) -> float:
    return sum(v for k, v in daemon.metrics().items() if k.startswith("celery_exporter_events_total"))


def queue_length(daemon: Daemon, queue: str = "celery") -> float | None:
    return daemon.metrics().get(f'celery_queue_length{{queue="{queue}"}}')


def master_port(sentinel: RedisSentinel) -> int | None:
    try:
        addr = redis.Redis(port=sentinel.port, socket_timeout=1).execute_command(
            "SENTINEL", "get-master-addr-by-name", MASTER)
    except redis.RedisError:
        return None
    return int(addr[1]) if addr else None


def replicas_known(sentinel: RedisSentinel) -> int:
    try:
        return len(redis.Redis(port=sentinel.port, socket_timeout=1).execute_command(
            "SENTINEL", "replicas", MASTER))
    except redis.RedisError:
        return 0


@pytest.fixture
def cluster() -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel, RedisSentinel]]:
    master = RedisServer().start()
    replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(master.port))).start()
    sentinels = [RedisSentinel(master.port, MASTER).start() for _ in range(2)]
    try:
        for s in sentinels:
            wait_for(lambda s=s: master_port(s) == master.port and replicas_known(s) == 1, 30,
                     what="the sentinels to know the master and its replica")
        yield master, replica, sentinels[0], sentinels[1]
    finally:
        for server in (*sentinels, replica, master):
            server.stop()


def test_multi_sentinel_url_with_one_sentinel_down_streams_polls_and_fails_over(
        cluster: tuple[RedisServer, RedisServer, RedisSentinel, RedisSentinel],
        exporter_process: Callable[..., Daemon]) -> None:
    master, replica, down, up = cluster
    down.kill()  # first in the URL: every (re)connect has to fall through to the second
    # The database is the first URL's, as kombu reads it (the events go to channel /15.celeryev/...).
    url = f"sentinel://127.0.0.1:{down.port}/15;sentinel://127.0.0.1:{up.port}"
    daemon = exporter_process(["--broker-url", url, "--broker-transport-options",
                               json.dumps({"master_name": MASTER}), "--log-format", "json",
                               "--poll-interval", "1", "--poll-timeout", "2", "--queues", "celery"])
    wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the stream to connect", context=daemon.output)
    assert url.encode() in daemon.get("/")[1]  # the status page names every sentinel (no password here)
    assert "poll timed out" not in daemon.output()  # the dead sentinel is skipped at once

    # Through the surviving sentinel: events and the queue depth of the master.
    sent = publish_captured(master.client(15), db=15)
    wait_for(lambda: events_total(daemon) >= sent, 15, what="events via the second sentinel",
             context=daemon.output)
    master.client(15).lpush("celery", "a", "b")
    wait_for(lambda: queue_length(daemon) == 2.0, 15, what="the master's queue depth", context=daemon.output)

    # Failover: the replica becomes the master; the old one is gone for good.
    wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", 15,
             what="the replica to sync")
    redis.Redis(port=up.port, socket_timeout=5).execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_for(lambda: master_port(up) == replica.port, 30, what="the sentinel to promote the replica")
    master.kill()
    wait_for(lambda: replica.client().info("replication")["role"] == "master", 15, what="the new master")

    replica.client(15).lpush("celery", "c")  # the replicated a, b and this one
    wait_for(lambda: queue_length(daemon) == 3.0, 30, what="the new master's queue depth",
             context=daemon.output)

    # Until the stream has re-subscribed on the new master, what is published there is lost (pub/sub):
    # publish again each second until a whole capture arrives.
    def one_capture_arrives() -> bool:
        before = events_total(daemon)
        publish_captured(replica.client(15), db=15)
        try:
            wait_for(lambda: events_total(daemon) >= before + sent, 1, what="events")
        except AssertionError:
            return False
        return True

    wait_for(one_capture_arrives, 30, what="events via the new master", context=daemon.output)
    assert daemon.terminate() == 0
