"""The SLO burn-rate alerts against the incidents they are for, once per SLO kind (success, queue latency,
run time), in promtool: rules rendered from a user's config the way ``celery-exporter generate rules``
renders them, input series shaped like the exporter's (cumulative counters, or a histogram's bucket at
the threshold and its count), and "who is paged" read from ``ALERTS`` at each evaluation time.

Incidents (per kind): a total outage of a 99.9% objective pages within 5 minutes; 20% failures against a
99.5% objective page within 30 minutes; a 2x burn opens a ticket and never pages; a 3-minute total
outage of a 99% objective pages no one; a task running four times an hour that fails once pages no one;
an exporter restart (counters reset, a scrape gap) pages no one; an HA pair pages once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.mixin.cli import main as generate
from tests._prom_helpers import PROMTOOL

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")

KINDS = ("success", "queue_latency", "run_time")
OBJECTIVES = {"999": 99.9, "995": 99.5, "99": 99}
TARGET = 'job="celery-exporter",instance="exporter:9808"'


def _slos() -> list[dict[str, Any]]:
    slos = []
    for suffix, objective in OBJECTIVES.items():
        slos += [
            {"name": f"success-{suffix}", "kind": "success", "task_name": "payments.*", "objective": objective},
            {"name": f"queue_latency-{suffix}", "kind": "queue_latency", "queue": "default",
             "threshold_seconds": 30, "objective": objective},
            {"name": f"run_time-{suffix}", "kind": "run_time", "task_name": "reports.*",
             "threshold_seconds": 60, "objective": objective},
        ]
    return slos


# ------------------------------------------------------------------------------------------ input series
Segment = tuple[int, int, int]  # minutes, good per step, bad per step


def _counter(segments: list[tuple[int, int]]) -> str:
    """promtool's expanding notation for a counter growing by ``inc`` per step for ``steps`` steps each;
    a segment of ``(steps, -1)`` is a scrape gap after which the counter restarts from 0."""
    parts, value, restart = [], 0, False
    for i, (steps, inc) in enumerate(segments):
        if inc < 0:
            parts.append(f"_x{steps}")
            value, restart = 0, True
        elif i == 0:  # the sample at time 0, then `steps` more
            parts.append(f"0+{inc}x{steps}")
            value = inc * steps
        elif restart:
            parts.append(f"0+{inc}x{steps - 1}")
            value, restart = inc * (steps - 1), False
        else:
            parts.append(f"{value + inc}+{inc}x{steps - 1}")
            value += inc * steps
    return " ".join(parts)


def _series(kind: str, traffic: list[Segment], target: str = TARGET) -> list[dict[str, str]]:
    """The exporter's series for an SLO kind: good and bad events per step, per segment."""
    def counter(pick: Any) -> str:
        return _counter([(s, -1) if g < 0 else (s, pick(g, b)) for s, g, b in traffic])

    good, bad, total = counter(lambda g, b: g), counter(lambda g, b: b), counter(lambda g, b: g + b)
    if kind == "success":
        labels = f'{target},task_name="payments.charge",queue="celery"'
        return [{"series": f"celery_task_succeeded_total{{{labels}}}", "values": good},
                {"series": f"celery_task_failed_total{{{labels}}}", "values": counter(lambda g, b: 0)},
                {"series": f'celery_task_failed_total{{{labels},exception="ValueError"}}', "values": bad}]
    if kind == "queue_latency":
        labels, metric, le = f'{target},task_name="app.work",queue="default"', "celery_task_queue_wait_seconds", "30.0"
    else:
        labels, metric, le = (f'{target},task_name="reports.build",queue="celery",state="succeeded"',
                              "celery_task_duration_seconds", "60.0")
    return [{"series": f'{metric}_bucket{{{labels},le="{le}"}}', "values": good},
            {"series": f'{metric}_bucket{{{labels},le="+Inf"}}', "values": total},
            {"series": f"{metric}_count{{{labels}}}", "values": total}]


# ------------------------------------------------------------------------------------------ incidents
@dataclass
class Incident:
    name: str
    objective: str  # key of OBJECTIVES
    traffic: list[Segment]
    pages_at: list[int]  # minutes at which a page (critical) must be firing
    silent_pages: range  # minutes at which no page may fire
    tickets_at: list[int] = field(default_factory=list)
    ha_pair: bool = False
    step: int = 1  # minutes per sample and evaluation


def _few_an_hour(hours: int, fail_at_hour: int) -> list[Segment]:
    """A task that runs every 15 minutes; one run fails (or is slow) in hour ``fail_at_hour``."""
    out: list[Segment] = []
    for hour in range(hours):
        for quarter in range(4):
            bad = hour == fail_at_hour and quarter == 1
            out += [(1, 0 if bad else 1, 1 if bad else 0), (14, 0, 0)]
    return out


INCIDENTS = [
    Incident("total outage of a 99.9% objective pages within 5 minutes", "999",
             [(60, 100, 0), (60, 0, 100)], pages_at=[65, 90, 120], silent_pages=range(0, 61, 5)),
    Incident("20% failures against a 99.5% objective page within 30 minutes", "995",
             [(60, 100, 0), (60, 80, 20)], pages_at=[90, 120], silent_pages=range(0, 61, 5)),
    Incident("3-minute total outage of a 99% objective pages no one", "99",
             [(60, 100, 0), (3, 0, 100), (120, 100, 0)], pages_at=[], silent_pages=range(0, 184, 1)),
    Incident("a task running four times an hour that fails once pages no one", "999",
             _few_an_hour(8, 6), pages_at=[], silent_pages=range(0, 8 * 60, 5)),
    Incident("exporter restart (counters reset after a scrape gap) pages no one", "999",
             [(60, 100, 0), (2, -1, 0), (120, 100, 0)], pages_at=[], silent_pages=range(0, 183, 1)),
    Incident("HA pair pages once for a total outage", "999",
             [(60, 100, 0), (60, 0, 100)], pages_at=[65, 90, 120], silent_pages=range(0, 61, 5), ha_pair=True),
    # 3 days of clean traffic, then twice the sustainable failure rate: the 1d/3x ticket cannot fire (2 < 3)
    # and the 3d/1x one fires once the 3-day average passes 1x (1.5 days in) and its 3h `for` has passed.
    Incident("2x burn opens a ticket within two days and never pages", "999",
             [(432, 1000, 0), (432, 998, 2)], pages_at=[], silent_pages=range(0, 865 * 10, 30),
             tickets_at=[432 * 10 + 36 * 60 + 3 * 60 + 30], step=10),
]


def _alerts(severity: str, slo: str) -> str:
    return f'group(ALERTS{{alertname="CelerySLOErrorBudgetBurn",alertstate="firing",severity="{severity}",slo="{slo}"}})'


def _page_count(slo: str) -> str:
    return (f'count(ALERTS{{alertname="CelerySLOErrorBudgetBurn",alertstate="firing",severity="critical",'
            f'slo="{slo}",long_window="1h"}})')


def _groups(incident: Incident) -> Iterator[dict[str, Any]]:
    for kind in KINDS:
        slo = f"{kind}-{incident.objective}"
        series = _series(kind, incident.traffic)
        if incident.ha_pair:
            series = [s for i, pod in enumerate("ab", start=1) for s in _series(
                kind, incident.traffic, f'job="celery-exporter",instance="10.0.0.{i}:9808",pod="exporter-{pod}"')]
        tests = [{"expr": _alerts("critical", slo), "eval_time": f"{m}m", "exp_samples": []}
                 for m in incident.silent_pages]
        for m in incident.pages_at:
            # One firing page per window pair, never one per replica.
            tests.append({"expr": _page_count(slo), "eval_time": f"{m}m",
                          "exp_samples": [{"labels": "{}", "value": 1}]})
        for m in incident.tickets_at:
            tests.append({"expr": _alerts("warning", slo), "eval_time": f"{m}m",
                          "exp_samples": [{"labels": "{}", "value": 1}]})
        yield {"name": f"{kind}: {incident.name}", "interval": f"{incident.step}m",
               "input_series": series, "promql_expr_test": tests}


def _run(tmp_path: Path, step: int, incidents: list[Incident]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "slos.yaml"
    config.write_text(yaml.safe_dump({"slos": _slos()}))
    assert generate(["rules", "--config", str(config), "--output", str(tmp_path / "slo.rules.yml")]) == 0
    rules = yaml.safe_load((tmp_path / "slo.rules.yml").read_text())
    # Only the SLO groups: the incidents are about them alone.
    rules["groups"] = [g for g in rules["groups"] if g["name"].startswith("celery-exporter.slo")]
    (tmp_path / "slo.rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = {"rule_files": ["slo.rules.yml"], "evaluation_interval": f"{step}m",
             "tests": [g for incident in incidents for g in _groups(incident)]}
    path = tmp_path / f"incidents_{step}m_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", path.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("step", sorted({i.step for i in INCIDENTS}))
def test_burn_rate_alerts_page_and_ticket_on_the_right_incidents(tmp_path: Path, step: int) -> None:
    incidents = [i for i in INCIDENTS if i.step == step]
    result = _run(tmp_path, step, incidents)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


def test_the_counter_notation_adds_up() -> None:
    assert _counter([(3, 10), (2, 5)]) == "0+10x3 35+5x1"  # 0 10 20 30 | 35 40
    assert _counter([(2, 1), (2, -1), (2, 1)]) == "0+1x2 _x2 0+1x1"  # 0 1 2 | _ _ | 0 1
