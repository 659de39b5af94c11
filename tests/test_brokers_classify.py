"""RabbitMQ queue classification on literal management-API rows: the seed topologies, policies instead
of arguments, expiring work queues, Celery-countdown-style delay queues, the order of evidence (explicit
names, then the broker, then name patterns; seed 004's consumed `dead_letter` work queue), live counts,
publish counts, and which queue names may be sent to the broker at all."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exporter.brokers.model import Rules, name_problem, rules_for
from exporter.brokers.rabbitmq.classify import amqp_result, classify, kind_of, management_result
from exporter.config import Config, poll_settings
from exporter.status import PollResult, QueueDepth

RULES = rules_for(poll_settings(Config("amqp://")))


def q(name: str, args: dict[str, Any] | None = None, policy: Any = None, ready: int = 0, unacked: int = 0,
      consumers: int = 0, head: int | None = None) -> dict[str, Any]:
    return {"name": name, "arguments": args or {}, "effective_policy_definition": policy or {},
            "messages_ready": ready, "messages_unacknowledged": unacked, "consumers": consumers,
            "head_message_timestamp": head}


def b(source: str, queue: str, rk: str = "") -> dict[str, Any]:
    return {"source": source, "destination": queue, "destination_type": "queue", "routing_key": rk}


def default_bindings(*names: str) -> list[dict[str, Any]]:
    return [b("", n, n) for n in names]  # the default exchange binds every queue by name


# shared/seeds/000: task_queue dead-letters into retry_exchange; retry_2s/4s/8s hold messages for their TTL
# and dead-letter them back to task_exchange; the final dlq has no DLX pointing at it.
# shared/seeds/004: the default queue dead-letters into dlx, which routes to dead_letters.
SEED_QUEUES = [
    q("task_queue", {"x-dead-letter-exchange": "retry_exchange"}, ready=2, unacked=1, consumers=1),
    q("retry_2s", {"x-message-ttl": 2000, "x-dead-letter-exchange": "task_exchange"}, ready=2),
    q("retry_4s", {"x-message-ttl": 4000, "x-dead-letter-exchange": "task_exchange"}, ready=1),
    q("retry_8s", {"x-message-ttl": 8000, "x-dead-letter-exchange": "task_exchange"}),
    q("dlq", ready=1, head=1709294400),
    q("default", {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"}),
    q("dead_letters", ready=3),
    q("celeryev.0b1c", {"x-message-ttl": 5000}),
    q("celery@w1.celery.pidbox"),
    q("3f2a.reply.celery.pidbox"),
    q("amq.gen-AbCd"),
    q("celeryev.celery-exporter.4242.ab12", {"x-message-ttl": 60000}),
]
SEED_BINDINGS = [
    b("task_exchange", "task_queue", "task_queue"),
    b("retry_exchange", "retry_2s", "task_queue"),
    b("dlx", "dead_letters", "dead_letter"),
    b("celeryev", "celeryev.0b1c", "#"),
    *default_bindings(*(r["name"] for r in SEED_QUEUES)),
]


def test_a_failure_route_whose_exchange_has_no_queue_bound_is_unrouted() -> None:
    queues = [q("work", {"x-dead-letter-exchange": "forgotten_dlx"}, ready=1), q("other", ready=0)]
    result = management_result(queues, default_bindings("work", "other"), RULES)
    assert result.unrouted_dead_letters == {"work": "forgotten_dlx"}
    assert "dlq" not in result.reasons.values()


def test_seed_topology_is_classified_without_configuration() -> None:
    assert classify(SEED_QUEUES, SEED_BINDINGS, RULES) == {
        "task_queue": "task", "default": "task",
        "retry_2s": "retry", "retry_4s": "retry", "retry_8s": "retry",
        "dlq": "dlq", "dead_letters": "dlq",
    }


def test_seed_topology_result_values() -> None:
    result = management_result(SEED_QUEUES, SEED_BINDINGS, RULES)
    # Why each kind (the status page and doctor show it); every failure route reaches a queue.
    assert result.reasons["task_queue"] == "broker: it has consumers or a work binding"
    assert result.reasons["retry_2s"] == "broker: a TTL queue whose dead letters go back to work"
    assert result.reasons["dead_letters"] == "broker: another queue dead-letters into it"
    assert result.reasons["dlq"].startswith("name matches")
    assert result.unrouted_dead_letters == {}
    assert replace(result, reasons={}) == PollResult(
        queues={"task_queue": QueueDepth(2.0, 1.0, 1.0), "default": QueueDepth(0.0, 0.0, 0.0)},
        retry={"retry_2s": 2.0, "retry_4s": 1.0, "retry_8s": 0.0},
        dead_letter={"dlq": 1.0, "dead_letters": 3.0},
        dead_letter_oldest={"dlq": 1709294400.0},
        dead_letter_depth={"dlq": QueueDepth(1.0, 0.0, 0.0), "dead_letters": QueueDepth(3.0, 0.0, 0.0)},
    )


def test_a_dead_letter_queue_is_found_by_its_bindings_whatever_its_name() -> None:
    queues = [q("orders", {"x-dead-letter-exchange": "parking"}), q("orders_parked")]
    bindings = [b("parking", "orders_parked", "orders")]
    assert classify(queues, bindings, RULES) == {"orders": "task", "orders_parked": "dlq"}


def test_policies_count_like_arguments() -> None:
    """The seed sets TTL and DLX with `rabbitmqctl set_policy`; arguments win over a policy's DLX."""
    everything = {"dead-letter-exchange": "retry_exchange"}  # set_policy retry ".*" ...
    queues = [
        q("task_queue", policy=everything),
        q("retry_2s_queue", policy={"message-ttl": 2000, "dead-letter-exchange": "task_exchange"}),
        q("retry_4s_queue", {"x-dead-letter-exchange": "task_exchange"}, policy={"message-ttl": 4000}),
        q("parked", policy=everything),
    ]
    bindings = [b("task_exchange", "task_queue"), b("retry_exchange", "retry_2s_queue"),
                b("retry_exchange", "retry_4s_queue")]
    assert classify(queues, bindings, RULES) == {
        "task_queue": "task", "retry_2s_queue": "retry", "retry_4s_queue": "retry", "parked": "task"}
    # An older server sends [] for "no policy".
    assert classify([q("x", policy=[])], [], RULES) == {"x": "task"}


def test_a_work_queue_whose_messages_expire_into_a_dlq_is_not_a_retry_queue() -> None:
    queues = [q("jobs", {"x-message-ttl": 60000, "x-dead-letter-exchange": "dlx"}), q("dead_letters")]
    assert classify(queues, [b("dlx", "dead_letters")], RULES) == {"jobs": "task", "dead_letters": "dlq"}


def test_a_delay_queue_feeding_a_plain_celery_queue_is_a_retry_queue() -> None:
    queues = [q("celery"), q("delay_30s", {"x-message-ttl": 30000, "x-dead-letter-exchange": "celery"})]
    bindings = [b("celery", "celery", "celery")]
    assert classify(queues, bindings, RULES) == {"celery": "task", "delay_30s": "retry"}
    # Through the default exchange, naming the queue with the dead-letter routing key:
    queues = [q("celery"), q("later", {"x-message-ttl": 5, "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": "celery"})]
    assert classify(queues, [], RULES) == {"celery": "task", "later": "retry"}


def test_ttl_and_dlx_to_an_exchange_with_no_visible_binding_is_a_retry_queue() -> None:
    queues = [q("retry_2s", {"x-message-ttl": 2000, "x-dead-letter-exchange": "task_exchange"})]
    assert classify(queues, [], RULES) == {"retry_2s": "retry"}


def test_config_exact_names_override_discovery_and_exclusions_win() -> None:
    rules = rules_for(poll_settings(Config("amqp://", retry_queues=("dead_letters",),
                                           dead_letter_queues=("retry_8s",), exclude_queues=("default",))))
    kinds = classify(SEED_QUEUES, SEED_BINDINGS, rules)
    assert kinds["dead_letters"] == "retry"
    assert kinds["retry_8s"] == "dlq"
    assert "default" not in kinds
    # Without the defaults' name globs, the seed's unbound dlq is a plain task queue.
    assert kinds["dlq"] == "task"


def test_queues_without_published_counts_are_left_out() -> None:
    fresh = {"name": "just_declared", "arguments": {}}
    assert management_result([fresh], [], RULES) == PollResult()


def test_amqp_result_classifies_by_name_only() -> None:
    rules = Rules(retry_globs=("retry_*",), dlq_globs=("dlq", "dead_letter*"))
    counts = {"task_queue": (2, 1), "retry_2s": (2, 0), "dlq": (1, 0), "dead_letters": (3, 0), "gone": None,
              "celeryev.x": (9, 1)}
    assert amqp_result(counts, rules) == PollResult(
        queues={"task_queue": QueueDepth(2.0, None, 1.0)},
        retry={"retry_2s": 2.0},
        dead_letter={"dlq": 1.0, "dead_letters": 3.0},
    )


# shared/seeds/004: `dead_letter` is a Celery work queue (task_queues has Queue('dead_letter'); the task
# handle_dead_letter is routed to it and a worker consumes it); `dead_letters` is the real DLQ behind dlx.
SEED_004_QUEUES = [
    q("default", {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"}, consumers=1),
    q("dead_letter", ready=4, consumers=1),
    q("dead_letters", ready=2),
    q("dlq", ready=1),  # seed 000's final dlq: nothing points at it, no consumer, no binding
]
SEED_004_BINDINGS = [
    b("dead_letter", "dead_letter", "dead_letter"),  # kombu binds the queue to its exchange
    b("default", "default", "default"),
    b("dlx", "dead_letters", "dead_letter"),
    *default_bindings("default", "dead_letter", "dead_letters", "dlq"),
]


def test_seed_004_consumed_dead_letter_work_queue_is_a_task_queue() -> None:
    assert classify(SEED_004_QUEUES, SEED_004_BINDINGS, RULES) == {
        "default": "task", "dead_letter": "task", "dead_letters": "dlq", "dlq": "dlq"}


def test_seed_004_dead_letter_stays_a_task_queue_while_its_workers_are_scaled_to_zero() -> None:
    """No consumer (KEDA scaled the workers to zero): its Celery binding still says it is worked."""
    idle = [dict(r, consumers=0) for r in SEED_004_QUEUES]
    assert classify(idle, SEED_004_BINDINGS, RULES)["dead_letter"] == "task"
    # Neither consumer nor binding: only the default name pattern is left, and it says DLQ.
    bare = [r for r in idle if r["name"] != "default"]
    assert classify(bare, [b("dlx", "dead_letters", "dead_letter")], RULES)["dead_letter"] == "dlq"


def test_a_consumed_dlq_stays_a_dlq_when_the_broker_dead_letters_into_it() -> None:
    """A replay tool consuming `dead_letters` does not make it a work queue: dead-lettering beats consumers."""
    rows = [dict(r, consumers=1) if r["name"] == "dead_letters" else r for r in SEED_004_QUEUES]
    assert classify(rows, SEED_004_BINDINGS, RULES)["dead_letters"] == "dlq"


def test_explicit_names_beat_the_broker_and_globs_do_not() -> None:
    explicit = rules_for(poll_settings(Config("amqp://", dead_letter_queues=("dead_letter",))))
    assert classify(SEED_004_QUEUES, SEED_004_BINDINGS, explicit)["dead_letter"] == "dlq"
    globbed = rules_for(poll_settings(Config("amqp://", dead_letter_queues=("dead_*",))))
    assert classify(SEED_004_QUEUES, SEED_004_BINDINGS, globbed)["dead_letter"] == "task"
    # The default list's exact `dlq` is a pattern too: a consumed queue named dlq is a task queue.
    worked = [q("dlq", consumers=2)]
    assert classify(worked, [], RULES) == {"dlq": "task"}


def test_kind_of_orders_the_evidence() -> None:
    rules = Rules(retry_globs=("retry_*", "r1"), dlq_globs=("d1", "dead_*", "dlq"))
    assert kind_of("celeryev.x", rules, "dlq", True) is None  # 0. never reported
    assert kind_of("d1", rules, "retry", True) == "dlq"  # 1. explicit name beats all evidence
    assert kind_of("r1", rules, "dlq") == "retry"
    assert kind_of("dead_x", rules, "retry", True) == "retry"  # 2. dead-lettering beats work and names
    assert kind_of("anything", rules, "dlq", True) == "dlq"
    assert kind_of("dead_x", rules, None, True) == "task"  # 3. work beats name patterns
    assert kind_of("retry_9", rules, None, True) == "task"
    assert kind_of("dead_x", rules) == "dlq"  # 4. name patterns
    assert kind_of("retry_9", rules) == "retry"
    assert kind_of("orders", rules) == "task"  # 5. the rest


def test_amqp_result_lets_consumers_beat_name_patterns() -> None:
    counts = {"dead_letter": (4, 1), "dead_letters": (2, 0)}
    assert amqp_result(counts, RULES) == PollResult(
        queues={"dead_letter": QueueDepth(4.0, None, 1.0)}, dead_letter={"dead_letters": 2.0})
    # Scaled to zero, over AMQP only: nothing but --queues tells the work queue from a DLQ.
    idle = {"dead_letter": (4, 0)}
    assert amqp_result(idle, RULES).dead_letter == {"dead_letter": 4.0}
    listed = rules_for(poll_settings(Config("amqp://", queues=("dead_letter",))))
    assert amqp_result(idle, listed).queues == {"dead_letter": QueueDepth(4.0, None, 0.0)}


def test_live_counts_replace_the_statistics() -> None:
    queues = [q("retry_2s", {"x-message-ttl": 2000, "x-dead-letter-exchange": "task_exchange"}, unacked=1),
              q("dead_letters", ready=0), q("gone", ready=3),
              {"name": "dlq", "arguments": {}}]  # declared moments ago: no statistics yet
    live = {"retry_2s": (7, 0), "dead_letters": (5, 1), "gone": None, "dlq": (2, 0)}
    got = management_result(queues, [], RULES, live)
    assert got.retry == {"retry_2s": 8.0}  # live ready + the statistics' unacked
    assert got.dead_letter == {"dead_letters": 5.0, "dlq": 2.0}
    assert got.dead_letter_depth["dlq"] == QueueDepth(2.0, None, 0.0)
    assert "gone" not in got.names()


def test_published_total_comes_from_message_stats() -> None:
    rows = [dict(q("dlq", ready=5), message_stats={"publish": 12}), q("orders.dlq", ready=0),
            dict(q("work", consumers=1), message_stats={"publish": 40, "deliver_get": 40})]
    got = management_result(rows, [], RULES)
    assert got.dead_letter_depth["dlq"].published_total == 12.0
    assert got.dead_letter_depth["orders.dlq"].published_total is None  # never received a message
    assert got.queues["work"].published_total == 40.0


def test_a_dlq_fed_by_a_dlx_has_no_published_total() -> None:
    """RabbitMQ's publish count leaves out dead-lettered messages: a DLX-fed DLQ must not report one."""
    rows = [dict(r, message_stats={"publish": 1}) if r["name"] == "dead_letters" else r for r in SEED_004_QUEUES]
    got = management_result(rows, SEED_004_BINDINGS, RULES)
    assert got.dead_letter["dead_letters"] == 2.0
    assert got.dead_letter_depth["dead_letters"].published_total is None


def test_names_the_broker_cannot_take() -> None:
    assert name_problem("celery") is None
    assert name_problem("é" * 127) is None  # 254 bytes
    assert name_problem("x" * 255) is None
    assert name_problem("x" * 256) == "longer than 255 bytes (256)"
    assert name_problem("é" * 128) == "longer than 255 bytes (256)"  # 128 characters, 256 bytes
    assert name_problem("bad\ud800") == "not valid UTF-8"
    assert name_problem(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "not valid UTF-8"
    assert name_problem("a\x00b") == "contains NUL"
