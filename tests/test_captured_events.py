"""Replay events captured from real Celery 5 workers (tests/testdata/events/README.md) through the
decoders and the state, and check the exact counts the capture documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.state import EXHAUSTED, RECEIVED, SENT, STARTED, SUCCEEDED, ClusterState

DATA = Path(__file__).parent / "testdata" / "events"
EXPECTED_TYPES = {"task-sent": 23, "task-received": 23, "task-started": 23, "task-succeeded": 10,
                  "task-failed": 5, "task-retried": 8, "worker-online": 1, "worker-heartbeat": 2,
                  "worker-offline": 1}


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def replay(name: str) -> ClusterState:
    state = ClusterState(state_settings(default_queue="fallback"), clock=lambda: 1.9e9)
    ingest = Ingest(state, clock=lambda: 1.9e9)
    if name.startswith("amqp"):
        ingest.feed_amqp([(m["body"].encode(), m["content_type"], m["content_encoding"]) for m in lines(name)])
    else:
        ingest.feed_redis([m["payload"] for m in lines(name)])
    return state


@pytest.mark.parametrize("name", ["redis_payloads.jsonl", "redis_prefixed_payloads.jsonl", "amqp_messages.jsonl"])
def test_captured_streams_give_exact_counts(name: str) -> None:
    s = replay(name)
    assert s.invalid_by_reason == {}
    assert s.events_by_type == EXPECTED_TYPES
    c = {k[0]: v for k, v in s.counters.items()}
    assert set(k[1] for k in s.counters) == {"capture"}  # queue from the task-sent events, never the fallback
    assert c["capture.add"][SENT] == 8 and c["capture.add"][SUCCEEDED] == 8
    assert c["capture.flaky"][SENT] == 6 and c["capture.flaky"][SUCCEEDED] == 2
    assert c["capture.exhaust"][STARTED] == 6 and c["capture.exhaust"][EXHAUSTED] == 2
    assert c["capture.fail"][RECEIVED] == 3 and c["capture.fail"][EXHAUSTED] == 0
    assert s.failed[("capture.fail", "capture", "ValueError")] == 3
    assert s.failed[("capture.exhaust", "capture", "ValueError")] == 2
    assert s.retried[("capture.flaky", "capture", "ValueError")] == 4
    assert s.retried[("capture.exhaust", "capture", "ValueError")] == 4
    assert sum(sum(h.counts) for h in s.queue_wait.values()) == 23
    assert sum(s.active.values()) == 0
    assert s.sizes().tasks == ()  # every task finished and left the table
    (worker,) = s.workers.values()
    assert not worker.online and worker.version == "5.7.0"
