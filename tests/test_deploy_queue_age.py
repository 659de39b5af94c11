"""Scaling on queue age (deploy/kubernetes/examples/queue-age, and the adapter rule that serves it): the
KEDA trigger and the HPA read what the exporter exports, as a Value (an age does not divide among
workers), and promtool evaluates both queries over two exporter replicas: the age is not doubled, and an
empty queue reads 0, not nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._deploy_helpers import K8S, load_yaml, manifest_docs, only, promql_problems, promtool, run_tool

EXAMPLES = K8S / "examples" / "queue-age"
ADAPTER_CONFIG = K8S / "overlays" / "autoscaling" / "prometheus-adapter-config.yaml"
METRIC = "celery_queue_oldest_task_age_seconds"


@pytest.fixture(scope="module")
def scaled_object() -> dict[str, Any]:
    return only(manifest_docs(EXAMPLES / "scaledobject.yaml"), "ScaledObject")


@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    return only(manifest_docs(EXAMPLES / "hpa.yaml"), "HorizontalPodAutoscaler")


@pytest.fixture(scope="module")
def adapter_rule() -> dict[str, Any]:
    (rule,) = [r for r in load_yaml(ADAPTER_CONFIG)["externalRules"] if r["seriesQuery"].startswith(METRIC + "{")]
    return rule


def adapter_query(rule: dict[str, Any], hpa: dict[str, Any], namespace: str) -> str:
    labels = {**hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"], "namespace": namespace}
    matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return rule["metricsQuery"].replace("<<.Series>>", METRIC).replace("<<.LabelMatchers>>", matchers)


def test_keda_scales_on_the_age_as_a_value(scaled_object: dict[str, Any]) -> None:
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    query = trigger["metadata"]["query"]
    assert query.startswith(f"max({METRIC}{{") and promql_problems(query) == []
    assert trigger["metadata"]["ignoreNullValues"] == "false"  # blind: hold, never read 0


def test_the_hpa_and_the_adapter_rule_serve_the_same_age(hpa: dict[str, Any], adapter_rule: dict[str, Any],
                                                         scaled_object: dict[str, Any]) -> None:
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == METRIC
    assert metric["external"]["target"] == {"type": "Value", "value": "120"}
    assert scaled_object["spec"]["triggers"][0]["metadata"]["threshold"] == "120"
    assert scaled_object["spec"]["scaleTargetRef"] == hpa["spec"]["scaleTargetRef"]
    assert promql_problems(adapter_rule["seriesQuery"]) == []
    rendered = adapter_query(adapter_rule, hpa, "celery")
    assert "<<" not in rendered and promql_problems(rendered) == []


def test_two_replicas_do_not_double_the_age_and_an_empty_queue_reads_zero(
    hpa: dict[str, Any], adapter_rule: dict[str, Any], scaled_object: dict[str, Any], tmp_path: Path
) -> None:
    def series(queue: str, instance: str, values: str) -> dict[str, str]:
        labels = f'queue="{queue}",namespace="celery",job="celery-exporter",instance="{instance}"'
        return {"series": f"{METRIC}{{{labels}}}", "values": values}

    stalled = [series("reports", "10.0.0.1:9808", "0+60x5"), series("reports", "10.0.0.2:9808", "0+60x5")]
    empty = [series("reports", "10.0.0.1:9808", "0x5"), series("reports", "10.0.0.2:9808", "0x5")]
    keda = scaled_object["spec"]["triggers"][0]["metadata"]["query"]
    adapter = adapter_query(adapter_rule, hpa, "celery")
    tests = {"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": stalled, "promql_expr_test": [
            {"expr": keda, "eval_time": "3m", "exp_samples": [{"labels": "{}", "value": 180}]},
            {"expr": adapter, "eval_time": "3m", "exp_samples": [{"labels": '{queue="reports"}', "value": 180}]},
        ]},
        {"interval": "1m", "input_series": empty, "promql_expr_test": [
            {"expr": keda, "eval_time": "3m", "exp_samples": [{"labels": "{}", "value": 0}]},
        ]},
    ]}
    path = tmp_path / "queue_age_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = run_tool([promtool(), "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
