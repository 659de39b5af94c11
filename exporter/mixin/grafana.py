"""Grafana JSON building blocks (panels, variables, layout, the dashboard envelope, the scope selectors
and replica folding) for the dashboards of exporter/mixin/.

Plain dictionaries in Grafana's schema, no dependency: every panel and query uses the ``datasource``
template variable, so the dashboards import as-is, by hand or by file provisioning.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
Panel = dict[str, Any]
RI = "[$__rate_interval]"
SCOPE = 'cluster=~"$cluster",namespace=~"$namespace",job=~"$job",instance=~"$instance"'
# Recording rules that fold replicas have no instance label: select them without it.
SCOPE_NO_INSTANCE = 'cluster=~"$cluster",namespace=~"$namespace",job=~"$job"'


def sel(*extra: str) -> str:
    """A label selector body restricted to the dashboard's scope variables (plus ``extra`` matchers)."""
    return "{" + ",".join((SCOPE, *extra)) + "}"


def deployment_sel(*extra: str) -> str:
    """Like ``sel`` without ``instance``, for recording rules that already folded the replicas."""
    return "{" + ",".join((SCOPE_NO_INSTANCE, *extra)) + "}"


class Fold:
    """``one(expr)``: ``expr`` with exporter replicas folded (every replica reports the same cluster, so
    take one). The labels are the config's ``replica_labels``, as the rules fold them; everything else
    (cluster, namespace, job, the series' own labels) is kept, so folding never merges two deployments."""

    def __init__(self, replica_labels: list[str]) -> None:
        self.labels = ", ".join(replica_labels)

    def __call__(self, expr: str) -> str:
        return f"max without ({self.labels}) ({expr})"


# ---------------------------------------------------------------------------------------------- panels
def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           **extra: Any) -> dict[str, Any]:
    """One Prometheus query: a range query for graphs, an instant query for stat panels."""
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant, **extra}


def _targets(queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short",
               w: int = 12, h: int = 8, stack: bool = False, min0: bool = True) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, expr: str, unit: str = "short", w: int = 4, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None) -> Panel:
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [target(expr, "", "A", instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def heatmap(title: str, description: str, expr: str, w: int = 12, h: int = 8) -> Panel:
    return {
        "type": "heatmap", "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [target(expr, "{{le}}", "A", format="heatmap")],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"calculate": False, "yAxis": {"axisPlacement": "left", "unit": "s"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "tooltip": {"show": True, "yHistogram": True}, "legend": {"show": True}},
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Assign stable ids and flow panels left to right, wrapping at Grafana's 24 columns."""
    out: list[Panel] = []
    x = y = line_h = 0
    for pid, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > 24:
            x, y, line_h = 0, y + line_h, 0
        pos.update(x=x, y=y)
        out.append({"id": pid, **panel})
        x, line_h = x + pos["w"], max(line_h, pos["h"])
        if panel["type"] == "row":
            x, y, line_h = 0, y + pos["h"], 0
    return out


# ---------------------------------------------------------------------------------------------- variables
def datasource_var() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_var(name: str, query: str, multi: bool = True, label: str | None = None) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name, "label": label or name, "type": "query", "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 1, "regex": "",
        "multi": multi, "includeAll": multi, "current": {}, "options": [], "hide": 0, "skipUrlSync": False,
    }
    if multi:
        var["allValue"] = ".*"
    return var


def common_vars() -> list[dict[str, Any]]:
    return [
        datasource_var(),
        # cluster and namespace exist where the scrape config adds them; without the label Grafana's
        # "All" (.*) still matches the empty value, so the dashboards work either way.
        query_var("cluster", "label_values(celery_exporter_build_info, cluster)"),
        query_var("namespace", 'label_values(celery_exporter_build_info{cluster=~"$cluster"}, namespace)'),
        query_var("job", 'label_values(celery_exporter_build_info{cluster=~"$cluster",'
                         'namespace=~"$namespace"}, job)'),
        query_var("instance", 'label_values(celery_exporter_build_info{cluster=~"$cluster",'
                              'namespace=~"$namespace",job=~"$job"}, instance)'),
    ]


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["celery", "celery-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [{"title": "Celery dashboards", "type": "dashboards", "tags": ["celery-exporter"],
                   "asDropdown": True, "includeVars": True, "keepTime": True, "icon": "external link",
                   "targetBlank": False, "tooltip": "", "url": ""}],
        "templating": {"list": variables},
        "panels": layout(panels),
    }
