"""The in-flight inventory (exporter/brokers/inventory.py): the pure parsing of inspect replies, on
literal replies as Celery 5 workers send them, and the I/O against real workers on a private Redis and
a private RabbitMQ vhost: what they hold is found with names, queues and start times, nothing is left
on the broker, and a cluster where nobody answers costs one deadline."""

from __future__ import annotations

import os
import time
import urllib.parse

import pytest
from celery import Celery

from exporter.brokers.inventory import InventoryRunner, by_node, parse_replies
from exporter.brokers.settings import InventorySettings
from exporter.inflight import ACTIVE, WAITING, HeldTask, Inventory
from tests._broker_helpers import RedisServer, amqp_url, mgmt, rabbit_vhost
from tests._support import ROOT, Daemon, celery_worker, wait_for

NOW = 1_700_000_000.0
ACTIVE_INFO = {
    "id": "a1", "name": "app.long", "args": [60], "kwargs": {}, "type": "app.long", "hostname": "w1@host",
    "time_start": NOW - 42.5, "acknowledged": True, "worker_pid": 77,
    "delivery_info": {"exchange": "", "routing_key": "reports", "priority": 0, "redelivered": False},
}
RESERVED_INFO = {**ACTIVE_INFO, "id": "r1", "time_start": None, "acknowledged": False}
SCHEDULED_ENTRY = {"eta": "2023-11-14T22:15:00+00:00", "priority": 6,
                   "request": {**ACTIVE_INFO, "id": "s1", "time_start": None}}


def test_active_reserved_and_scheduled_replies_become_held_tasks() -> None:
    inv = parse_replies([{"w1@host": [ACTIVE_INFO]}, {"w2@host": []}], [{"w1@host": [RESERVED_INFO]}],
                        [{"w1@host": [SCHEDULED_ENTRY]}], NOW)
    assert inv.answered == ("w1@host", "w2@host")
    assert inv.tasks == (
        HeldTask("a1", "app.long", "reports", "w1@host", ACTIVE, NOW - 42.5),
        HeldTask("s1", "app.long", "reports", "w1@host", WAITING, 1_700_000_100.0),
        HeldTask("r1", "app.long", "reports", "w1@host", WAITING, NOW),
    )


def test_an_active_request_without_a_start_time_is_dated_when_asked() -> None:
    # Received by the pool but not yet acknowledged: the age is a lower bound.
    inv = parse_replies([{"w1@host": [{**ACTIVE_INFO, "time_start": None}]}], [], [], NOW)
    assert inv.tasks[0].since == NOW


@pytest.mark.parametrize("start", [float("nan"), float("inf"), -5, True, "1", 10**400, NOW + 3600])
def test_a_start_time_that_cannot_be_true_is_replaced_by_the_time_asked(start: object) -> None:
    inv = parse_replies([{"w1@host": [{**ACTIVE_INFO, "time_start": start}]}], [], [], NOW)
    assert inv.tasks[0].since == NOW


def test_a_task_listed_as_active_and_reserved_is_kept_once_as_running() -> None:
    # It started between the two replies.
    inv = parse_replies([{"w1@host": [ACTIVE_INFO]}], [{"w1@host": [{**RESERVED_INFO, "id": "a1"}]}], [],
                        NOW)
    assert [(t.uuid, t.state) for t in inv.tasks] == [("a1", ACTIVE)]


def test_the_queue_falls_back_to_the_exchange_then_to_none() -> None:
    no_key = {**ACTIVE_INFO, "delivery_info": {"exchange": "fanout-x", "routing_key": ""}}
    no_info = {**ACTIVE_INFO, "id": "a2", "delivery_info": None}
    inv = parse_replies([{"w1@host": [no_key, no_info]}], [], [], NOW)
    assert [t.queue for t in inv.tasks] == ["fanout-x", None]


@pytest.mark.parametrize("replies", [
    None, "x", [1, "x", None], [{"w1@host": "not a list"}], [{"": [ACTIVE_INFO]}], [{7: [ACTIVE_INFO]}],
    [{"w1@host": [None, 1, "x", {"id": "x"}, {"name": "n"}, {"id": 5, "name": "n"},
                  {"id": "x" * 300, "name": "n"}]}],
])
def test_replies_of_any_other_shape_are_skipped_without_raising(replies: object) -> None:
    inv = parse_replies(replies, replies, replies, NOW)
    assert inv.tasks == ()


def test_an_inventory_is_bounded() -> None:
    many = [{**ACTIVE_INFO, "id": f"t{i}"} for i in range(50)]
    assert len(parse_replies([{"w1@host": many}], [], [], NOW, limit=10).tasks) == 10


def test_by_node_merges_replies_of_one_node() -> None:
    assert by_node([{"a": [1]}, {"a": [2], "b": []}]) == {"a": [1, 2], "b": []}


# ------------------------------------------------------------------ real workers
def _inventory(broker: str, timeout: float = 2.0) -> tuple[Inventory, float]:
    runner = InventoryRunner(InventorySettings(broker, {}, timeout), lambda _: None)
    started = time.monotonic()
    found = runner.take()
    return found, time.monotonic() - started


def _held_by_real_worker(broker: str) -> None:
    env = {"INFLIGHT_BROKER": broker}
    node = f"inv-{os.getpid()}@localhost"
    app = Celery("inv-producer", broker=broker)
    try:
        with celery_worker("tests._inflight_app", "inv-q", node, env, ROOT, concurrency=2):
            running = [app.send_task("inflight.sleep", args=[30], queue="inv-q") for _ in range(2)]
            sent_at = time.time()
            queued = app.send_task("inflight.sleep", args=[1], queue="inv-q")  # prefetched: reserved
            later = app.send_task("inflight.sleep", args=[1], queue="inv-q", countdown=120)  # scheduled
            found = wait_for(lambda: _inventory(broker)[0], 40,
                             ok=lambda inv: len(inv.tasks) == 4, what="four tasks held")
            by_id = {t.uuid: t for t in found.tasks}
            assert found.answered == (node,)
            for result in running:
                task = by_id[result.id]
                assert (task.name, task.queue, task.worker, task.state) == ("inflight.sleep", "inv-q", node,
                                                                            ACTIVE)
                assert sent_at - 1 <= task.since <= time.time()
            assert by_id[queued.id].state == WAITING
            assert by_id[later.id].state == WAITING
            assert abs(by_id[later.id].since - (sent_at + 120)) < 5
    finally:
        app.close()


@pytest.mark.integration
def test_redis_workers_report_what_they_hold_and_no_reply_queue_is_left() -> None:
    with RedisServer() as server:
        _held_by_real_worker(server.url())
        keys = sorted(k.decode() for k in server.client().keys("*"))
        assert not [k for k in keys if "reply" in k], keys


@pytest.mark.integration
def test_rabbitmq_workers_report_what_they_hold_and_no_reply_queue_is_left() -> None:
    with rabbit_vhost("exporter-inventory") as vhost:
        _held_by_real_worker(amqp_url(vhost))
        quoted = urllib.parse.quote(vhost, safe="")
        queues = wait_for(lambda: [q["name"] for q in mgmt("GET", f"/queues/{quoted}")
                                   if "reply" in q["name"]], 15, ok=lambda names: not names,
                          what="reply queues deleted")
        assert queues == []


@pytest.mark.integration
def test_no_worker_answering_costs_one_deadline() -> None:
    with RedisServer() as server:
        found, took = _inventory(server.url(), timeout=1.5)
    assert found == Inventory(found.asked_at)
    assert 1.4 <= took <= 3.0


@pytest.mark.integration
def test_a_broker_that_cannot_be_reached_is_an_error_not_an_exception() -> None:
    found, took = _inventory("redis://127.0.0.1:1/0", timeout=1.0)
    assert found.error and found.tasks == ()
    assert took < 10


@pytest.mark.integration
@pytest.mark.parametrize("timeout", ["1", "0"])
def test_the_daemon_asks_once_at_start_and_logs_one_line_when_nobody_answers(timeout: str) -> None:
    with RedisServer() as server, Daemon(["--broker-url", server.url(), "--inventory-timeout", timeout,
                                          "--log-format", "json"]) as daemon:
        daemon.start()
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="connected")
        time.sleep(3)  # the deadline, and more
        assert daemon.get("/metrics")[0] == 200
        lines = [line for line in daemon.log_lines() if "inventory" in str(line.get("event", ""))]
        assert daemon.terminate() == 0
    if timeout == "0":
        assert lines == []
    else:
        assert [line["event"] for line in lines] == [
            "no worker answered the in-flight inventory (remote control disabled, or no worker up); tasks "
            "already running are seen from their next event"]


@pytest.mark.integration
def test_the_broadcast_is_json_never_pickle() -> None:
    import json

    with RedisServer() as server:
        sub = server.client().pubsub()
        sub.psubscribe("*pidbox*")
        wait_for(lambda: sub.get_message(timeout=0.1), 5, what="subscribed")
        _inventory(server.url(), timeout=0.5)
        message = wait_for(lambda: sub.get_message(timeout=0.5), 5, what="the broadcast")
        envelope = json.loads(message["data"])
        assert envelope["content-type"] == "application/json"
        sub.close()


@pytest.mark.integration
def test_workers_with_remote_control_disabled_cost_one_deadline() -> None:
    with RedisServer() as server:
        broker = server.url()
        app = Celery("inv-producer", broker=broker)
        env = {"INFLIGHT_BROKER": broker, "INFLIGHT_REMOTE_CONTROL": "0"}
        try:
            with celery_worker("tests._inflight_app", "inv-q", f"inv-off-{os.getpid()}@localhost", env, ROOT):
                app.send_task("inflight.sleep", args=[4], queue="inv-q")
                wait_for(lambda: server.client().llen("inv-q") == 0, 30, what="the task taken by the worker")
                found, took = _inventory(broker, timeout=1.5)
                assert found.answered == () and found.tasks == () and not found.error
                assert 1.4 <= took <= 3.0
        finally:
            app.close()
