"""Pure Redis logic on literal key names and literal replies: what a scan means, which commands one poll
sends (a constant number of round trips), and how replies become queue, retry and DLQ values."""

from __future__ import annotations

import json
from typing import Any

import redis

from exporter.brokers.model import Kind, Rules
from exporter.brokers.redis.keys import (
    RedisLayout,
    RedisSettings,
    binding_queue,
    detect_sep,
    first_round,
    index_keys,
    make_plan,
    redis_result,
)
from exporter.config import Config
from exporter.status import PollResult, QueueDepth

S = "\x06\x16"
DEFAULT_DLQ = Config("redis://").dead_letter_queues


def settings(layout: RedisLayout | None = None, **kw: Any) -> RedisSettings:
    layout = layout or RedisLayout()
    rules = Rules(retry_globs=("retry:*",), dlq_globs=DEFAULT_DLQ, internal_names=layout.internal_keys)
    base: dict[str, Any] = {"queue_names": ("celery",), "dlq_names": ("celery:dead_letter_queue", "dlq")}
    base.update(kw)
    return RedisSettings(layout=layout, rules=rules, **base)


def test_layout_from_transport_options() -> None:
    assert RedisLayout.from_options({}) == RedisLayout()
    layout = RedisLayout.from_options({"global_keyprefix": "app:", "sep": ":", "priority_steps": [9, 0, 5],
                                       "unacked_key": "acks"})
    assert (layout.prefix, layout.sep, layout.priority_steps, layout.unacked_key) == ("app:", ":", (0, 5, 9), "acks")
    assert layout.internal_keys == {"acks", "unacked_index", "unacked_mutex"}
    assert layout.sub_keys("q", (7,)) == [(0, "q"), (5, "q:5"), (7, "q:7"), (9, "q:9")]


def test_index_sorts_scanned_keys() -> None:
    index = index_keys(["_kombu.binding.celery", "celery", f"celery{S}3", f"celery{S}7", "dlq:t", f"x{S}y",
                        "_kombu.binding.celeryev"], RedisLayout())
    assert index.exchanges == ["celery", "celeryev"]
    assert index.substeps == {"celery": {3, 7}}
    assert index.plain == {"celery", "dlq:t", f"x{S}y"}


def test_binding_member_gives_the_queue() -> None:
    assert binding_queue(f"celery{S}{S}celery", S) == "celery"
    assert binding_queue(f"rk{S}pat{S}q", S) == "q"
    # A custom separator that also occurs in the queue name: routing key == queue resolves it.
    assert binding_queue("a:b::a:b", ":") == "a:b"
    # Written with another separator than configured: no queue, never "default::default".
    assert binding_queue("default::default", S) is None


def test_the_separator_a_binding_was_written_with() -> None:
    assert detect_sep("default::default") == ":"
    assert detect_sep(f"q.x{S}{S}q.x") == S
    assert detect_sep("a|b||a|b") == "|"
    assert detect_sep("rk:pattern:queue") is None  # not Celery's default shape: nothing guessed


def test_a_dlq_database_is_named_by_host_port_and_db_never_by_its_user() -> None:
    from exporter.brokers.redis import dlq_source

    assert dlq_source("redis://:pw@10.0.0.5:6380/3") == "redis_dlq:10.0.0.5:6380/3"
    assert dlq_source("rediss://user:pw@cache.internal/0?ssl_cert_reqs=required") == \
        "redis_dlq:cache.internal:6379/0"
    assert dlq_source("redis://[::1]:7000/2") == "redis_dlq:[::1]:7000/2"
    assert dlq_source("redis+socket:///run/redis.sock?virtual_host=4") == "redis_dlq:/run/redis.sock/4"


SCANNED = [
    "_kombu.binding.celery", "_kombu.binding.celeryev", "_kombu.binding.reports", "_kombu.binding_deadlines",
    "celery", f"celery{S}3", f"celery{S}7", f"orphan{S}5", "dlq:app.pay", f"dlq:app.pay{S}9",
    "celery:dead_letter_queue", "retry:app.pay", "unacked", "unacked_index", "celery-task-meta-1",
]


def test_one_poll_is_two_pipelines_and_reads_every_sub_queue() -> None:
    cfg = settings()
    index = index_keys(SCANNED, cfg.layout)
    first = first_round(index, cfg, remembered={})
    assert first == [
        ("HLEN", "unacked"),
        ("SMEMBERS", "_kombu.binding.celery"),
        ("SMEMBERS", "_kombu.binding.reports"),  # celeryev is Celery's event exchange: never read
        ("TYPE", "celery:dead_letter_queue"), ("TYPE", "dlq"), ("TYPE", "dlq:app.pay"), ("TYPE", "retry:app.pay"),
    ]
    replies1 = [2, {f"celery{S}{S}celery".encode()}, {f"reports{S}{S}reports".encode()},
                b"zset", b"none", b"list", b"list"]
    plan = make_plan(index, replies1, cfg, seen=("emails",), remembered={}, truncated=False)
    assert plan.commands == [
        # celery: configured steps 3, 6, 9 and the 7 that a producer used
        ("LLEN", "celery"), ("LLEN", f"celery{S}3"), ("LLEN", f"celery{S}6"), ("LLEN", f"celery{S}7"),
        ("LLEN", f"celery{S}9"),
        ("ZCARD", "celery:dead_letter_queue"), ("ZRANGE", "celery:dead_letter_queue", 0, 0, "WITHSCORES"),
        ("LLEN", "dlq:app.pay"), ("LINDEX", "dlq:app.pay", 0), ("LINDEX", "dlq:app.pay", -1),
        ("LLEN", f"dlq:app.pay{S}3"), ("LLEN", f"dlq:app.pay{S}6"),
        ("LLEN", f"dlq:app.pay{S}9"), ("LINDEX", f"dlq:app.pay{S}9", 0), ("LINDEX", f"dlq:app.pay{S}9", -1),
        ("LLEN", "emails"), ("LLEN", f"emails{S}3"), ("LLEN", f"emails{S}6"), ("LLEN", f"emails{S}9"),
        ("LLEN", "orphan"), ("LLEN", f"orphan{S}3"), ("LLEN", f"orphan{S}5"), ("LLEN", f"orphan{S}6"),
        ("LLEN", f"orphan{S}9"),
        ("LLEN", "reports"), ("LLEN", f"reports{S}3"), ("LLEN", f"reports{S}6"), ("LLEN", f"reports{S}9"),
        ("LLEN", "retry:app.pay"), ("LLEN", f"retry:app.pay{S}3"), ("LLEN", f"retry:app.pay{S}6"),
        ("LLEN", f"retry:app.pay{S}9"),
    ]
    entry = json.dumps({"timestamp": "2024-03-01T12:00:00+00:00"}).encode()
    newer = json.dumps({"timestamp": 1709294500}).encode()
    wrongtype = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    replies2 = [
        4, 1, 0, 2, 3,
        2, [[b"{}", 1709294000.5]],
        3, newer, entry, 0, 0, 1, entry, entry,
        0, 0, 0, 0,
        0, 0, 1, 0, 0,
        wrongtype, 0, 0, 0,
        5, 0, 0, 0,
    ]
    result, existing = redis_result(plan, replies2, "timestamp")
    assert result == PollResult(
        queues={"celery": QueueDepth(10.0), "emails": QueueDepth(0.0), "orphan": QueueDepth(1.0),
                "reports": QueueDepth(0.0)},
        retry={"retry:app.pay": 5.0},
        dead_letter={"celery:dead_letter_queue": 2.0, "dlq:app.pay": 4.0},
        dead_letter_oldest={"celery:dead_letter_queue": 1709294000.5, "dlq:app.pay": 1709294400.0},
        broker_unacked=2.0,
        skipped={"wrong_type": 1},  # the "reports" key holds another type: skipped, counted
        mismatched_options=("priority_steps",),  # a producer used steps 5 and 7
    )
    assert existing == {"celery": "task", "orphan": "task", "celery:dead_letter_queue": "dlq",
                        "dlq:app.pay": "dlq", "retry:app.pay": "retry"}


def test_a_drained_dlq_is_reported_as_zero_once_seen_and_absent_ones_not_at_all() -> None:
    cfg = settings(queue_names=())
    index = index_keys([], cfg.layout)
    remembered: dict[str, Kind] = {"dlq:app.pay": "dlq"}
    first = first_round(index, cfg, remembered)
    assert first == [("HLEN", "unacked"), ("TYPE", "celery:dead_letter_queue"), ("TYPE", "dlq"),
                     ("TYPE", "dlq:app.pay")]
    plan = make_plan(index, [0, b"none", b"none", b"none"], cfg, (), remembered, False)
    result, existing = redis_result(plan, [0, 0, 0, 0], "timestamp")
    assert result.dead_letter == {"dlq:app.pay": 0.0}
    assert result.dead_letter_oldest == {}
    assert existing == {}


def test_prefix_custom_separator_and_truncated_scan() -> None:
    layout = RedisLayout.from_options({"global_keyprefix": "app:", "sep": ":", "priority_steps": [0, 9]})
    cfg = settings(layout, dlq_names=())
    # With a custom separator, "session:123" is not taken for a sub-queue of a queue named "session".
    index = index_keys(["_kombu.binding.jobs", "jobs", "jobs:4", "session:123"], layout)
    first = first_round(index, cfg, {})
    assert first == [("HLEN", "app:unacked"), ("SMEMBERS", "app:_kombu.binding.jobs")]
    plan = make_plan(index, [None, {b"jobs::jobs"}], cfg, (), {}, truncated=True)
    # A truncated scan may have missed sub-queues: every step 1..9 is asked for as well.
    assert [c for c in plan.commands if c[1].startswith("app:jobs")] == [
        ("LLEN", "app:jobs")] + [("LLEN", f"app:jobs:{i}") for i in range(1, 10)]
    assert [c[1] for c in plan.commands if not c[1].startswith("app:jobs")] == ["app:celery"] + [
        f"app:celery:{i}" for i in range(1, 10)]
    result, _ = redis_result(plan, [1, 0, 0, 2, 0, 0, 0, 0, 0, 0] + [0] * 10, "timestamp")
    assert result.queues["jobs"] == QueueDepth(0.0)
    assert result.queues["celery"] == QueueDepth(3.0)
    assert result.broker_unacked is None
