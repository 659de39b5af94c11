"""Pure rules shared by the pollers: timestamps of DLQ entries, naming rules, the queue cap, redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from exporter.brokers.model import (
    PollResult,
    QueueDepth,
    Rules,
    cap_queues,
    entry_timestamp,
    exact_names,
    parse_timestamp,
)
from exporter.config import Config

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01T12:00:00+00:00", T0),  # seed 002: datetime.now(timezone.utc).isoformat()
        ("2024-03-01T12:00:00", T0),  # seed 001: datetime.utcnow().isoformat(), naive means UTC
        ("2024-03-01T12:00:00Z", T0),
        ("2024-03-01T14:00:00+02:00", T0),
        (T0, T0),
        (int(T0), T0),
        (str(T0), T0),
        (T0 * 1000, T0),  # epoch milliseconds
        ("1709294400000", T0),
        ("not a time", None),
        ("", None),
        (True, None),
        (None, None),
        (-5, None),
        (float("nan"), None),
        ({"nested": 1}, None),
    ],
)
def test_parse_timestamp(value: object, expected: float | None) -> None:
    assert parse_timestamp(value) == expected


def test_entry_timestamp_reads_the_configured_field_of_a_json_entry() -> None:
    entry = json.dumps({"task_name": "t", "timestamp": "2024-03-01T12:00:00+00:00"}).encode()
    assert entry_timestamp(entry, "timestamp") == T0
    assert entry_timestamp(entry, "failed_at") is None
    assert entry_timestamp(json.dumps({"meta": {"at": T0}}), "meta.at") == T0
    assert entry_timestamp(b"\x80not json", "timestamp") is None
    assert entry_timestamp(b"[1, 2]", "timestamp") is None
    assert entry_timestamp(None, "timestamp") is None


def test_rules_exclude_celery_internals_and_configured_globs() -> None:
    rules = Rules(exclude_globs=("scratch.*", "celeryev.celery-exporter*"), internal_names=frozenset({"unacked"}))
    for name in ("celeryev.5f0c", "celery@web-1.celery.pidbox", "9a1b.reply.celery.pidbox", "amq.gen-Xy1",
                 "_kombu.binding.celery", "unacked", "scratch.tmp", "celeryev.celery-exporter.12.ab", ""):
        assert rules.excluded(name), name
    for name in ("celery", "default", "dlq", "dlq:app.tasks.pay", "retry_2s", "unacked_other"):
        assert not rules.excluded(name), name


def test_config_globs_classify_retry_before_dead_letter() -> None:
    rules = Rules(retry_globs=("retry_*", "both"), dlq_globs=(*Config("x").dead_letter_queues, "both"))
    assert rules.configured_kind("retry_2s") == "retry"
    assert rules.configured_kind("both") == "retry"
    for name in ("dlq", "dlq:app.tasks.pay", "celery:dead_letter_queue", "orders.dlq", "dead_letters",
                 "dead_letter"):
        assert rules.configured_kind(name) == "dlq", name
    assert rules.configured_kind("default") is None
    assert exact_names(("dlq:*", "dlq", "*.dlq", "dead_letter*", "celery:dead_letter_queue")) == [
        "dlq", "celery:dead_letter_queue"]


def test_cap_keeps_pinned_names_and_folds_the_rest_into_overflow() -> None:
    result = PollResult(
        queues={"a": QueueDepth(1, 1, 1), "default": QueueDepth(10, None, 2), "b": QueueDepth(2, 3, None),
                "c": QueueDepth(4)},
        retry={"r1": 5.0, "r2": 6.0},
        dead_letter={"d1": 7.0, "d2": 8.0},
        dead_letter_oldest={"d1": 100.0, "d2": 50.0},
        broker_unacked=3.0,
    )
    capped = cap_queues(result, 3, pinned=("default", "missing"))
    # kept: default (pinned), then a and b by name; the rest fold.
    assert capped.queues == {"default": QueueDepth(10, None, 2), "a": QueueDepth(1, 1, 1),
                             "b": QueueDepth(2, 3, None), "__overflow__": QueueDepth(4, None, None)}
    assert capped.retry == {"__overflow__": 11.0}
    assert capped.dead_letter == {"__overflow__": 15.0}
    assert capped.dead_letter_oldest == {"__overflow__": 50.0}
    assert capped.broker_unacked == 3.0
    assert cap_queues(result, 8) is result
