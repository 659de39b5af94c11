"""alerts/config.yaml is the one place for selectors, thresholds, `for` durations and the runbook base URL:
the committed rule files are its rendering, a user's override renders valid rules with their values, bad
overrides are refused, every series a rule reads is selected by the configured selector (never a
`job=~".*celery.*"` regex), and the "exporter blind" promtool scenarios check every alert.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.mixin.config import STRUCTURED_KEYS
from tests._prom_helpers import (
    PROMTOOL,
    ROOT,
    RULE_TESTS_DIR,
    alert_rules,
    exported_names,
    iter_rules,
    load_rules,
)
from tools import rules

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
SELECTOR = rules.load_config()["selector"]


def test_committed_rule_files_are_the_rendering_of_the_config() -> None:
    for path, text in rules.targets().items():
        assert path.read_text(encoding="utf-8") == text, f"stale {path}: run python -m tools.generate"


def test_prometheusrule_holds_the_same_groups_as_the_rule_file() -> None:
    manifest = yaml.safe_load(rules.PROMETHEUSRULE.read_text(encoding="utf-8"))
    assert manifest["spec"]["groups"] == load_rules()["groups"]
    assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"


_SELECTION = re.compile(r"(?<![\w:])([a-z_:][a-z0-9_:]*)\s*(\{[^{}]*\})?")


def test_every_raw_series_is_selected_by_the_configured_selector() -> None:
    raw = exported_names() | {"up", "celery_dead_letter_messages_added_total"}
    for rule in iter_rules():
        expr = rule["expr"]
        assert ".*celery" not in expr, f"{rule.get('alert') or rule['record']}: regex job selector"
        for name, matchers in _SELECTION.findall(re.sub(r'"[^"]*"', '""', expr)):
            if name in raw:
                assert matchers and SELECTOR.split("=")[0] in matchers, (rule.get("alert") or rule["record"], name)
        for name, matchers in _SELECTION.findall(expr):
            if name in raw:
                assert SELECTOR in matchers, (rule.get("alert") or rule["record"], name, matchers)


@needs_promtool
def test_an_override_renders_valid_rules_with_its_values(tmp_path: Path) -> None:
    override = tmp_path / "mine.yaml"
    override.write_text(
        'selector: job="payments-celery-exporter",namespace="payments"\n'
        "dlq_page_letters: 7\n"
        "blind_for: 3m\n"
        "runbook_url: https://wiki.example.com/celery/\n"
        "replica_labels: [instance, pod, container]\n"
    )
    out = tmp_path / "mine.rules.yml"
    result = subprocess.run(
        [sys.executable, "-m", "tools.generate", "rules", "--config", str(override), "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(out.read_text())
    alerts = {a["alert"]: a for a in alert_rules(rendered)}
    assert alerts["CeleryDeadLetterQueueGrowing"]["expr"].strip().endswith(">= 7")
    assert alerts["CeleryExporterBlind"]["for"] == "3m"
    assert alerts["CeleryExporterBlind"]["annotations"]["runbook_url"] == (
        "https://wiki.example.com/celery#celeryexporterblind")
    assert 'up{job="payments-celery-exporter",namespace="payments"}' in alerts["CeleryExporterBlind"]["expr"]
    assert "without (instance, pod, container)" in alerts["CeleryExporterBlind"]["expr"]
    assert 'job="celery-exporter"' not in out.read_text()
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_copy_of_the_template_renders_with_the_same_config(tmp_path: Path) -> None:
    copy = tmp_path / "my.template.yml"
    copy.write_text(rules.TEMPLATE.read_text().replace(
        "queue:celery_dead_letter_messages_added:increase_page_window >= ${dlq_page_letters}",
        'queue:celery_dead_letter_messages_added:increase_page_window{queue!="dlq:reports"} >= ${dlq_page_letters}'))
    rendered = {a["alert"]: a for a in alert_rules(yaml.safe_load(rules.render_rules(rules.load_config(), copy)))}
    assert rendered["CeleryDeadLetterQueueGrowing"]["expr"].startswith(
        'queue:celery_dead_letter_messages_added:increase_page_window{queue!="dlq:reports"} >= 50')


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dlq_page_leters: 7\n", "unknown key"),
        ("selector: ''\n", "selector"),
        ("group_labels: cluster\n", "group_labels"),
        ("dlq_page_for: [2m]\n", "dlq_page_for"),
    ],
)
def test_a_bad_override_is_refused_with_the_key(tmp_path: Path, override: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(override)
    with pytest.raises(rules.ConfigError, match=message):
        rules.render_rules(rules.load_config(path))


def test_every_config_key_is_used_by_the_template() -> None:
    template = rules.TEMPLATE.read_text(encoding="utf-8")
    # The SLO and schedule keys are read by exporter.mixin.slo, not by the template.
    unused = {key for key in rules.load_config() if "${" + key + "}" not in template} - set(STRUCTURED_KEYS)
    assert not unused, f"alerts/config.yaml keys the template never reads: {sorted(unused)}"


def test_blind_exporter_scenarios_check_every_alert() -> None:
    """"Exactly one alert": each blind scenario evaluates every alert at the time the blind one fires."""
    names = {a["alert"] for a in alert_rules()}
    scenarios = [
        group for path in sorted(RULE_TESTS_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["tests"] if group["name"].startswith("Exporter blind (")
    ]
    assert len(scenarios) >= 2  # stream disconnected, scrape failing
    for group in scenarios:
        firing_at = {c["eval_time"] for c in group["alert_rule_test"] if c["alertname"] == "CeleryExporterBlind"
                     and c.get("exp_alerts")}
        (when,) = firing_at
        checked = {c["alertname"] for c in group["alert_rule_test"] if c["eval_time"] == when}
        assert checked == names, f"{group['name']}: not checked at {when}: {sorted(names - checked)}"
        silent = {c["alertname"] for c in group["alert_rule_test"]
                  if c["eval_time"] == when and not c.get("exp_alerts")}
        assert silent == names - {"CeleryExporterBlind"}
