"""The benchmark's synthetic Celery traffic (benchmarks/_flood.py) has the shape of the captured events,
and the exporter applies every event of it: a flood that the decoder refused or miscounted would make
the benchmark measure nothing."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

from benchmarks import _flood as flood
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.state import SUCCEEDED, ClusterState


def _workload(**kw: object) -> tuple[flood.Workload, list[flood.Message]]:
    w = flood.Workload(tasks=400, task_names=7, workers=5, t0=time.time() - 60, **kw)  # type: ignore[arg-type]
    return w, list(flood.simulate(w))


def test_events_have_the_captured_keys_in_the_captured_order() -> None:
    templates = flood.load_templates()
    _, msgs = _workload(rate=100.0)  # 4 simulated seconds: heartbeats every 2 s
    seen = set()
    for msg in msgs:
        body = json.loads(msg.body)
        for ev in body if isinstance(body, list) else [body]:
            assert list(ev) == list(templates[ev["type"]]), ev["type"]
            seen.add(ev["type"])
        if msg.routing_key == "task.multi":
            assert isinstance(body, list) and 1 <= len(body) <= flood.BUFFER_LIMIT
        else:
            assert msg.routing_key == body["type"].replace("-", ".")
    assert seen >= {"task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
                    "task-retried", "worker-online", "worker-heartbeat"}


def test_redis_envelope_matches_kombu_byte_layout() -> None:
    captured = json.loads((flood.TESTDATA / "redis_payloads.jsonl").read_text().splitlines()[0])["payload"]
    _, msgs = _workload()
    import random

    env = json.loads(flood.redis_envelope(msgs[0], random.Random(1)))
    assert list(env) == list(json.loads(captured))
    assert list(env["properties"]) == list(json.loads(captured)["properties"])
    assert json.loads(base64.b64decode(env["body"])) == json.loads(msgs[0].body)


def test_every_flood_event_is_applied_and_counted() -> None:
    w, msgs = _workload(worker_lifetime=0.01, lost=0.1)
    state = ClusterState(state_settings())
    ingest = Ingest(state)
    payloads = [cmd.split(b"\r\n")[6] for cmd in flood.encode_redis(msgs, db=3)]  # the PUBLISH payload
    assert ingest.feed_redis(payloads) == sum(m.n_events for m in msgs)
    assert state.invalid_by_reason == {}
    assert Counter(state.events_by_type) == w.by_type
    succeeded = sum(c[SUCCEEDED] for c in state.counters.values())
    assert succeeded == w.by_type["task-succeeded"]
    assert sum(state.failed.values()) == w.by_type["task-failed"]


def test_publish_commands_are_valid_resp() -> None:
    import hiredis

    _, msgs = _workload()
    reader = hiredis.Reader()
    reader.feed(b"".join(flood.encode_redis(msgs[:20], db=12)))
    for msg in msgs[:20]:
        cmd = reader.gets()
        assert cmd[0] == b"PUBLISH" and cmd[1] == f"/12.celeryev/{msg.routing_key}".encode()
    assert reader.gets() is False


def test_sources_keep_one_lane() -> None:
    _, msgs = _workload()
    lanes = flood.split_by_source(msgs, 3)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(msgs)))
    owner = {msgs[i].source: n for n, lane in enumerate(lanes) for i in lane}
    for n, lane in enumerate(lanes):
        assert all(owner[msgs[i].source] == n for i in lane)
