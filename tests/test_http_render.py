"""A poisoned value in the state never blanks /metrics: the family it lands in is left out and counted in
celery_exporter_render_errors_total, every other family is served unchanged, over a real socket, and
the page parses with client_python's parsers and passes ``promtool check metrics``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collectors.render import RenderErrorsCollector
from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.exposition import RENDER_ERRORS, TableFamily, render
from exporter.http import Health, MetricsServer
from exporter.state import ClusterState, Histogram, Snapshot
from exporter.status import StreamStatus
from tests._events import T0, failed, heartbeat, received, redis_envelope, sent, started, succeeded
from tests._support import FakeClock

PROMTOOL = shutil.which("promtool")
OM_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def fed_state() -> tuple[ClusterState, StreamStatus]:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
    status = StreamStatus(clock)
    Ingest(state, clock).feed_redis([redis_envelope([
        heartbeat("celery@w1", T0),
        sent("u1", "proj.add", T0, queue="default"), received("u1", "proj.add", T0 + 0.1),
        started("u1", T0 + 0.2), succeeded("u1", T0 + 0.5, 0.3),
        sent("u2", "proj.pay", T0, queue="payments"), received("u2", "proj.pay", T0 + 0.1),
        started("u2", T0 + 0.2), failed("u2", T0 + 0.4),
        sent("u3", "proj.add", T0 + 1, queue="default"), received("u3", "proj.add", T0 + 1.1),
        started("u3", T0 + 1.2),
    ])])
    return state, status


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], Snapshot], StreamStatus], MetricsServer]]:
    servers: list[MetricsServer] = []

    def start(snapshot: Callable[[], Snapshot], status: StreamStatus) -> MetricsServer:
        registry = CollectorRegistry(auto_describe=False)
        for collector in (TaskCollector(snapshot), WorkerCollector(snapshot), StreamCollector(snapshot, status),
                          RenderErrorsCollector()):
            registry.register(collector)
        srv = MetricsServer("127.0.0.1", 0, registry, Health(lambda: (True, "ok"), lambda: (True, "ok")))
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def scrape(srv: MetricsServer, accept: str = "") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def families(text: str, openmetrics: bool = False) -> dict[str, set[Any]]:
    parsed = parse_openmetrics(text) if openmetrics else parse_text(text)
    return {f.name: {(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples} for f in parsed}


def promtool_ok(text: str) -> None:
    if PROMTOOL is None:
        pytest.fail("promtool is required (Debian package prometheus); scripts/test.sh installs it")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def render_errors(text: str) -> dict[str, float]:
    fams = families(text)
    return {dict(labels)["family"]: value
            for _, labels, value in fams.get("celery_exporter_render_errors", set())}


def poisoned(state: ClusterState) -> Callable[[], Snapshot]:
    """The state's own snapshot with the kinds of values that must not get past the decoder, placed
    where an event would put them: a lone surrogate in a task name (what the stdlib JSON fallback
    accepts for "\\ud800"), a wrong-typed gauge value, and a histogram row of the wrong shape."""

    def take() -> Snapshot:
        snap = state.take_snapshot()
        counts = next(iter(snap.counters.values()))
        counters = {**snap.counters, ("proj.\ud800", "default"): list(counts)}
        active = {**snap.active, ("proj.pay", "payments"): "three"}  # type: ignore[dict-item]
        wait = {**snap.queue_wait}
        key, hist = next(iter(wait.items()))
        bad = Histogram(len(hist.counts) + 1)  # more buckets than the family has bounds
        bad.counts, bad.total = [*hist.counts, 1, 2], hist.total
        wait[key] = bad
        return dataclasses.replace(snap, counters=counters, active=active, queue_wait=wait)

    return take


# Every family built from the poisoned tables (the task counters share one table), and no other.
POISONED_FAMILIES = {"celery_task_sent", "celery_task_received", "celery_task_started", "celery_task_succeeded",
                     "celery_task_rejected", "celery_task_revoked", "celery_task_retries_exhausted",
                     "celery_tasks_active", "celery_task_queue_wait_seconds"}


@pytest.mark.parametrize("accept", ["", OM_ACCEPT])
def test_a_poisoned_family_is_left_out_and_everything_else_served(serve: Any, accept: str) -> None:
    state, status = fed_state()
    clean_srv = serve(state.take_snapshot, status)
    code, _, clean = scrape(clean_srv, accept)
    assert code == 200
    before = dict(RENDER_ERRORS.snapshot())

    srv = serve(poisoned(state), status)
    code, ctype, text = scrape(srv, accept)
    assert code == 200, text
    om = ctype.startswith("application/openmetrics-text")
    assert om == bool(accept)
    got, want = families(text, om), families(clean, om)
    left_out = {name for name in want if name not in got}
    # Only families holding a poisoned row are missing; the rest are identical to the clean scrape.
    assert left_out == POISONED_FAMILIES
    assert "celery_task_failed" in got and "celery_worker_up" in got and "celery_task_duration_seconds" in got
    for name in want.keys() - left_out - {"celery_exporter_render_errors"}:
        assert got[name] == want[name], name
    # Counted per family, bounded label values (family names from the code, not from events).
    errors = render_errors(text) if not om else {
        dict(labels)["family"]: v for _, labels, v in got["celery_exporter_render_errors"]}
    for name in left_out:
        assert errors.get(name, 0) >= before.get(name, 0) + 1, name
    if om:
        assert text.endswith("# EOF\n")
    else:
        promtool_ok(text)


def test_the_error_count_grows_once_per_failing_scrape(serve: Any) -> None:
    state, status = fed_state()
    srv = serve(poisoned(state), status)
    first = render_errors(scrape(srv)[2])
    second = render_errors(scrape(srv)[2])
    assert second["celery_tasks_active"] == first["celery_tasks_active"] + 1


def test_a_poison_event_through_ingest_never_costs_the_scrape(serve: Any) -> None:
    # The JSON text a publisher sends: "\ud800" is a lone surrogate escape. orjson refuses it; the stdlib
    # decoder accepts it. Whatever the decoder does with it (sanitises it, or lets it into the state),
    # /metrics answers 200, parses, passes promtool, and every family is either served or counted.
    state, status = fed_state()
    srv = serve(state.take_snapshot, status)
    clean = families(scrape(srv)[2])
    raw = json.dumps([sent("u9", "proj.\ud800", T0 + 2, queue="q\ud800"), received("u9", "proj.\ud800", T0 + 2),
                      heartbeat("celery@\ud800", T0 + 2)])
    Ingest(state, FakeClock(T0 + 2)).feed_redis([redis_envelope(json.loads(raw))])
    for accept in ("", OM_ACCEPT):
        code, ctype, text = scrape(srv, accept)
        assert code == 200
        fams = families(text, ctype.startswith("application/openmetrics-text"))
        assert "celery_exporter_build_info" in fams and "celery_exporter_events" in fams
        errors = {dict(labels)["family"] for _, labels, _ in fams["celery_exporter_render_errors"]}
        assert {name for name in clean if name not in fams} <= errors
    promtool_ok(scrape(srv)[2])


class _Families:
    def __init__(self, *families: TableFamily) -> None:
        self.families = families

    def collect(self) -> Iterator[TableFamily]:
        return iter(self.families)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=40), number=st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=3)))
def test_any_label_value_or_number_costs_at_most_its_own_family(value: str, number: Any) -> None:
    poisoned_fam = TableFamily("celery_poisoned", "A family fed arbitrary input.", "gauge", ("label",))
    poisoned_fam.add((value,), number)
    clean = TableFamily("celery_clean", "A family fed nothing odd.", "counter", ("queue",))
    clean.add(("default",), 3)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(poisoned_fam, clean))  # type: ignore[arg-type]
    before = RENDER_ERRORS.snapshot().get("celery_poisoned", 0)
    for openmetrics in (False, True):
        text = render(registry, openmetrics=openmetrics).decode("utf-8")  # always valid UTF-8
        fams = families(text, openmetrics)
        assert fams["celery_clean"] == {("celery_clean_total", (("queue", "default"),), 3.0)}
        if "celery_poisoned" in fams:
            ((_, labels, _),) = fams["celery_poisoned"]
            assert labels == (("label", value),)
        else:
            assert RENDER_ERRORS.snapshot()["celery_poisoned"] > before
