"""``celery-exporter doctor``: watch the broker for a bounded time, then print what the diagnosis checks
found, grouped by status, with their evidence and fixes.

It runs the exporter's own components (``App(serve=False)``: the event stream, the pollers, the state)
with every option the daemon takes, so it sees exactly what the daemon would. It never changes the broker:
on Redis it only subscribes and reads (SCAN, LLEN, TYPE, LINDEX); on RabbitMQ its event queue is
exclusive and auto-deleted (gone with its connection), Celery's exchange is declared passively only, and
queues are read through the management API or passive declares.

Exit status: 0 when no check is a problem, 1 when one is, 2 for a configuration error (as the daemon).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TextIO

from exporter.diagnosis import ORDER, Evidence, Result, Status, worst

DEFAULT_DURATION = 15.0
PROGRESS_EVERY = 1.0  # seconds between progress updates on a terminal
LOG_PROGRESS_EVERY = 5.0  # ... and between progress lines when stderr is not a terminal

PARSER = argparse.ArgumentParser(
    prog="celery-exporter doctor",
    description="Watch the Celery cluster for a while and say what would keep its metrics from being right. "
                "Takes every option of celery-exporter (--broker-url, --broker-transport-options, "
                "--rabbitmq-management-url, the caps, ...; see celery-exporter --help).",
)
PARSER.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                    help=f"Seconds to watch before reporting (default {DEFAULT_DURATION:g}).")
PARSER.add_argument("--output", choices=("text", "json"), default="text", help="Report format.")


def main(argv: Sequence[str]) -> int:
    from exporter.config import load_config_or_report

    if any(a in ("-h", "--help") for a in argv):
        PARSER.print_help()
        return 0
    own, rest = PARSER.parse_known_args(list(argv))
    if not 0 < own.duration <= 3600:
        print("celery-exporter doctor: error: --duration must be between 0 and 3600 seconds", file=sys.stderr)
        return 2
    config = load_config_or_report(rest, "celery-exporter doctor")
    return 2 if config is None else diagnose(config, own.duration, own.output, sys.stdout, sys.stderr)


def diagnose(config: Any, duration: float, output: str, out: TextIO, err: TextIO) -> int:
    from exporter.app import App
    from exporter.brokers.settings import BrokerSettingsError
    from exporter.config import ConfigError
    from exporter.logs import configure_logging
    from exporter.secrets import describe_error, option_secrets, redact_url, url_secrets

    configure_logging("error", config.log_format, stream=err)  # the report is the output
    # Nothing created on the broker, the daemon's stable event queue (if configured) never touched, and
    # no remote-control broadcast to the workers (the in-flight inventory).
    config = replace(config, event_queue_mode="exclusive", event_queue_name=None, inventory_timeout=0.0)
    secrets = (*url_secrets(config.broker_url), *url_secrets(config.rabbitmq_management_url or ""),
               *option_secrets(config.broker_transport_options))
    try:
        app = App(config, serve=False)
    except (ConfigError, BrokerSettingsError, ValueError) as exc:
        print(f"celery-exporter doctor: error: {describe_error(exc, secrets)}", file=err)
        return 2
    where = redact_url(config.broker_url)
    app.start()
    try:
        deadline = time.monotonic() + duration
        shown = -LOG_PROGRESS_EVERY
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(PROGRESS_EVERY, left))
            ev, _ = app.diagnoser.check(force=True)
            line = _progress(where, duration, ev)
            if err.isatty():
                err.write("\r" + line[:150].ljust(80))
            elif ev.watched - shown >= LOG_PROGRESS_EVERY:  # a log or CI: a line now and then
                err.write(line + "\n")
                shown = ev.watched
            err.flush()
        ev, results = app.diagnoser.check(force=True)
    finally:
        if err.isatty():
            err.write("\n")
        app.stop(timeout=3.0)
    if output == "json":
        json.dump(report_json(where, ev, results), out, indent=2)
        out.write("\n")
    else:
        out.write(report_text(where, ev, results))
    return 1 if worst(results) is Status.PROBLEM else 0


def _progress(where: str, duration: float, ev: Evidence) -> str:
    return (f"watching {where} for {duration:g}s: {min(ev.watched, duration):.0f}s, "
            f"{'connected' if ev.connected else 'not connected'}, {len(ev.workers)} worker(s), "
            f"{sum(ev.events_by_type.values())} event(s)")


def report_text(where: str, ev: Evidence, results: Sequence[Result]) -> str:
    verdict = worst(list(results))
    lines = [f"celery-exporter doctor: {where}, watched {ev.watched:.0f}s, {len(ev.workers)} worker(s), "
             f"{sum(ev.events_by_type.values())} event(s)", ""]
    for status in ORDER:
        group = [r for r in results if r.status is status]
        if not group:
            continue
        lines.append(f"{status.label.upper()} ({len(group)})")
        for r in group:
            lines.append(f"  {r.check}: {r.summary}")
            lines += [f"      - {line}" for line in r.evidence]
            if r.fix and status in (Status.PROBLEM, Status.WARNING):
                lines.append(f"      fix: {r.fix}")
        lines.append("")
    lines.append({Status.PROBLEM: "Result: problems found (exit status 1).",
                  Status.WARNING: "Result: warnings only (exit status 0).",
                  Status.OK: "Result: no problem found (exit status 0)."}.get(verdict, ""))
    return "\n".join(lines) + "\n"


def report_json(where: str, ev: Evidence, results: Sequence[Result]) -> dict[str, Any]:
    return {
        "broker": where,
        "watched_seconds": round(ev.watched, 1),
        "status": worst(list(results)).label,
        "checks": [r.as_dict() for r in results],
        "workers": [{"name": w.name, "version": w.version, "online": w.online, "active": w.active,
                     "clock_skew_seconds": w.clock_skew, "processed": w.processed,
                     "task_events": w.task_events} for w in ev.workers],
        "queues": [{"name": q.name, "kind": q.kind, "source": q.source, "depth": q.depth, "why": q.reason}
                   for q in ev.queues],
    }
