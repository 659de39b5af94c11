"""The RabbitMQ pollers against the real RabbitMQ, each test in a throw-away vhost: the seeds' topology
(task queue with a DLX, retry_2s/4s/8s with TTL and a DLX back, the final dlq; dlx/dead_letters behind
the default queue) with messages that really dead-letter, polled through the management API and through
passive declares over AMQP only; the seed's policy variant; absent queues.

The retry queues keep the seeds' names and shape but a ten-minute TTL, so the counts hold still while the
management database catches up (it refreshes every 5 s; the tests poll until the values appear).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest

from exporter.config import Config
from tests._broker_helpers import (
    MGMT_URL,
    amqp_url,
    by_queue,
    management_available,
    mgmt,
    poll,
    rabbit_vhost,
)
from tests._support import FakeClock, wait_for

pytestmark = pytest.mark.integration
T = 1_700_000_000.0
TTL = 600_000
LONG = 40.0  # seconds to wait for the management database's statistics


@pytest.fixture(scope="module")
def management() -> None:
    if not management_available():
        pytest.fail("RabbitMQ management API not reachable on 127.0.0.1:15672: "
                    "run `rabbitmq-plugins enable rabbitmq_management` (scripts/test.sh does)")


def view(got: dict, source: str) -> dict[str, Any]:
    src = (("source", source),)
    return {
        "length": by_queue(got, "celery_queue_length"),
        "unacked": by_queue(got, "celery_queue_messages_unacked"),
        "consumers": by_queue(got, "celery_queue_consumers"),
        "retry": by_queue(got, "celery_retry_queue_length"),
        "dlq": by_queue(got, "celery_dead_letter_queue_length"),
        "age": by_queue(got, "celery_dead_letter_queue_oldest_message_age_seconds"),
        "success": got.get(("celery_exporter_poll_success", src)),
        "errors": got.get(("celery_exporter_poll_errors_total", src)),
    }


def _ttl_dlx(ttl: int, dlx: str) -> dict[str, Any]:
    return {"x-message-ttl": ttl, "x-dead-letter-exchange": dlx}


@pytest.fixture(scope="module")
def seeded(management: None) -> Iterator[tuple[str, pika.BlockingConnection]]:
    """The seed topology with messages: task_queue 2 ready + 1 unacked (1 consumer), retry_2s 2 (really
    dead-lettered from task_queue), retry_4s 1, retry_8s 0, dlq 1, default 0, dead_letters 3 (really
    dead-lettered from default), plus Celery's own queues that must not show."""
    with rabbit_vhost() as vhost:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
        ch = conn.channel()
        for exchange in ("task_exchange", "retry_exchange", "dlx"):
            ch.exchange_declare(exchange, "direct", durable=True)
        ch.queue_declare("task_queue", durable=True, arguments={"x-dead-letter-exchange": "retry_exchange"})
        ch.queue_bind("task_queue", "task_exchange", "task_queue")
        for name in ("retry_2s", "retry_4s", "retry_8s"):
            ch.queue_declare(name, durable=True, arguments=_ttl_dlx(TTL, "task_exchange"))
        ch.queue_bind("retry_2s", "retry_exchange", "task_queue")  # first failure -> 2 s delay queue
        ch.queue_declare("dlq", durable=True)  # the seed's final dlq: nothing routes to it by DLX
        ch.queue_declare("dead_letters", durable=True)
        ch.queue_bind("dead_letters", "dlx", "dead_letter")
        ch.queue_declare("default", durable=True, arguments={
            "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"})
        # Celery's internals and the exporter's own event queue.
        ch.exchange_declare("celeryev", "topic", durable=True)
        ch.queue_declare("celeryev.6e1f2a", auto_delete=True, arguments={"x-message-ttl": 5000})
        ch.queue_bind("celeryev.6e1f2a", "celeryev", "#")
        ch.queue_declare("celery@worker-1.celery.pidbox", auto_delete=True)
        ch.queue_declare("celeryev.celery-exporter.77.ab12", auto_delete=True)
        for name in ("celeryev.6e1f2a", "celery@worker-1.celery.pidbox", "celeryev.celery-exporter.77.ab12"):
            ch.basic_publish("", name, b"{}")

        props = pika.BasicProperties(content_type="application/json", timestamp=int(T - 120))
        for i in range(5):
            ch.basic_publish("task_exchange", "task_queue", f'{{"n": {i}}}'.encode(), props)
        for _ in range(2):  # a worker rejects two: RabbitMQ dead-letters them into retry_2s
            method, _, _ = ch.basic_get("task_queue")
            assert method is not None
            ch.basic_reject(method.delivery_tag, requeue=False)
        ch.basic_publish("", "retry_4s", b'{"n": 9}', props)
        old = pika.BasicProperties(content_type="application/json", timestamp=int(T - 3600))
        for i in range(3):
            ch.basic_publish("", "default", f'{{"d": {i}}}'.encode(), old)
        for _ in range(3):
            method, _, _ = ch.basic_get("default")
            assert method is not None
            ch.basic_reject(method.delivery_tag, requeue=False)
        ch.basic_publish("", "dlq", b'{"final": true}', pika.BasicProperties(timestamp=int(T - 600)))

        worker = conn.channel()  # a consumer that holds one message unacked
        worker.basic_qos(prefetch_count=1)
        worker.basic_consume("task_queue", lambda *a: None, auto_ack=False)
        conn.process_data_events(time_limit=0.5)
        try:
            yield vhost, conn
        finally:
            conn.close()


def test_seed_topology_through_the_management_api(seeded: tuple[str, Any]) -> None:
    vhost, _ = seeded
    config = Config(amqp_url(vhost), rabbitmq_management_url=MGMT_URL, default_queue="default")
    expected = {
        "length": {"task_queue": 2.0, "default": 0.0},
        "unacked": {"task_queue": 1.0, "default": 0.0},
        "consumers": {"task_queue": 1.0, "default": 0.0},
        "retry": {"retry_2s": 2.0, "retry_4s": 1.0, "retry_8s": 0.0},
        "dlq": {"dlq": 1.0, "dead_letters": 3.0},
        # head_message_timestamp: the oldest message's AMQP timestamp, kept through dead-lettering
        "age": {"dlq": 600.0, "dead_letters": 3600.0},
        "success": 1.0,
        "errors": 0.0,
    }
    got = wait_for(lambda: view(poll(config, FakeClock(T)), "rabbitmq_management"), LONG,
                   ok=lambda v: v == expected, every=0.5)
    assert got == expected


def test_seed_topology_over_amqp_only(seeded: tuple[str, Any]) -> None:
    vhost, _ = seeded
    config = Config(amqp_url(vhost), default_queue="default", queues=("task_queue",),
                    retry_queues=("retry_2s", "retry_4s", "retry_8s"),
                    dead_letter_queues=("dlq", "dead_letters", "parking_lot"))
    expected = {
        "length": {"task_queue": 2.0, "default": 0.0},
        "unacked": {},  # a passive declare does not tell
        "consumers": {"task_queue": 1.0, "default": 0.0},
        "retry": {"retry_2s": 2.0, "retry_4s": 1.0, "retry_8s": 0.0},
        "dlq": {"dlq": 1.0, "dead_letters": 3.0},  # parking_lot does not exist: absent, not an error
        "age": {},
        "success": 1.0,
        "errors": 0.0,
    }
    # Passive declares see the queues' own counts at once; wait only for the dead-lettering to land.
    got = wait_for(lambda: view(poll(config, FakeClock(T)), "rabbitmq_amqp"), 10, ok=lambda v: v == expected,
                   every=0.5)
    assert got == expected


def test_amqp_only_without_configuration_finds_event_queues_and_the_seed_dlq(seeded: tuple[str, Any]) -> None:
    vhost, _ = seeded
    got = view(poll(Config(amqp_url(vhost)), FakeClock(T), seen=("task_queue", "celeryev.6e1f2a")),
               "rabbitmq_amqp")
    # "celery" (the default default queue) and "celery:dead_letter_queue" do not exist here: no series.
    assert (got["length"], got["dlq"], got["retry"]) == ({"task_queue": 2.0}, {"dlq": 1.0}, {})
    assert got["success"] == 1.0


def test_policy_variant_of_the_seed(management: None) -> None:
    """seeds/000 sets TTL and DLX with `rabbitmqctl set_policy` instead of queue arguments."""
    with rabbit_vhost() as vhost:
        v = vhost.replace("/", "%2F")
        mgmt("PUT", f"/policies/{v}/retry", {"pattern": ".*", "apply-to": "queues", "priority": 0,
                                             "definition": {"dead-letter-exchange": "retry_exchange"}})
        mgmt("PUT", f"/policies/{v}/retry-2s", {
            "pattern": "^retry_2s_queue$", "apply-to": "queues", "priority": 1,
            "definition": {"message-ttl": TTL, "dead-letter-exchange": "task_exchange"}})
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
        try:
            ch = conn.channel()
            for exchange in ("task_exchange", "retry_exchange"):
                ch.exchange_declare(exchange, "direct")
            for name in ("task_queue", "retry_2s_queue", "dlq"):
                ch.queue_declare(name)
            ch.queue_bind("task_queue", "task_exchange", "task_queue")
            ch.queue_bind("retry_2s_queue", "retry_exchange", "task_queue")
            for i in range(3):
                ch.basic_publish("task_exchange", "task_queue", f"{i}".encode())
            for _ in range(2):
                method, _, _ = ch.basic_get("task_queue")
                assert method is not None
                ch.basic_reject(method.delivery_tag, requeue=False)  # the policy's DLX takes them
            config = Config(amqp_url(vhost), rabbitmq_management_url=MGMT_URL, default_queue="task_queue")
            expected = ({"task_queue": 1.0}, {"retry_2s_queue": 2.0}, {"dlq": 0.0})
            got = wait_for(lambda: (lambda g: (g["length"], g["retry"], g["dlq"]))(
                view(poll(config, FakeClock(T)), "rabbitmq_management")), LONG, ok=lambda x: x == expected, every=0.5)
            assert got == expected
        finally:
            conn.close()


def test_management_api_down_fails_the_poll_alone(management: None) -> None:
    config = Config("amqp://guest:guest@127.0.0.1:5672//",
                    rabbitmq_management_url="http://guest:secretpw@127.0.0.1:1", poll_timeout=1.0)
    got = view(poll(config, FakeClock(T)), "rabbitmq_management")
    assert (got["success"], got["errors"], got["length"]) == (0.0, 1.0, {})
