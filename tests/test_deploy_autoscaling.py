"""Autoscaling on queue length (deploy/kubernetes/overlays/autoscaling and keda): the HPA is the seed's;
what the HPA, the prometheus-adapter rule and the KEDA trigger query is what the exporter exports
(checked against ``all_specs()``); promtool evaluates the queries over two exporter replicas so they do not
double the queue length; and, end to end, two real exporters on Redis scraped by a real Prometheus answer
both queries with the true depth."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests._deploy_helpers import (
    DEPLOY_NOT_UP,
    K8S,
    REPO,
    container_named,
    exported_series,
    load_yaml,
    manifest_docs,
    only,
    promql_problems,
    promtool,
    run_tool,
    seed_hpa,
    stop_processes,
)
from tests._support import free_port, wait_for

ADAPTER_CONFIG = K8S / "overlays" / "autoscaling" / "prometheus-adapter-config.yaml"


@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    return only(manifest_docs(K8S / "overlays" / "autoscaling" / "hpa.yaml"), "HorizontalPodAutoscaler")


def test_hpa_reads_celery_queue_length_of_queue_default(hpa: dict[str, Any]) -> None:
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {"name": "celery_queue_length",
                                            "selector": {"matchLabels": {"queue": "default"}}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "100"}
    series = exported_series()
    assert set(metric["external"]["metric"]["selector"]["matchLabels"]) <= series["celery_queue_length"]


def test_hpa_is_the_seed_manifest_plus_a_scale_down_behaviour(hpa: dict[str, Any]) -> None:
    seed = seed_hpa()
    if seed is None:
        pytest.skip("shared/seeds is not beside the repository")
    ours = {**hpa, "spec": {k: v for k, v in hpa["spec"].items() if k != "behavior"}}
    assert ours == seed


def test_hpa_scales_down_gradually(hpa: dict[str, Any]) -> None:
    """Between bursts the queue empties: the HPA must not drop to the minimum at once."""
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Percent" and p["value"] <= 50 for p in down["policies"])


def test_hpa_scales_the_sidecar_overlays_worker(hpa: dict[str, Any]) -> None:
    worker = only(manifest_docs(K8S / "overlays" / "sidecar" / "worker-deployment.yaml"), "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", worker["metadata"]["name"])


@pytest.fixture(scope="module")
def adapter_rule(hpa: dict[str, Any]) -> dict[str, Any]:
    config = load_yaml(ADAPTER_CONFIG)
    assert set(config) == {"externalRules"}
    name = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    serving = [r for r in config["externalRules"] if _adapter_metric_name(r) == name]
    assert len(serving) == 1, f"exactly one externalRule must serve {name}"
    return serving[0]


def _adapter_metric_name(rule: dict[str, Any]) -> str:
    (series,) = re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{", rule["seriesQuery"])
    naming = rule.get("name") or {}
    if naming:
        assert re.fullmatch(naming.get("matches", ".*"), series)
        return re.sub(naming.get("matches", ".*"), naming.get("as", "$0").replace("$", "\\"), series)
    return series


def _render_adapter_query(rule: dict[str, Any], hpa: dict[str, Any], namespace: str) -> str:
    """The PromQL prometheus-adapter sends for this HPA: its metricsQuery template filled in."""
    (series,) = re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{", rule["seriesQuery"])
    labels = dict(hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"])
    if "namespace" in (rule["resources"].get("overrides") or {}):
        labels["namespace"] = namespace
    matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
    query = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
    return query.replace("<<.GroupBy>>", ",".join(labels))


def test_adapter_rule_reads_only_exported_series(adapter_rule: dict[str, Any], hpa: dict[str, Any]) -> None:
    assert promql_problems(adapter_rule["seriesQuery"]) == []
    rendered = _render_adapter_query(adapter_rule, hpa, "celery")
    assert "<<" not in rendered
    assert promql_problems(rendered) == []
    resources = adapter_rule["resources"]
    assert resources.get("namespaced") is False or resources["overrides"] == {"namespace": {"resource": "namespace"}}


def test_promql_checker_catches_what_the_exporter_does_not_export() -> None:
    assert promql_problems('max(celery_queue_length{queue="default"}) by (queue)') == []
    assert promql_problems("celery_queue_depth") == ["celery_queue_depth is not a series the exporter serves"]
    assert promql_problems('celery_queue_length{task_name="x"}') == ["celery_queue_length has no label 'task_name'"]
    assert promql_problems("max(celery_queue_length) by (worker)") == [
        "grouping by 'worker', which no referenced series carries"]


@pytest.fixture(scope="module")
def scaled_object() -> dict[str, Any]:
    return only(manifest_docs(K8S / "overlays" / "keda" / "scaledobject.yaml"), "ScaledObject")


def test_keda_trigger_mirrors_the_hpa(scaled_object: dict[str, Any], hpa: dict[str, Any]) -> None:
    spec = scaled_object["spec"]
    assert spec["scaleTargetRef"] == hpa["spec"]["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["spec"]["minReplicas"],
                                                                   hpa["spec"]["maxReplicas"])
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"]
    assert trigger["metadata"]["serverAddress"].startswith("http")
    assert promql_problems(trigger["metadata"]["query"]) == []
    assert 'job="celery-exporter"' in trigger["metadata"]["query"]
    # The same scale-down as the HPA overlay.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"] == hpa["spec"]["behavior"]["scaleDown"]


def test_keda_falls_back_to_a_fixed_worker_count_when_the_exporter_is_down(scaled_object: dict[str, Any]) -> None:
    """With ignoreNullValues "false" a missing series is a query error, which is what KEDA's fallback
    counts; it needs metricType AverageValue (KEDA refuses a fallback on Value triggers)."""
    spec = scaled_object["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["metadata"]["ignoreNullValues"] == "false" and trigger["metricType"] == "AverageValue"
    fallback = spec["fallback"]
    assert fallback["failureThreshold"] >= 1
    assert spec["minReplicaCount"] <= fallback["replicas"] <= spec["maxReplicaCount"]


def test_two_exporter_replicas_do_not_double_the_queue_length(
    adapter_rule: dict[str, Any], hpa: dict[str, Any], scaled_object: dict[str, Any], tmp_path: Path
) -> None:
    """promtool evaluates the adapter's and KEDA's PromQL over two replicas reporting the same queue."""
    tool = promtool()
    replicas = [
        f'celery_queue_length{{queue="default",namespace="celery",job="celery-exporter",instance="{i}"}}'
        for i in ("10.0.0.1:9808", "10.0.0.2:9808")
    ]
    same_cluster = [{"series": s, "values": "150x5"} for s in replicas] + [
        {"series": 'celery_queue_length{queue="other",namespace="celery",instance="10.0.0.1:9808"}',
         "values": "999x5"}]
    other_cluster = {"series": 'celery_queue_length{queue="default",namespace="elsewhere",instance="x"}',
                     "values": "7000x5"}
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": [*same_cluster, other_cluster], "promql_expr_test": [{
                "expr": _render_adapter_query(adapter_rule, hpa, "celery"), "eval_time": "2m",
                "exp_samples": [{"labels": '{queue="default"}', "value": 150}]}]},
            {"interval": "1m", "input_series": same_cluster, "promql_expr_test": [{
                "expr": scaled_object["spec"]["triggers"][0]["metadata"]["query"], "eval_time": "2m",
                "exp_samples": [{"labels": "{}", "value": 150}]}]},
        ],
    }
    path = tmp_path / "autoscaling_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = run_tool([tool, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ end to end
def _answers_ok(url: str) -> bool | None:
    return requests.get(url, timeout=2).ok or None


def _answered(answer: list[dict[str, Any]] | None) -> bool:
    return answer is not None  # an empty answer is an answer: the assertion after the wait judges it


@pytest.mark.integration
@pytest.mark.slow
def test_autoscaler_queries_read_the_real_queue_length_through_prometheus(
    adapter_rule: dict[str, Any], hpa: dict[str, Any], scaled_object: dict[str, Any], tmp_path: Path
) -> None:
    """Two exporter replicas configured as the StatefulSet is, on the real Redis, scraped by a real
    Prometheus: the adapter's rendered query and KEDA's query both return the queue's true depth."""
    import redis
    from kombu import Connection, Exchange, Producer, Queue

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed")
    broker = "redis://127.0.0.1:6379/12"
    client = redis.Redis.from_url(broker)
    created = ("default", "_kombu.binding.default", "_kombu.binding_permanent.default")
    client.delete(*created)
    depth = 7
    with Connection(broker) as conn:
        queue = Queue("default", Exchange("default", type="direct"), routing_key="default")
        producer = Producer(conn.default_channel)
        for i in range(depth):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key="default", declare=[queue])

    deployment = only(manifest_docs(K8S / "base" / "statefulset.yaml"), "StatefulSet")
    container = container_named(deployment, "celery-exporter")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(CELERY_EXPORTER_BROKER_URL=broker, CELERY_EXPORTER_LISTEN_ADDRESS="127.0.0.1",
               CELERY_EXPORTER_POLL_INTERVAL="1")
    ports = [free_port(), free_port()]
    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "celery-exporter",
            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports],
                                "labels": {"namespace": "celery"}}],  # what a ServiceMonitor adds
        }],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "exporter"], cwd=REPO,
                env={**os.environ, **env, "CELERY_EXPORTER_PORT": str(port)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        probes = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
        for url in (f"http://127.0.0.1:{port}{path}" for port in ports for path in probes):
            # the manifest's probes, against the real daemons
            wait_for(functools.partial(_answers_ok, url), deadline - time.monotonic(), every=0.3, what=url,
                     errors=DEPLOY_NOT_UP)

        def query(expr: str) -> Callable[[], list[dict[str, Any]] | None]:
            def run() -> list[dict[str, Any]] | None:
                answer = requests.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": expr},
                                      timeout=5).json()["data"]["result"]
                # Both replicas must be scraped with the depth before the answer means anything.
                scraped = requests.get(f"http://127.0.0.1:{prom_port}/api/v1/query", timeout=5, params={
                    "query": f'count(celery_queue_length{{queue="default"}} == {depth})'}).json()["data"]["result"]
                if not scraped or scraped[0]["value"][1] != "2":
                    return None
                return answer

            return run

        adapter_answer = wait_for(query(_render_adapter_query(adapter_rule, hpa, "celery")),
                                  deadline - time.monotonic(), ok=_answered, every=0.3, what="the adapter query",
                                  errors=DEPLOY_NOT_UP)
        assert [(r["metric"], float(r["value"][1])) for r in adapter_answer] == [({"queue": "default"}, depth)]
        keda_answer = wait_for(query(scaled_object["spec"]["triggers"][0]["metadata"]["query"]),
                               deadline - time.monotonic(), ok=_answered, every=0.3, what="the KEDA query",
                               errors=DEPLOY_NOT_UP)
        assert [float(r["value"][1]) for r in keda_answer] == [depth]
    finally:
        stop_processes(procs)
        client.delete(*created)
