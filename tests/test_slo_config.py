"""The SLO and schedule config (exporter.mixin.slo) and the ``generate`` command: a bad SLO is refused with
a message naming the SLO and the field, every generated file passes ``promtool check rules``, the SLO and
schedule examples pass their promtool tests, the shipped config declares none (so nothing changes for a
user who declares none), and ``celery-exporter generate`` works from a pip-installed package, outside the
repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.mixin.cli import main as generate
from exporter.mixin.config import MixinError, data_text
from exporter.mixin.rules import render_rules
from exporter.mixin.slo_rules import glob_regex
from tests._prom_helpers import PROMTOOL, ROOT, alert_rules, load_rules
from tests.test_readme_commands import clean_env, copy_checkout
from tools import rules

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
EXAMPLES = ROOT / "alerts" / "examples"
GOOD = [
    {"name": "payments-succeed", "kind": "success", "task_name": "payments.*", "objective": 99.5, "period": "30d"},
    {"name": "default-starts-fast", "kind": "queue_latency", "queue": "default", "threshold_seconds": 30,
     "objective": 99},
    {"name": "report-runs-fast", "kind": "run_time", "task_name": "reports.*", "threshold_seconds": 60,
     "objective": 95, "period": "7d", "min_events": 5},
    {"name": "everything", "kind": "success", "objective": 90},
]


def _render(**overrides: Any) -> str:
    return render_rules({**rules.load_config(), **overrides})


# ------------------------------------------------------------------------------------------ refusals
BAD = [
    ({"name": "a", "kind": "latency", "objective": 99}, "SLO 'a': kind: 'latency' is not one of"),
    ({"name": "a", "kind": "success", "objective": 100}, "SLO 'a': objective: expected a percentage"),
    ({"name": "a", "kind": "success", "objective": 0}, "SLO 'a': objective"),
    ({"name": "a", "kind": "success", "objective": -5}, "SLO 'a': objective"),
    ({"name": "a", "kind": "success", "objective": "99.9%"}, "SLO 'a': objective"),
    ({"name": "a", "kind": "success"}, "SLO 'a': objective: required"),
    ({"name": "a", "kind": "queue_latency", "queue": "q", "threshold_seconds": 45, "objective": 99},
     "SLO 'a': threshold_seconds: 45 is not a bucket bound of celery_task_queue_wait_seconds (0.005, 0.01, "
     "0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600); pick one, or add it to the exporter's "
     "--queue-wait-buckets and to this config's queue_wait_buckets"),
    ({"name": "a", "kind": "run_time", "task_name": "t", "threshold_seconds": 45, "objective": 99},
     "--duration-buckets"),
    ({"name": "a", "kind": "run_time", "task_name": "t", "objective": 99}, "SLO 'a': threshold_seconds: required"),
    ({"name": "a", "kind": "queue_latency", "threshold_seconds": 30, "objective": 99}, "SLO 'a': queue: required"),
    ({"name": "a", "kind": "success", "objective": 99, "threshold_seconds": 30}, "SLO 'a': threshold_seconds: not a field"),
    ({"name": "a", "kind": "success", "objective": 99, "taskname": "x"}, "SLO 'a': taskname: not a field"),
    ({"name": "a", "kind": "success", "objective": 99, "period": "a month"}, "SLO 'a': period: expected a duration"),
    ({"name": "a", "kind": "success", "objective": 99, "task_name": ""}, "SLO 'a': task_name"),
    ({"name": "a", "kind": "success", "objective": 99, "queue": 'de"fault'}, "SLO 'a': queue: expected a name"),
    ({"name": "a b", "kind": "success", "objective": 99}, "slos[0]: name"),
    ({"kind": "success", "objective": 99}, "slos[0]: name"),
]


@pytest.mark.parametrize(("slo", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_slo_is_refused_naming_the_slo_and_the_field(slo: dict[str, Any], message: str) -> None:
    with pytest.raises(MixinError) as err:
        _render(slos=[slo])
    assert message in str(err.value)


def test_a_duplicate_name_is_refused() -> None:
    with pytest.raises(MixinError, match="SLO 'payments-succeed': name: declared twice"):
        _render(slos=[GOOD[0], {**GOOD[1], "name": "payments-succeed"}])


def test_a_threshold_on_custom_buckets_is_a_bound_once_the_config_names_them() -> None:
    slo = {"name": "a", "kind": "queue_latency", "queue": "q", "threshold_seconds": 45, "objective": 99}
    assert 'le="45.0"' in _render(slos=[slo], queue_wait_buckets=[15, 45, 120])
    with pytest.raises(MixinError, match="queue_wait_buckets: expected a list"):
        _render(slos=[slo], queue_wait_buckets="15,45")


@pytest.mark.parametrize(("schedules", "message"), [
    ([{"task_name": "a", "grace": "5m"}], "schedule 'a': every: expected a duration"),
    ([{"task_name": "a", "every": "1h", "when": "noon"}], "schedule 'a': when: not a field"),
    ([{"task_name": "a", "every": "1h"}, {"task_name": "a", "every": "2h"}], "schedule 'a': task_name: declared twice"),
    ([{"every": "1h"}], "schedules[0]: task_name: required"),
    ({"task_name": "a"}, "schedules: expected a list"),
])
def test_a_bad_schedule_is_refused_naming_it(schedules: Any, message: str) -> None:
    with pytest.raises(MixinError, match=re.escape(message)):
        _render(schedules=schedules)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"slos": "payments"}, "slos: expected a list"),
    ({"slos": ["payments"]}, "slos[0]: expected a mapping"),
    ({"slo_alerts": []}, "slo_alerts: expected a list"),
    ({"slo_alerts": [{"severity": "page", "long": "1h", "short": "5m", "burn_rate": 14.4, "for": "2m"}]},
     "slo_alerts[0]: severity"),
    ({"slo_alerts": [{"severity": "critical", "long": "5m", "short": "1h", "burn_rate": 14.4, "for": "2m"}]},
     "slo_alerts[0]: short: 1h must be shorter than long (5m)"),
    ({"slo_alerts": [{"severity": "critical", "long": "1h", "short": "5m", "burn_rate": 0, "for": "2m"}]},
     "slo_alerts[0]: burn_rate"),
    ({"slo_min_events": -1}, "SLO 'payments-succeed': min_events"),
    ({"schedule_for": "soon", "schedules": []}, "schedule_for: value: expected a duration"),
])
def test_bad_slo_settings_are_refused_naming_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(MixinError, match=re.escape(message)):
        _render(**{"slos": [GOOD[0]], **overrides})


def test_an_override_that_is_not_yaml_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("slos: [\n")
    assert generate(["rules", "--config", str(config)]) == 2
    assert "mine.yaml: not valid YAML" in capsys.readouterr().err


def test_the_command_exits_2_with_one_line_naming_the_slo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"slos": [{"name": "x", "kind": "success", "objective": 100}]}))
    assert generate(["rules", "--config", str(config), "--output", str(tmp_path / "out.yml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("celery-exporter generate: error: SLO 'x': objective:") and err.count("\n") == 1
    assert not (tmp_path / "out.yml").exists()
    config.write_text("slo: []\n")
    assert generate(["rules", "--config", str(config)]) == 2
    assert "unknown key(s) slo" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ rendering
def test_globs_become_anchored_re2_regexes() -> None:
    assert glob_regex("payments.*") == r"payments\..*"
    assert glob_regex("a?b[1]") == r"a.b\[1\]"
    assert 'task_name=~"payments\\\\..*"' in _render(slos=[GOOD[0]])
    assert 'queue="default"' in _render(slos=[GOOD[1]])


def test_the_shipped_config_declares_no_slo_and_the_package_carries_the_repositorys_files() -> None:
    config = rules.load_config()
    assert config["slos"] == [] and config["schedules"] == []
    names = {a["alert"] for a in alert_rules()}
    assert not names & {"CelerySLOErrorBudgetBurn", "CeleryPeriodicTaskMissed"}
    assert data_text("config.yaml") == rules.DEFAULTS.read_text(encoding="utf-8")
    assert data_text("rules.template.yml") == rules.TEMPLATE.read_text(encoding="utf-8")


def test_every_slo_records_each_window_once_and_alerts_four_times() -> None:
    rendered = yaml.safe_load(_render(slos=GOOD))
    slo_groups = [g for g in rendered["groups"] if g["name"].startswith("celery-exporter.slo.")]
    assert [g["name"] for g in slo_groups] == [f"celery-exporter.slo.{s['name']}" for s in GOOD]
    recorded = [(r["record"], r["labels"]["slo"]) for g in slo_groups for r in g["rules"] if "record" in r]
    assert len(recorded) == len(set(recorded))
    burns = [a for a in alert_rules(rendered) if a["alert"] == "CelerySLOErrorBudgetBurn"]
    assert len(burns) == 4 * len(GOOD)
    for alert in burns:
        assert {"slo", "kind", "severity", "long_window", "short_window"} <= set(alert["labels"])
        for window in (alert["labels"]["long_window"], alert["labels"]["short_window"]):
            assert (f"slo:celery_task_errors:ratio_rate{window}", alert["labels"]["slo"]) in recorded
    assert ("slo:celery_task_errors:ratio_rate7d", "report-runs-fast") in recorded  # its period
    assert {a["labels"]["severity"] for a in burns} == {"critical", "warning"}


@needs_promtool
def test_promtool_accepts_every_generated_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "slos": GOOD, "schedules": [{"task_name": "reports.nightly", "every": "24h", "grace": "30m"},
                                    {"task_name": "cleanup.hourly", "every": "1h"}],
        "selector": 'job="payments",namespace="pay"', "group_labels": ["cluster", "namespace"],
        "replica_labels": ["instance", "pod", "container"]}))
    files = [tmp_path / "mine.rules.yml", rules.RULES, rules.COMPOSE_RULES, rules.EXAMPLE_RULES]
    assert generate(["rules", "--config", str(config), "--output", str(files[0])]) == 0
    for manifest in (rules.PROMETHEUSRULE, tmp_path / "pr.yaml"):
        if manifest.parent == tmp_path:
            assert generate(["prometheusrule", "--config", str(config), "--output", str(manifest)]) == 0
        groups = yaml.safe_load(manifest.read_text())["spec"]["groups"]
        files.append(tmp_path / f"{manifest.stem}.groups.yml")
        files[-1].write_text(yaml.safe_dump({"groups": groups}))
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", *map(str, files)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_slo_and_schedule_examples_pass_their_promtool_tests() -> None:
    assert load_rules(rules.EXAMPLE_RULES)["groups"]
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", "slo_test.yml", "schedules_test.yml"], cwd=EXAMPLES,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ installed
@pytest.mark.slow
@pytest.mark.integration
@needs_promtool
def test_generate_works_from_a_pip_installed_package_outside_the_repository(tmp_path: Path) -> None:
    clone, venv, work = tmp_path / "clone", tmp_path / "venv", tmp_path / "elsewhere"
    clone.mkdir()
    work.mkdir()
    copy_checkout(clone)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = clean_env(f"{venv / 'bin'}:{os.environ['PATH']}")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(clone)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    (work / "my-alerts.yaml").write_text(yaml.safe_dump({"slos": GOOD[:3], "schedules": [
        {"task_name": "reports.nightly", "every": "24h", "grace": "30m"}]}))
    exe = str(venv / "bin" / "celery-exporter")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "generate", *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)

    for what, out in (("rules", "my.rules.yml"), ("prometheusrule", "pr.yaml"), ("dashboards", "dash")):
        result = run(what, "--config", "my-alerts.yaml", "--output", out)
        assert result.returncode == 0, result.stderr
    assert (work / "my.rules.yml").read_text() == render_rules(
        rules.load_config(work / "my-alerts.yaml"))  # the same code as the repository's generator
    assert sorted(p.name for p in (work / "dash").iterdir()) == [
        "celery-overview.json", "celery-queues.json", "celery-slo.json", "celery-task.json"]
    assert yaml.safe_load((work / "pr.yaml").read_text())["kind"] == "PrometheusRule"
    assert run("config").stdout == rules.DEFAULTS.read_text(encoding="utf-8")
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", "my.rules.yml"], cwd=work, capture_output=True,
                           text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    bad = run("rules", "--config", "missing.yaml")
    assert bad.returncode == 2 and "missing.yaml: cannot read" in bad.stderr
