"""The status page at ``/``: what the exporter is, what it is connected to, what the diagnosis checks say
and the evidence behind them (workers, queues and dead-letter queues with why each was classified so),
and the caps in use. Plain server-rendered HTML: every value escaped, one inline style sheet, no script,
no external asset, so it reads the same in a terminal browser and behind a strict CSP.

The page shows only redacted values (``exporter.secrets``): the broker URL with its password masked and
error texts with every configured secret masked. ``basic_page`` is the plain links page the HTTP server
falls back to when it is given no status page (tests of the server alone).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.diagnosis.evidence import Evidence
from exporter.diagnosis.model import ORDER, Result, Status

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#1b1f24}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;vertical-align:top;
border-bottom:1px solid #e3e6ea}th{background:#f3f5f7}code{font-size:.95em}
.problem{background:#fde7e9}.warning{background:#fff4d6}.ok{background:#e8f6ec}.unknown{background:#eef0f3}
.badge{display:inline-block;min-width:6.5em;padding:0 .4em;border-radius:3px;font-weight:600}
nav a{margin-right:1em}ul{margin:.2em 0;padding-left:1.2em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class PageInfo:
    """What the page shows besides the evidence; every value already redacted by the caller."""

    version: str  # ``celery-exporter --version`` text (exporter, python, celery, kombu)
    broker: str  # redacted broker URL
    links: tuple[str, ...]  # /metrics path, /healthz, /readyz
    caps: Mapping[str, int] = field(default_factory=dict)
    transport_options: str = ""  # redacted JSON
    management_url: str = ""  # redacted, "" when not set


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<p>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _checks(results: Sequence[Result]) -> str:
    rows = []
    for status in ORDER:
        for r in (r for r in results if r.status is status):
            evidence = "".join(f"<li>{_e(x)}</li>" for x in r.evidence)
            shown = r.fix and status in (Status.PROBLEM, Status.WARNING)
            fix = f"<p><b>Fix:</b> {_e(r.fix)}</p>" if shown else ""
            rows.append(
                f'<tr class="{_e(status.name.lower())}" id="check-{_e(r.check)}">'
                f'<td><span class="badge">{_e(status.label)}</span></td><td><code>{_e(r.check)}</code></td>'
                f"<td>{_e(r.summary)}{f'<ul>{evidence}</ul>' if evidence else ''}{fix}</td></tr>")
    return ("<table><thead><tr><th>status</th><th>check</th><th>what was found, and the fix</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _skew(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:+.2f}s" if abs(seconds) >= 0.005 else "0.00s"  # never "-0.00s"


def _ago(now: float, ts: float) -> str:
    return f"{max(0.0, now - ts):.0f}s ago" if ts else "never"


def render_page(info: PageInfo, ev: Evidence, results: Sequence[Result]) -> str:
    """The whole page for one evidence and its results."""
    problems = sum(r.status is Status.PROBLEM for r in results)
    warnings = sum(r.status is Status.WARNING for r in results)
    verdict = (f"{problems} problem(s), {warnings} warning(s)" if problems or warnings
               else "no problem found")
    links = "".join(f'<a href="{_e(p)}">{_e(p)}</a>' for p in info.links)
    stream = ("connected" if ev.connected else "disconnected") + f", {ev.reconnects} reconnect(s)"
    if ev.last_error:
        stream += f", last error: {ev.last_error}"
    about = [("version", info.version), ("broker", info.broker), ("event stream", stream),
             ("transport options", info.transport_options or "{}"),
             ("RabbitMQ management API", info.management_url or "not set"),
             ("watching for", f"{ev.watched:.0f}s"),
             ("page rendered", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ev.now)))]
    workers = [(w.name, w.version or "?", "online" if w.online else "offline", _ago(ev.now, w.last_heartbeat),
                f"{w.active:g}", _skew(w.clock_skew),
                "?" if w.processed is None else w.processed, "?" if w.task_events is None else w.task_events)
               for w in ev.workers]
    queues = [(q.name, q.kind, q.source, f"{q.depth:g}", q.reason) for q in ev.queues]
    seen_only = sorted(set(ev.queues_seen) - {q.name for q in ev.queues})
    caps = [(f"--{k.replace('_', '-')}", v, ev.overflow.get(_CAP_KEYS.get(k, ""), "")
             if k != "max_tracked_tasks" else ev.evicted_for_capacity or "")
            for k, v in sorted(info.caps.items())]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Celery Exporter: {_e(verdict)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Celery Exporter</h1><p><b>{_e(verdict)}</b></p><nav>{links}</nav>"
        f"<h2>Checks</h2>{_checks(results)}"
        f"<h2>Exporter</h2>{_table(('', ''), about, '')}"
        "<h2>Workers</h2>" + _table(
            ("worker", "Celery", "state", "last heartbeat", "active", "clock skew", "accepted while watched",
             "task events"), workers, "No worker has sent an event yet.")
        + "<h2>Queues and dead-letter queues</h2>" + _table(
            ("queue", "kind", "source", "depth", "why"), queues,
            "No poll result yet (or this broker is not polled).")
        + (f"<p>Named by task events only: {_e(', '.join(seen_only))}</p>" if seen_only else "")
        + "<h2>Caps</h2>" + _table(("option", "limit", "folded or dropped"), caps, "")
        + "</body></html>")


_CAP_KEYS = {"max_task_names": "task_name", "max_queues": "queue", "max_series": "series",
             "max_exception_types": "exception", "max_workers": "worker"}


def page_for(config: Any, ev: Evidence, results: Sequence[Result]) -> str:
    """The page of a running exporter (``config``: its Config), every URL, option and error redacted."""
    from exporter.cli import version_text
    from exporter.secrets import redact_options, redact_text, redact_url

    info = PageInfo(
        version=version_text(), broker=redact_url(config.broker_url),
        links=(config.web_telemetry_path, "/healthz", "/readyz"), caps=ev.settings.caps,
        transport_options=json.dumps(redact_options(config.broker_transport_options or {}), sort_keys=True),
        management_url=redact_url(config.rabbitmq_management_url or ""))
    ev = replace(ev, last_error=redact_text(ev.last_error, ev.settings.secrets))  # already, and once more
    return render_page(info, ev, results)


def basic_page(paths: Sequence[str], info: Mapping[str, str]) -> str:
    """A links page with a few rows: what ``/`` serves when the server has no status page."""
    from exporter import __version__

    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in info.items())
    links = "".join(f'<li><a href="{_e(p)}">{_e(p)}</a></li>' for p in paths)
    return ("<!doctype html><html><head><title>Celery Exporter</title></head><body>"
            f"<h1>Celery Exporter {_e(__version__)}</h1><ul>{links}</ul><table>{rows}</table></body></html>")
