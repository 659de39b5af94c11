"""The alerting and recording rules in alerts/: promtool accepts them and their unit tests pass, every alert
carries the metadata on-call needs, its runbook anchor exists, its promtool tests cover "not yet firing",
"firing" and "healthy", and every metric any rule reads is one the exporter exports.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._prom_helpers import (
    ALERTING_DOC,
    PROMTOOL,
    RULE_TESTS_DIR,
    RULES_FILE,
    RUNBOOK_BASE,
    RUNBOOKS,
    alert_rules,
    dashboard_exprs,
    exported_names,
    github_anchors,
    iter_rules,
    known_names,
    load_dashboards,
    load_rules,
    parse_duration,
    promql_metric_names,
    recorded_names,
)

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; CI installs it)"
)
ALERTS = alert_rules()
ALERT_IDS = [a["alert"] for a in ALERTS]
TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


# ------------------------------------------------------------------------------------------ promtool
@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool test files in alerts/tests/"
    result = _promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("name", ALERT_IDS)
def test_not_yet_firing_cases_bite(name: str, tmp_path: Path) -> None:
    """Without its `for`, an alert fires early, so its promtool "not yet firing" case must fail."""
    rules = load_rules()
    for rule in iter_rules(rules):
        if rule.get("alert") == name:
            del rule["for"]
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / RULES_FILE.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / "alerts" / "tests").mkdir()
    files = [p for p in TEST_FILES if f"alertname: {name}\n" in p.read_text()]
    assert files, f"no promtool test mentions {name}"
    for path in files:
        (tmp_path / "alerts" / "tests" / path.name).write_text(path.read_text())
    result = _promtool("test", "rules", *(f"alerts/tests/{p.name}" for p in files), cwd=tmp_path)
    assert result.returncode != 0, f"dropping the `for` of {name} left every promtool test passing"
    assert f"alertname: {name}" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ coverage
def _alert_cases() -> dict[str, list[list[tuple[float, bool]]]]:
    """For each alert name, per test group: (eval_time seconds, firing expected) of its alert tests."""
    cases: dict[str, list[list[tuple[float, bool]]]] = {}
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["tests"]:
            per_alert: dict[str, list[tuple[float, bool]]] = {}
            for case in group.get("alert_rule_test", []):
                per_alert.setdefault(case["alertname"], []).append(
                    (parse_duration(case["eval_time"]), bool(case.get("exp_alerts")))
                )
            for alertname, evals in per_alert.items():
                cases.setdefault(alertname, []).append(evals)
    return cases


CASES = _alert_cases()


def test_promtool_tests_only_name_existing_alerts() -> None:
    assert set(CASES) <= set(ALERT_IDS), set(CASES) - set(ALERT_IDS)


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_every_alert_has_not_yet_firing_and_healthy_cases(alert: dict[str, Any]) -> None:
    name, hold = alert["alert"], parse_duration(alert["for"])
    groups = CASES.get(name, [])
    # Firing, preceded in the same scenario by a silent evaluation (the "not yet firing" case).
    assert any(
        any(fire for _, fire in evals)
        and min(t for t, fire in evals if fire) > min((t for t, fire in evals if not fire), default=1e18)
        for evals in groups
    ), f"{name}: no test group with a 'not yet firing' case before a 'firing' case"
    # A scenario in which it never fires although `for` has long elapsed: healthy input stays silent.
    assert any(
        not any(fire for _, fire in evals) and max(t for t, _ in evals) > hold for evals in groups
    ), f"{name}: no healthy test group evaluated after its `for` ({alert['for']}) that stays silent"


# ------------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_alert_metadata(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"Celery[A-Z][A-Za-z]+", name), f"{name} is not CamelCase Celery*"
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = alert["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name} lacks annotation {key}"
    expr = alert["expr"].strip()
    # absent() has no labels to show; a `== 0` condition has no value worth showing (it is always 0).
    if not expr.startswith("absent("):
        assert "$labels" in annotations["description"], f"{name}: description shows no $labels"
    if not (expr.startswith("absent(") or expr.endswith("== 0")):
        assert "$value" in annotations["description"], f"{name}: description does not show $value"
    parse_duration(alert["for"])


def test_alert_names_unique() -> None:
    assert len(ALERT_IDS) == len(set(ALERT_IDS))


def test_only_dead_letter_growth_and_total_outages_page() -> None:
    critical = {a["alert"] for a in ALERTS if a["labels"]["severity"] == "critical"}
    assert "CeleryDeadLetterQueueGrowing" in critical
    assert critical <= {"CeleryDeadLetterQueueGrowing", "CeleryNoWorkersOnline", "CeleryQueueNoConsumers"}


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_runbook_anchor_exists(alert: dict[str, Any]) -> None:
    url = alert["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_BASE), url
    anchor = url[len(RUNBOOK_BASE):]
    assert anchor == alert["alert"].lower(), f"{alert['alert']}: anchor {anchor!r} is not the alert name"
    assert anchor in github_anchors(RUNBOOKS.read_text(encoding="utf-8")), f"no section #{anchor}"


def _alerting_table() -> dict[str, dict[str, str]]:
    """The alert table of docs/alerting.md: alert name -> {column header: cell}."""
    header: list[str] | None = None
    table: dict[str, dict[str, str]] = {}
    for line in ALERTING_DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif header[0] == "Alert" and not set(cells[0]) <= {"-", ":"}:
            table[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return table


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_alerting_doc_table_matches_rule(alert: dict[str, Any]) -> None:
    """docs/alerting.md lists each alert with the severity and `for` the rule file really has."""
    row = _alerting_table().get(alert["alert"])
    assert row, f"{alert['alert']} missing from the table in docs/alerting.md"
    assert row["Severity"] == alert["labels"]["severity"], row
    assert row["for"] == alert["for"], row


def test_alerting_doc_table_has_no_stale_rows() -> None:
    assert set(_alerting_table()) == set(ALERT_IDS)


# ------------------------------------------------------------------------------------------ names
def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:celery_[a-z_]+:[a-z0-9_]+", name), name


@pytest.mark.parametrize("rule", list(iter_rules()), ids=lambda r: r.get("alert") or r["record"])
def test_rule_reads_only_exported_metrics(rule: dict[str, Any]) -> None:
    names = promql_metric_names(rule["expr"])
    assert names, f"no metric found in {rule['expr']!r}"
    unknown = names - known_names()
    assert not unknown, f"{rule.get('alert') or rule['record']} reads unknown metrics {sorted(unknown)}"


def test_every_recording_rule_is_used() -> None:
    """A recording rule nothing reads costs evaluation for nothing (dashboards count as readers)."""
    read: set[str] = set()
    for rule in iter_rules():
        read |= promql_metric_names(rule["expr"])
    for dashboard in load_dashboards().values():
        for _, expr in dashboard_exprs(dashboard):
            read |= promql_metric_names(expr)
    assert recorded_names() <= read, sorted(recorded_names() - read)


def test_exported_names_come_from_the_specs() -> None:
    names = exported_names()
    assert "celery_dead_letter_queue_length" in names
    assert "celery_task_duration_seconds_bucket" in names
    assert "celery_task_failed_total" in names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum without (exception) (rate(celery_task_failed_total{queue=~"a|b"}[5m]))', {"celery_task_failed_total"}),
        ('a:b:c > 0 and on (job) (x offset 5m) unless ignoring(le) y[1h:5m]', {"a:b:c", "x", "y"}),
        ('histogram_quantile(0.95, sum by (le) (rate(h_bucket{q="by(x) and z"}[$__rate_interval])))', {"h_bucket"}),
        ('label_replace(up{job=~"$job"}, "dst", "$1", "src", "(.*)") == bool 1e3', {"up"}),
        ("absent(up{job=~\".*celery.*\"}) or vector(0) > Inf", {"up"}),
        ("time() - celery_worker_last_heartbeat_timestamp_seconds @ end()", {"celery_worker_last_heartbeat_timestamp_seconds"}),
    ],
)
def test_promql_tokeniser(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def test_tokeniser_catches_a_misspelt_metric() -> None:
    assert promql_metric_names("rate(celery_task_suceeded_total[5m])") - known_names() == {
        "celery_task_suceeded_total"
    }
