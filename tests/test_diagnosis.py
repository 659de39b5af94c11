"""The diagnosis without a broker: checks on evidence built from literal events and poll results, the
``celery_exporter_check_status`` collector on a private registry, the doctor's reports, the status page's
escaping and redaction, and the docs naming every check.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.collectors.checks import CheckCollector
from exporter.config import diagnosis_settings, load_config, state_settings
from exporter.diagnosis import CHECK_NAMES, Diagnoser, DiagnosisSettings, Result, Status, run_checks
from exporter.doctor import main as doctor_main
from exporter.doctor import report_json, report_text
from exporter.events.ingest import Ingest
from exporter.labels import OVERFLOW_LABEL
from exporter.state import ClusterState
from exporter.status import PollResult, QueueDepth, SourceView, StreamStatus
from exporter.statuspage import page_for
from tests._broker_helpers import samples
from tests._events import T0, heartbeat, received, redis_envelope, sent
from tests._support import ROOT, FakeClock

REDIS = DiagnosisSettings("redis", False, {"max_task_names": 2, "max_queues": 1000}, started=T0)


def cluster(events: list[dict[str, Any]], views: list[SourceView] | None = None,
            settings: DiagnosisSettings = REDIS, at: float = T0 + 10) -> tuple[Diagnoser, FakeClock]:
    clock = FakeClock(at)
    state = ClusterState(state_settings(max_task_names=2), clock)
    status = StreamStatus(clock)
    status.up()
    Ingest(state, clock).feed_redis([redis_envelope(e) for e in events])
    return Diagnoser(state.take_snapshot, lambda: views or [], status, settings), clock


def view(result: PollResult) -> SourceView:
    return SourceView("redis", True, 0.01, 0, result)


def by_name(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def test_a_quiet_broker_after_the_grace_is_a_problem_and_before_it_not_yet_known() -> None:
    early, _ = cluster([], at=T0 + 2)
    assert by_name(early.results())["worker_events"].status is Status.UNKNOWN
    late, _ = cluster([], [view(PollResult(queues={"celery": QueueDepth(7.0)},
                                           reasons={"celery": "--default-queue or --queues"}))])
    found = by_name(late.results())
    assert found["worker_events"].status is Status.PROBLEM
    assert "7 messages wait" in found["worker_events"].evidence[1]
    assert found["queue_keys"].status is Status.PROBLEM  # no kombu binding: another db or prefix


def test_clock_skew_is_per_worker_from_heartbeat_timestamps() -> None:
    diag, _ = cluster([heartbeat("ahead@h", T0 + 10 + 42.5), heartbeat("fine@h", T0 + 10.2)])
    found = by_name(diag.results())["clock_skew"]
    assert found.status is Status.PROBLEM
    assert found.evidence == ("ahead@h: +42.5s",)
    assert found.details["skew_seconds"] == {"ahead@h": 42.5, "fine@h": 0.2}


def test_received_without_sent_and_a_folded_task_name() -> None:
    events = [received(f"u{i}", f"proj.t{i}", T0 + i) for i in range(4)]
    found = by_name(cluster(events)[0].results())
    assert found["task_sent_events"].status is Status.PROBLEM
    assert "task_send_sent_event = True" in found["task_sent_events"].fix
    assert found["caps"].status is Status.PROBLEM
    assert found["caps"].details["folded"] == {"max_task_names": 2}
    assert "--max-task-names 2" in found["caps"].evidence[0]
    ok = by_name(cluster([sent("a", "proj.t", T0), received("a", "proj.t", T0 + 1)])[0].results())
    assert ok["task_sent_events"].status is Status.OK and ok["caps"].status is Status.OK


def test_poll_evidence_mismatch_unrouted_dead_letters_and_the_queue_cap() -> None:
    rabbit = replace(REDIS, broker_scheme="amqp", management_api=True)
    result = PollResult(queues={"work": QueueDepth(1.0), OVERFLOW_LABEL: QueueDepth(3.0)},
                        mismatched_options=("sep",), unrouted_dead_letters={"work": "dlx"})
    found = by_name(cluster([heartbeat("w@h", T0 + 10)], [view(result)], rabbit)[0].results())
    assert found["transport_options"].details == {"mismatched": ["sep"]}
    assert found["dead_letter_routes"].details == {"unrouted": {"work": "dlx"}}
    assert found["caps"].details["folded"] == {"max_queues": 0}
    assert found["management_api"].status is Status.OK
    blind = by_name(cluster([], [view(result)], replace(rabbit, management_api=False))[0].results())
    assert blind["management_api"].status is Status.PROBLEM
    assert blind["dead_letter_routes"].status is Status.UNKNOWN


def test_a_check_that_raises_is_not_yet_known_and_hides_no_other() -> None:
    diag, _ = cluster([])
    ev = diag.evidence()
    broken = replace(ev, events_by_type=None)  # type: ignore[arg-type]
    results = run_checks(broken)
    assert [r.check for r in results] == list(CHECK_NAMES)
    assert by_name(results)["worker_events"].status is Status.UNKNOWN
    assert by_name(results)["management_api"].status is Status.OK


def test_the_gauge_has_one_series_per_check() -> None:
    diag, _ = cluster([heartbeat("ahead@h", T0 + 100)])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CheckCollector(diag.results))
    got = {k: v for k, v in samples(registry).items() if k[0] == "celery_exporter_check_status"}
    assert {dict(k[1])["check"] for k in got} == set(CHECK_NAMES)
    assert got[("celery_exporter_check_status", (("check", "clock_skew"),))] == 2.0
    assert got[("celery_exporter_check_status", (("check", "events_missed"),))] in (-1.0, 0.0)


def test_reports_group_by_status_and_json_round_trips() -> None:
    diag, _ = cluster([heartbeat("ahead@h", T0 + 100)])
    ev, results = diag.check()
    text = report_text("redis://h:6379/0", ev, results)
    assert text.index("PROBLEM (") < text.index("OK (")
    assert "fix: Synchronise the clocks" in text and text.rstrip().endswith("(exit status 1).")
    doc = json.loads(json.dumps(report_json("redis://h:6379/0", ev, results)))
    assert doc["status"] == "problem" and doc["workers"][0]["name"] == "ahead@h"


def test_the_page_escapes_what_workers_send_and_shows_no_secret() -> None:
    hostile = "<script>alert(1)</script>@h"
    config = load_config(["--broker-url", "redis://:hunter2-pw@redis.internal:6379/0",
                          "--broker-transport-options", '{"sentinel_kwargs": {"password": "s3nt1nel"}}'],
                         environ={})
    diag, _ = cluster([heartbeat(hostile, T0 + 10)], settings=diagnosis_settings(config, T0))
    diag.status.down("auth failed for hunter2-pw")
    page = page_for(config, *diag.check())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;@h" in page
    assert "hunter2-pw" not in page and "s3nt1nel" not in page
    assert "redis.internal:6379/0" in page


def test_troubleshooting_explains_every_check() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert re.findall(r"^### `(\w+)`$", text, re.MULTILINE) == list(CHECK_NAMES)


def test_a_stream_that_keeps_reconnecting_is_a_warning() -> None:
    diag, _ = cluster([heartbeat("w@h", T0 + 10)])
    for _ in range(4):
        diag.status.down("connection reset")
        diag.status.up()
    found = by_name(diag.results())["event_stream"]
    assert found.status is Status.WARNING and "4 reconnect(s)" in found.evidence[0]
    diag.status.down("connection reset")
    assert by_name(diag.check(force=True)[1])["event_stream"].status is Status.PROBLEM


def test_doctor_configuration_errors_exit_2(capsys: Any) -> None:
    assert doctor_main(["--broker-url", "redis://h/0", "--max-series", "many"]) == 2
    assert doctor_main(["--duration", "0"]) == 2
    assert doctor_main(["--help"]) == 0
    assert "--duration" in capsys.readouterr().out


def test_clock_skew_takes_the_least_delayed_of_the_last_heartbeats() -> None:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
    ingest = Ingest(state, clock)
    ingest.feed_redis([redis_envelope(heartbeat("w@h", T0 + 0.05))])  # on time (50 ms in transit)
    clock.advance(2)
    ingest.feed_redis([redis_envelope(heartbeat("w@h", T0 - 28))])  # out of a 30 s backlog
    assert state.take_snapshot().workers["w@h"].clock_skew == pytest.approx(0.05)
    for _ in range(5):  # five heartbeats later the backlog sample is gone; a real 3 s skew shows
        clock.advance(2)
        ingest.feed_redis([redis_envelope(heartbeat("w@h", clock() + 3.0))])
    assert state.take_snapshot().workers["w@h"].clock_skew == 3.0


def test_a_clock_far_ahead_is_read_from_what_the_worker_wrote_not_the_clamped_time() -> None:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
    Ingest(state, clock).feed_redis([redis_envelope(heartbeat("w@h", T0 + 100.0))])
    worker = state.take_snapshot().workers["w@h"]
    assert worker.heartbeat_ts == T0  # applied with its arrival time (the clamp)
    assert worker.clock_skew == 100.0
