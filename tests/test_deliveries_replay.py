"""Replay the events real prefork workers sent for every ending of issue 12 (tests/testdata/events/
deliveries_*.jsonl, captured by tools/capture_deliveries.py) through the decoders and the state, with
the clock advanced past --worker-timeout at the end, and check the ground truth of the plan
(tests/_deliveries_driver.py): exact counts per task name, no "unknown", nothing active, the SIGKILLed
worker's task and the Ignored task lost."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from exporter.events.ingest import Ingest
from exporter.state import RECEIVED, REJECTED, SENT, STARTED, SUCCEEDED, ClusterState, StateSettings
from tests._deliveries_driver import expected

DATA = Path(__file__).parent / "testdata" / "events"
INDEX = {"sent": SENT, "received": RECEIVED, "started": STARTED, "succeeded": SUCCEEDED, "rejected": REJECTED}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(name: str) -> ClusterState:
    lines = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    clock = Clock()
    # The routes, as docs/troubleshooting.md advises: a task-received can overtake its task-sent.
    routes = (("deliveries.victim", "deliveries-victim"), ("deliveries.*", "deliveries"))
    state = ClusterState(StateSettings(default_queue="fallback", worker_timeout=5.0, task_routes=routes), clock)
    ingest = Ingest(state, clock)
    for m in lines:
        body = m["body"] if "body" in m else base64.b64decode(json.loads(m["payload"])["body"])
        events = json.loads(body)
        # The exporter's clock follows the stream, as it did live: heartbeats and time-outs line up.
        clock.now = max(e["timestamp"] for e in (events if isinstance(events, list) else [events]))
        if "body" in m:
            ingest.feed_amqp([(m["body"].encode(), m["content_type"], m["content_encoding"])])
        else:
            ingest.feed_redis([m["payload"]])
    clock.now += 3600  # long after: the victim worker is silent past --worker-timeout
    state.tick()
    return state


def observed(state: ClusterState, task: str) -> dict[str, float]:
    (key,) = [k for k in state.counters if k[0] == task]
    out: dict[str, float] = {name: state.counters[key][i] for name, i in INDEX.items()}
    out.update({f"failed:{k[2]}": v for k, v in state.failed.items() if k[:2] == key and k[2]})
    out.update({f"retried:{k[2]}": v for k, v in state.retried.items() if k[:2] == key and k[2]})
    out.update({f"revoked:{k[2]}": v for k, v in state.revoked.items() if k[:2] == key})
    out.update({f"duration:{('succeeded', 'failed', 'retried')[k[2]]}": sum(h.counts)
                for k, h in state.durations.items() if k[:2] == key})
    out["active"] = state.active[key]
    out["lost"] = state.lost[key]
    return out


@pytest.mark.parametrize("name", ["deliveries_redis.jsonl", "deliveries_amqp.jsonl"])
def test_every_delivery_counted_under_its_own_name(name: str) -> None:
    if not (DATA / name).exists():
        pytest.fail(f"{name} missing: python -m tools.capture_deliveries")
    state = replay(name)
    assert state.invalid_by_reason == {}
    assert state.unnamed_tasks == 0 and not any(k[0] == "unknown" for k in state.counters)
    for task, truth in expected(rabbitmq=name.startswith("deliveries_amqp")).items():
        seen = observed(state, task)
        assert {k: seen.get(k, 0) for k in truth} == truth, task
    assert sum(state.active.values()) == 0
    assert state.ignored["duplicate"] == 1  # the hard time limit's second task-failed
