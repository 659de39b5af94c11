"""Alertmanager wiring: the Compose stack's alertmanager.yml (the configuration docs/alerting.md shows) is
loaded into a real Alertmanager, fed by a real Prometheus evaluating rules rendered from alerts/config.yaml
(with test-sized `for` durations) over the real exporter, a real Celery worker and a private redis-server;
a local webhook stands in for the pager and the ticket queue.

- A DLQ burst delivers exactly one notification, CeleryDeadLetterQueueGrowing, to the pager, while the
  simultaneous CeleryDeadLetterQueueReceiving on the same queue is inhibited and never reaches tickets.
- The exporter losing its broker delivers CeleryExporterBlind and no other page or ticket, although the
  workers it can no longer hear turn "down" in its metrics.

The inhibit rules are also checked statically: each one's source and target match alerts of the rule file.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests._alerting_stack import (
    NOT_UP,
    REDIS_SERVER,
    Prom,
    child_env,
    private_redis,
    render_rules,
    start_alertmanager,
    start_exporter,
    start_prometheus,
    start_worker,
    webhook,
    write_prometheus_config,
)
from tests._prom_helpers import (
    ALERTMANAGER,
    PROMETHEUS,
    ROOT,
    SLO_RULES_FILE,
    Processes,
    alert_rules,
    load_rules,
)
from tests._support import free_port, wait_for

AM_CONFIG = ROOT / "deploy" / "compose" / "alertmanager" / "alertmanager.yml"
QUEUE = "am-e2e"
DLQ = "dlq:am.e2e"
PAGE, TICKET, BLIND = "CeleryDeadLetterQueueGrowing", "CeleryDeadLetterQueueReceiving", "CeleryExporterBlind"
# Test-sized values for the keys of alerts/config.yaml: seconds instead of minutes.
RULE_OVERRIDES = {
    "dlq_page_for": "1s", "dlq_ticket_for": "1s", "dlq_length_step": "2s", "blind_for": "2s",
    "no_workers_for": "1s", "worker_down_for": "1s", "events_stalled_for": "1s", "backlog_for": "1s",
    "poll_failing_for": "6s", "retries_exhausted_for": "1s",
}
WORKER_APP = '''
from celery import Celery
app = Celery("am_e2e", broker="{broker}")
app.conf.update(task_default_queue="{queue}", worker_send_task_events=True, broker_connection_retry_on_startup=True)
'''


# ------------------------------------------------------------------------------------------ static pairing
_MATCHER = re.compile(r'^(\w+)\s*(=~|!~|!=|=)\s*"(.*)"$')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager matchers against an alert's static labels; a label the rule file cannot know (queue,
    job: they come from the series) counts as present with any value."""
    for matcher in matchers:
        m = _MATCHER.match(matcher)
        assert m, matcher
        name, op, value = m.groups()
        if name not in labels:
            continue
        actual = labels[name]
        ok = {"=": actual == value, "!=": actual != value, "=~": re.fullmatch(value, actual) is not None,
              "!~": re.fullmatch(value, actual) is None}[op]
        if not ok:
            return False
    return True


def _static_labels() -> list[dict[str, str]]:
    """The shipped alerts and those an SLO and a schedule generate (alerts/examples/slo-config.yaml)."""
    return [{"alertname": a["alert"], **a["labels"]}
            for a in [*alert_rules(), *alert_rules(load_rules(SLO_RULES_FILE))]]


def test_every_inhibit_rule_pairs_alerts_of_the_rule_file() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text())
    alerts = _static_labels()
    assert len(config["inhibit_rules"]) >= 2
    for rule in config["inhibit_rules"]:
        sources = [(a["alertname"], a["severity"]) for a in alerts if _matches(rule["source_matchers"], a)]
        targets = [(a["alertname"], a["severity"]) for a in alerts if _matches(rule["target_matchers"], a)]
        assert sources and set(targets) - set(sources), rule
        assert {"cluster", "namespace", "job"} <= set(rule["equal"]), rule
    blind, per_queue, per_slo = config["inhibit_rules"]
    blinded = {a["alertname"] for a in alerts if _matches(blind["target_matchers"], a)}
    assert blinded == {a["alertname"] for a in alerts
                       if a["signal"] in ("events", "exporter") and a["alertname"] != BLIND}
    assert TICKET in {a["alertname"] for a in alerts if _matches(per_queue["target_matchers"], a)}
    assert "queue" in per_queue["equal"]
    assert "slo" in per_slo["equal"]


def test_docs_show_the_configuration_the_test_loads() -> None:
    """docs/alerting.md's example differs from the Compose file only in its receivers' integrations."""
    doc = (ROOT / "docs" / "alerting.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL) if "inhibit_rules:" in b]
    shown, tested = yaml.safe_load(block), yaml.safe_load(AM_CONFIG.read_text())
    assert shown["route"] == tested["route"]
    assert shown["inhibit_rules"] == tested["inhibit_rules"]
    assert [r["name"] for r in shown["receivers"]] == [r["name"] for r in tested["receivers"]]


def test_notifications_are_grouped_per_cluster_and_namespace() -> None:
    route = yaml.safe_load(AM_CONFIG.read_text())["route"]
    assert {"cluster", "namespace", "job", "queue", "alertname"} <= set(route["group_by"])


# ------------------------------------------------------------------------------------------ end to end
def _alertmanager_config(tmp: Path, hook_port: int) -> Path:
    """The Compose file with its receivers pointed at the webhook and timers in seconds; routes, group_by
    and inhibit rules untouched."""
    config = yaml.safe_load(AM_CONFIG.read_text())

    def shrink(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            route[key] = "1s"
        for child in route.get("routes", []):
            shrink(child)

    shrink(config["route"])
    for receiver in config["receivers"]:
        if receiver["name"] != "blackhole":
            receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{hook_port}/{receiver['name']}"}]
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _names(notifications: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(receiver path, alertname, status) of every alert in every notification."""
    return [(n["path"], a["labels"]["alertname"], a["status"]) for n in notifications for a in n["alerts"]]


def _am_alerts(port: int, name: str) -> list[dict[str, Any]]:
    answer = requests.get(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=5,
                          params={"filter": f'alertname="{name}"'})
    return list(answer.json())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None or ALERTMANAGER is None or REDIS_SERVER is None,
                    reason="needs prometheus, prometheus-alertmanager and redis-server (Debian packages): "
                           "the test stops its private broker")
def test_dlq_burst_pages_once_and_a_blind_exporter_pages_only_blind(tmp_path: Path) -> None:
    exporter_port, prom_port, am_port = free_port(), free_port(), free_port()
    procs = Processes(tmp_path)
    prom = Prom(prom_port)
    deadline = time.monotonic() + 90
    try:
        with private_redis() as (broker, client, server), webhook() as (hook_port, received):
            assert server is not None  # REDIS_SERVER: the test stops its private broker
            rules = render_rules(tmp_path, **RULE_OVERRIDES)
            start_alertmanager(procs, tmp_path, _alertmanager_config(tmp_path, hook_port), am_port)
            start_prometheus(procs, tmp_path, write_prometheus_config(tmp_path, rules, exporter_port, am_port),
                             prom_port)
            (tmp_path / "am_e2e.py").write_text(WORKER_APP.format(broker=broker, queue=QUEUE))
            env = child_env(tmp_path)
            start_exporter(procs, broker, exporter_port, env, "--worker-timeout", "3")
            start_worker(procs, "am-e2e", "am_e2e", QUEUE, tmp_path, env)

            def value(expr: str) -> float:
                procs.check_alive()
                return prom.value(expr)

            def context() -> str:
                return f"{prom.api('alerts')}\n{_names(received)}\n{procs.logs('prometheus', 'alertmanager')}"

            def left() -> float:
                return deadline - time.monotonic()

            wait_for(lambda: value('celery_workers{state="up"}') >= 1
                     and value("celery_exporter_broker_connected") == 1, left(), every=0.5,
                     what="a worker up and the stream connected, through Prometheus", errors=NOT_UP,
                     context=procs.logs)

            def letter() -> str:
                return json.dumps({"task_name": "am.e2e", "error": "boom",
                                   "timestamp": datetime.now(UTC).isoformat()})

            # An old letter, seen for the first time: not growth, so nothing fires.
            client.lpush(DLQ, letter())
            wait_for(lambda: value(f'celery_dead_letter_queue_length{{queue="{DLQ}"}}') == 1, left(), every=0.5,
                     what="the DLQ in Prometheus", errors=NOT_UP, context=context)
            time.sleep(4)
            assert not prom.firing() & {PAGE, TICKET}, context()

            # The burst: 200 dead letters at once.
            client.lpush(DLQ, *(letter() for _ in range(200)))
            wait_for(lambda: [n for n in _names(received) if n[1] == PAGE], left(), every=0.5,
                     what="the page at the webhook", errors=NOT_UP, context=context)
            # The ticket for the same queue fires too, and Alertmanager holds it back.
            inhibited = wait_for(lambda: [
                a for a in _am_alerts(am_port, TICKET) if a["status"]["state"] == "suppressed"
                and a["status"]["inhibitedBy"]], left(), every=0.5, what="the ticket inhibited at Alertmanager",
                errors=NOT_UP, context=context)
            assert inhibited[0]["labels"]["queue"] == DLQ
            time.sleep(4)  # several group intervals: anything else would have been sent by now
            pages = [n for n in received if any(a["labels"]["alertname"] == PAGE for a in n["alerts"])]
            assert len(pages) == 1, _names(received)
            (alert,) = pages[0]["alerts"]
            assert pages[0]["path"] == "/pager" and alert["status"] == "firing"
            assert alert["labels"] | {"queue": DLQ, "cluster": "e2e", "namespace": "celery",
                                      "severity": "critical"} == alert["labels"]
            # A whole count of the burst: increase() over the counter extrapolates to the window's edges,
            # so it may say more than the 200 letters (up to about a fifth), never fewer, never a fraction.
            shown = re.match(r"(\d+) messages were dead-lettered", alert["annotations"]["description"])
            assert shown is not None and 200 <= int(shown.group(1)) <= 250, alert["annotations"]
            assert _names(received) == [("/pager", PAGE, "firing")], "something besides the page was sent"

            # The exporter loses its broker (here the broker itself stops): one page, "blind".
            before = len(received)
            server.kill()
            wait_for(lambda: [n for n in _names(received[before:]) if n[1] == BLIND], left(), every=0.5,
                     what="the blind page", errors=NOT_UP, context=context)
            # The exporter now calls the worker down (no heartbeats): the ungated worker alerts would fire.
            wait_for(lambda: value('celery_workers{state="up"}') == 0, left(), every=0.5,
                     what="the worker down in the exporter's metrics", errors=NOT_UP, context=context)
            time.sleep(8)  # past every test-sized `for` and group interval
            after = _names(received[before:])
            assert {name for _, name, _ in after} == {BLIND}, after
            assert all(path == "/pager" and status == "firing" for path, _, status in after), after
            blind = next(a for n in received[before:] for a in n["alerts"])
            assert "event stream connected" in blind["annotations"]["description"]
            # Not merely inhibited at Alertmanager: gated on the stream, they do not fire at all.
            assert not prom.firing() & {"CeleryNoWorkersOnline", "CeleryWorkerDown", "CeleryTaskEventsStalled"}
    finally:
        procs.stop()
