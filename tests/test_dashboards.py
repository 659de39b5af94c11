"""The Grafana dashboards in dashboards/: the committed JSON is the generator's output, the dashboards
import as-is (no ``__inputs``, a ``datasource`` variable every panel and query uses, stable unique uids, a
current schemaVersion), every PromQL expression parses (checked offline with ``promtool check rules``),
reads only metrics the exporter exports or recording rules, and is scoped by ``$cluster``, ``$namespace``,
``$job`` and ``$instance``; every sum folds exporter replicas first; the exporter-health row shows red,
not "No data"; retries-exhausted panels do not depend on the zoom.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
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
    "celery-slo.json": "celery-exporter-slo",
}
DASHBOARDS = load_dashboards()


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
    from tools import dashboards

    rendered = {path.name: text for path, text in dashboards.targets().items()}
    assert set(rendered) == set(DASHBOARDS), "dashboards/ holds JSON the generator does not produce"
    for name, text in rendered.items():
        committed = (DASHBOARDS_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"dashboards/{name} is stale: run python -m tools.generate"


def test_generate_check_mode_detects_a_stale_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import dashboards, generate

    assert generate.main(["--check"]) == 0
    monkeypatch.setattr(dashboards, "DASHBOARDS_DIR", tmp_path)
    assert generate.main(["--check"]) == 1  # missing files are stale
    assert generate.main([]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DASHBOARDS)
    assert generate.main(["--check"]) == 0
    (tmp_path / "celery-task.json").write_text("{}\n")
    assert generate.main(["--check"]) == 1


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
    for required in ("cluster", "namespace", "job", "instance"):
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


# Recording rules that already folded the replicas have no instance label to filter on.
FOLDED_RULES = {"queue:celery_queue_length:time_to_drain_seconds",
                "queue:celery_dead_letter_messages_added:increase_page_window"}
SCOPE = ('cluster=~"$cluster"', 'namespace=~"$namespace"', 'job=~"$job"')


@pytest.mark.parametrize(("name", "where", "expr"), EXPRS, ids=[f"{n}:{w}" for n, w, _ in EXPRS])
def test_expression_is_scoped_to_cluster_namespace_job_and_instance(name: str, where: str, expr: str) -> None:
    if where.startswith("variable"):  # each variable is scoped by the ones before it (checked below)
        return
    for metric in promql_metric_names(expr):
        for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\{{[^}}]*\}})?", expr):
            selector = match.group(1) or ""
            assert all(m in selector for m in SCOPE), f"{name} {where}: {metric} is not scoped"
            if metric not in FOLDED_RULES and not metric.startswith("slo:"):  # SLO records are folded
                assert 'instance=~"$instance"' in selector, f"{name} {where}: {metric} lacks $instance"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_scope_variables_chain(name: str) -> None:
    variables = {v["name"]: v["query"] for v in DASHBOARDS[name]["templating"]["list"] if v["type"] == "query"}
    assert variables["cluster"] == "label_values(celery_exporter_build_info, cluster)"
    assert 'cluster=~"$cluster"' in variables["namespace"]
    assert 'namespace=~"$namespace"' in variables["job"]
    assert 'job=~"$job"' in variables["instance"]


_SUM = re.compile(r"\bsum(?:\s+by\s*\([^)]*\))?\s*\(")
_FOLDED_START = re.compile(r"\s*(max without \(instance, pod\) \(|"
                           + "|".join(re.escape(r) for r in FOLDED_RULES) + ")")


@pytest.mark.parametrize(("name", "where", "expr"), EXPRS, ids=[f"{n}:{w}" for n, w, _ in EXPRS])
def test_every_sum_folds_exporter_replicas_first(name: str, where: str, expr: str) -> None:
    """Two exporter replicas (HA, rollout, sidecar) report the same cluster: summing them doubles it."""
    for match in _SUM.finditer(expr):
        assert _FOLDED_START.match(expr, match.end()), f"{name} {where}: sums unfolded replicas: {expr}"


def test_overview_queue_variable_lists_every_polled_queue() -> None:
    """A queue nobody consumes has no task events: only celery_queue_length knows it."""
    for name in ("celery-overview.json", "celery-queues.json"):
        (query,) = [v["query"] for v in DASHBOARDS[name]["templating"]["list"] if v["name"] == "queue"]
        assert query.startswith("label_values(celery_queue_length{"), (name, query)


@pytest.mark.parametrize("name", ["celery-overview.json", "celery-queues.json"])
def test_exporter_health_row_turns_red_instead_of_no_data(name: str) -> None:
    panels = list(iter_panels(DASHBOARDS[name]))
    titles = [p["title"] for p in panels]
    row = titles.index("Exporter health")
    health = panels[row + 1:row + 4]
    read = set()
    for panel in health:
        (target,) = panel["targets"]
        assert target["expr"].endswith("or on () vector(0)"), panel["title"]  # missing series -> 0
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0] == {"color": "red", "value": None} and steps[-1] == {"color": "green", "value": 1}
        read |= promql_metric_names(target["expr"])
    assert read == {"up", "celery_exporter_broker_connected", "celery_exporter_poll_success"}


def test_retries_exhausted_panels_do_not_change_with_zoom() -> None:
    found = 0
    for dash in DASHBOARDS.values():
        for where, expr in dash_exprs(dash):
            if "celery_task_retries_exhausted_total" in expr:
                found += 1
                assert "$__range" not in expr and "$__rate_interval" not in expr and "$__interval" not in expr, where
    assert found >= 3


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
            "celery_dead_letter_queue_oldest_message_age_seconds",
            "queue:celery_dead_letter_messages_added:increase_page_window",
            "queue:celery_queue_length:time_to_drain_seconds"} <= read["celery-queues.json"]
