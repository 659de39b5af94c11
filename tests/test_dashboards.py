"""The Grafana dashboards in dashboards/: the committed JSON is the generator's output, the dashboards
import as-is (no ``__inputs``, a ``datasource`` variable every panel and query uses, stable unique uids, a
current schemaVersion), every PromQL expression parses (checked offline with ``promtool check rules``),
reads only metrics the exporter exports or recording rules, and is scoped by ``$job`` and ``$instance``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests._prom_helpers import (
    DASHBOARDS_DIR,
    PROMTOOL,
    dashboard_exprs,
    iter_panels,
    known_names,
    load_dashboards,
    promql_metric_names,
    substitute_grafana_vars,
    variable_query_expr,
)

DS = {"type": "prometheus", "uid": "${datasource}"}
EXPECTED_UIDS = {
    "celery-overview.json": "celery-exporter-overview",
    "celery-task.json": "celery-exporter-task",
    "celery-queues.json": "celery-exporter-queues",
}
DASHBOARDS = load_dashboards()


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS_DIR / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_exprs() -> list[tuple[str, str, str]]:
    """(file, where, PromQL) for every panel query and variable query."""
    out = []
    for name, dash in DASHBOARDS.items():
        for where, expr in dash_exprs(dash):
            out.append((name, where, expr))
    return out


def dash_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (where, variable_query_expr(expr) if where.startswith("variable") else expr)
        for where, expr in dashboard_exprs(dash)
    ]


EXPRS = _all_exprs()


# ------------------------------------------------------------------------------------------ generated
def test_committed_json_is_the_generator_output() -> None:
    rendered = _generator().render()
    assert set(rendered) == set(DASHBOARDS), "dashboards/ holds JSON the generator does not produce"
    for name, text in rendered.items():
        committed = (DASHBOARDS_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"dashboards/{name} is stale: run python dashboards/generate.py"


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    (tmp_path / "celery-task.json").write_text("{}\n")
    assert gen.main(["--check"]) == 1


# ------------------------------------------------------------------------------------------ importable
def test_uids_are_stable_and_unique() -> None:
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == EXPECTED_UIDS
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_importable_as_is(name: str) -> None:
    dash = DASHBOARDS[name]
    assert "__inputs" not in dash and "__requires" not in dash
    assert dash.get("id") is None, "a fixed numeric id breaks import into another Grafana"
    assert dash["schemaVersion"] >= 39
    assert len(dash["uid"]) <= 40
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for required in ("job", "instance"):
        assert variables[required]["type"] == "query", required
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS, var["name"]
    assert "${DS_" not in (DASHBOARDS_DIR / name).read_text(), "an export-time data source reference leaked"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_queries_the_datasource_variable(name: str) -> None:
    panels = list(iter_panels(DASHBOARDS[name]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel.get("description"), f"{panel['title']} has no description"
        for tgt in panel["targets"]:
            assert tgt["datasource"] == DS, panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in iter_panels(DASHBOARDS[name]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_task_drilldown_is_driven_by_task_name() -> None:
    dash = DASHBOARDS["celery-task.json"]
    assert "task_name" in {v["name"] for v in dash["templating"]["list"]}
    for where, expr in dash_exprs(dash):
        if where.startswith("panel"):
            assert 'task_name="$task_name"' in expr, where


# ------------------------------------------------------------------------------------------ PromQL
@pytest.mark.parametrize(("name", "where", "expr"), EXPRS, ids=[f"{n}:{w}" for n, w, _ in EXPRS])
def test_expression_reads_only_exported_metrics(name: str, where: str, expr: str) -> None:
    names = promql_metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - known_names()
    assert not unknown, f"{name} {where} reads unknown metrics {sorted(unknown)}"


@pytest.mark.parametrize(("name", "where", "expr"), EXPRS, ids=[f"{n}:{w}" for n, w, _ in EXPRS])
def test_expression_is_scoped_to_job_and_instance(name: str, where: str, expr: str) -> None:
    if where in ("variable job", "variable instance"):
        return
    for metric in promql_metric_names(expr):
        for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\{{[^}}]*\}})?", expr):
            selector = match.group(1) or ""
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (
                f"{name} {where}: {metric} is not filtered by $job and $instance"
            )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression (Grafana variables substituted) as a recording rule."""
    rules = [
        {"record": f"dashboard_expr_{i}", "expr": substitute_grafana_vars(expr)}
        for i, (_, _, expr) in enumerate(EXPRS)
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_substitution_leaves_no_grafana_variable() -> None:
    for _, where, expr in EXPRS:
        out = substitute_grafana_vars(expr)
        assert "$" not in out, f"{where}: {out}"
    assert substitute_grafana_vars("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert substitute_grafana_vars('x{a=~"$job",b="${task_name}"}', {"task_name": "t"}) == 'x{a=~".*",b="t"}'


def test_key_views_exist() -> None:
    """The panels the issue asks for are there: their metrics are each read by some panel."""
    read = {n: set().union(*(promql_metric_names(e) for _, e in dash_exprs(d))) for n, d in DASHBOARDS.items()}
    assert {"queue:celery_task_succeeded:rate5m", "task_name_queue:celery_task_failure:ratio_rate5m",
            "queue_quantile:celery_task_queue_wait_seconds:histogram_quantile_rate5m",
            "celery_queue_length", "celery_workers"} <= read["celery-overview.json"]
    assert {"celery_task_failed_total", "celery_task_retried_total", "celery_task_duration_seconds_bucket",
            "celery_task_queue_wait_seconds_bucket"} <= read["celery-task.json"]
    assert {"celery_queue_length", "celery_retry_queue_length", "celery_dead_letter_queue_length",
            "celery_dead_letter_queue_oldest_message_age_seconds"} <= read["celery-queues.json"]
