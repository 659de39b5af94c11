"""After a real Redis pub/sub cut, a task that was waiting and started while the exporter's subscription
was down (its task-started published to nobody) no longer counts as waiting until --task-max-age: at
once without an inventory, once an inventory that does not confirm it has come otherwise. The real Redis
event stream runs in-process on a private redis-server; the cut is ``CLIENT KILL ID`` of its own
subscription."""

from __future__ import annotations

import time

import pytest

from exporter.brokers.redis.stream import RedisEventStream
from exporter.inflight import Inventory
from tests._broker_helpers import RedisServer
from tests._events import redis_envelope, sent, started
from tests._stream_helpers import pipeline, running, settings
from tests._support import wait_for

pytestmark = pytest.mark.integration
CHANNEL = "/0.celeryev/task.multi"


def _publish(server: RedisServer, event: dict[str, object]) -> int:
    return int(server.client().publish(CHANNEL, redis_envelope([event])))


@pytest.mark.parametrize("inventory", [False, True])
def test_a_task_started_during_a_cut_no_longer_waits(inventory: bool) -> None:
    now = time.time()
    with RedisServer() as server:
        state, ingest, status = pipeline()
        asked: list[bool] = []
        if inventory:  # an inventory is coming, and finds nothing held: the suspect is dropped then
            ingest.on_connect = lambda: asked.append(True)
        stream = RedisEventStream(settings(server.url()), ingest, status)
        with running(stream, status):
            assert _publish(server, sent("a", "app.t", now - 5, queue="q")) == 1
            assert _publish(server, sent("b", "app.t", now - 4, queue="q")) == 1
            wait_for(lambda: state.take_snapshot().oldest_waiting == {"q": now - 5}, 5, what="both waiting")
            ours = [c["id"] for c in server.client().client_list(_type="pubsub")]
            assert len(ours) == 1
            server.client().client_kill_filter(_id=ours[0])
            # Published while nobody listens: lost for good (PUBLISH says no subscriber got it).
            assert _publish(server, started("a", now - 1)) == 0
            wait_for(lambda: status.reconnects == 1 and status.connected, 10, what="the reconnect")
            if inventory:
                assert state.take_snapshot().oldest_waiting == {"q": now - 5}  # until the answer
                ingest.offer_inventory(Inventory(time.time()))
            wait_for(lambda: state.take_snapshot().oldest_waiting == {}, 5, what="the waiting dropped")
            # What arrives after the reconnect is tracked as usual.
            assert _publish(server, sent("c", "app.t", now, queue="q")) == 1
            wait_for(lambda: state.take_snapshot().oldest_waiting == {"q": now}, 5, what="c waiting")
        assert asked == ([True, True] if inventory else [])
