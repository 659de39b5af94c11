"""Shared helpers for the alerting and dashboard tests: where the rule files and dashboards live, a small
PromQL tokeniser that finds the metric names an expression reads, the set of names the exporter can serve
(from ``exporter.collectors.all_specs()``), and Grafana template-variable substitution.

It also holds what the end-to-end test needs to run Prometheus, Alertmanager and friends as child
processes: a process group that always ends its members (free ports and waits are in ``tests._support``).

The tokeniser is deliberately conservative: it strips string literals, label matchers, range and subquery
brackets, grouping-label lists and Grafana variables, then keeps every identifier that is not a keyword
and not called like a function. Anything it keeps must be a metric the exporter exports, a recording
rule, or ``up``, so a typo in a rule or panel fails the tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exporter.collectors import all_specs

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "alerts" / "celery-exporter.rules.yml"
# The SLOs and schedules of alerts/examples/slo-config.yaml, rendered: what the SLO dashboard reads.
SLO_RULES_FILE = ROOT / "alerts" / "examples" / "slo.rules.yml"
RULE_TESTS_DIR = ROOT / "alerts" / "tests"
DASHBOARDS_DIR = ROOT / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTING_DOC = ROOT / "docs" / "alerting.md"
RUNBOOK_BASE = "https://github.com/celery-exporter/celery-exporter/blob/main/docs/runbooks.md#"

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
ALERTMANAGER = next(
    (p for p in (shutil.which("alertmanager"), shutil.which("prometheus-alertmanager"),
                 "/usr/bin/prometheus-alertmanager") if p and Path(p).exists()),
    None,
)

# Keywords, operators and aggregations (an aggregation may be followed by its grouping, not by "(");
# other functions are recognised by the "(" after them.
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
    "bool", "inf", "nan", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names read by a PromQL expression."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("1", text)
    text = _BRACES.sub("", text)
    while _BRACKETS.search(text):
        text = _BRACKETS.sub("", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names() -> set[str]:
    """Every sample name the exporter can serve, from the MetricSpec declarations."""
    return {name for spec in all_specs() for name in spec.sample_names}


def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def iter_rules(rules: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    for group in (rules or load_rules())["groups"]:
        yield from group["rules"]


def alert_rules(rules: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [r for r in iter_rules(rules) if "alert" in r]


def recorded_names(rules: dict[str, Any] | None = None) -> set[str]:
    return {r["record"] for r in iter_rules(rules) if "record" in r}


# Read by the rules and dashboards ahead of the exporter: the dead-letters-added counter (issue 13 item 2)
# lands in the broker pollers; until then, and with an older exporter, the rules fall back to the queue
# length (alerts/tests/dead_letters_test.yml runs both paths).
AHEAD_OF_EXPORTER = frozenset({"celery_dead_letter_messages_added_total"})


def known_names() -> set[str]:
    """What a rule or panel may read: exported samples, recording rules, and Prometheus' own ``up``."""
    return (exported_names() | recorded_names() | recorded_names(load_rules(SLO_RULES_FILE)) | {"up"}
            | AHEAD_OF_EXPORTER)


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``15m``, ``1h30m`` or ``5s``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return float(sum(int(n) * units[u] for n, u in parts))


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown document."""
    anchors: set[str] = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def load_dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards, by file name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        with path.open(encoding="utf-8") as fh:
            out[path.name] = json.load(fh)
    return out


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every PromQL expression of a dashboard: panel targets and query variables."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} ref {target.get('refId')}", target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            if text:
                yield f"variable {var['name']}", text


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\(\s*(.*)\s*\)\s*$", re.DOTALL)


def variable_query_expr(text: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query (``label_values(expr, label)`` and friends)."""
    m = _LABEL_VALUES.match(text)
    if m:
        return m.group(1)
    m = _QUERY_RESULT.match(text)
    if m:
        return m.group(1)
    return text


def substitute_grafana_vars(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables the way Grafana would before sending a query to Prometheus.

    Custom variables default to ``.*`` (the dashboards' "All" value); Grafana's built-in intervals get
    short values that suit a test Prometheus scraping every second.
    """
    builtins = {
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "5m",
        "__interval_ms": "15000",
        "__range_s": "300",
    }
    merged = {**builtins, **(values or {})}

    def repl(match: re.Match[str]) -> str:
        token = match.group(0)
        name = token.strip("${}[]").split(":")[0]
        return merged.get(name, ".*")

    return _GRAFANA_VAR.sub(repl, expr)


# ---------------------------------------------------------------------------------------------- processes


class Processes:
    """Child processes of one test, each logging to a file; ``stop()`` ends every one of them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                **kwargs)
        log.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.logs(name)}")

    def logs(self, *names: str, tail: int = 3000) -> str:
        out = []
        for name in names or tuple(self.procs):
            path = self.logdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name} (last {tail} chars) ---\n{text[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
