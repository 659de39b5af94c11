"""The Kubernetes manifests (deploy/kubernetes): every file and every rendered overlay validates against
the Kubernetes schemas (kubernetes-validate, pinned version) or our CRD schemas; the Deployment is
hardened and probes endpoints the HTTP server serves; the PrometheusRule is generated from alerts/; the
HPA is the seed's; and what the HPA, prometheus-adapter rule and KEDA trigger query is what the exporter
exports (checked against ``all_specs()``), evaluated by promtool so two exporter replicas do not double
the queue length."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
import yaml

from exporter import http
from exporter.config import OPTIONS, load_config
from tests._deploy_helpers import (
    CRD_SCHEMAS,
    K8S,
    REPO,
    exported_series,
    free_port,
    is_pinned,
    kustomize,
    load_yaml,
    load_yaml_docs,
    promql_problems,
    promtool,
    pyproject,
    run_tool,
    seed_hpa,
    stop_processes,
    validate_manifest,
    wait_until,
)

EXPORTER_PORT = next(o.default for o in OPTIONS if o.name == "port")
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
NOT_MANIFESTS = {"kustomization.yaml", "prometheus-adapter-config.yaml"}
MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)
ADAPTER_CONFIG = K8S / "overlays" / "autoscaling" / "prometheus-adapter-config.yaml"


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S))


def _docs(path: Path) -> list[dict[str, Any]]:
    return load_yaml_docs(path.read_text(encoding="utf-8"))


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    path = K8S / "generate_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ schema validation
def test_there_is_something_to_validate() -> None:
    assert {_rel(p) for p in KUSTOMIZATIONS} >= {
        "base", "overlays/sidecar", "overlays/autoscaling", "overlays/keda"}
    kinds = {d["kind"] for p in MANIFEST_FILES for d in _docs(p)}
    assert kinds == {"ServiceAccount", "Deployment", "Service", "ServiceMonitor", "PrometheusRule",
                     "HorizontalPodAutoscaler", "ScaledObject"}


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=_rel)
def test_manifest_file_validates(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        validate_manifest(doc)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_renders_and_every_resource_validates(directory: Path) -> None:
    docs = kustomize(directory)
    assert docs
    for doc in docs:
        validate_manifest(doc)


def test_crd_schemas_reject_misspelt_fields() -> None:
    import jsonschema

    monitor = _one(_docs(K8S / "base" / "servicemonitor.yaml"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(monitor)
    scaled = _one(_docs(K8S / "overlays" / "keda" / "scaledobject.yaml"), "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 100  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled)
    assert len(CRD_SCHEMAS) == 3


def test_images_are_pinned_and_the_exporter_tag_is_the_project_version() -> None:
    version = pyproject()["project"]["version"]
    for path in MANIFEST_FILES:
        for doc in _docs(path):
            if doc["kind"] != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                image = container["image"]
                if container["name"] == "celery-exporter":
                    assert image == f"celery-exporter:{version}", path
                else:  # a placeholder the kustomization's images: entry pins
                    kustomization = load_yaml(path.parent / "kustomization.yaml")
                    (entry,) = [i for i in kustomization["images"] if i["name"] == image]
                    assert is_pinned(f"{entry['newName']}:{entry['newTag']}")


# ---------------------------------------------------------------------------------- the exporter pods
def _exporter_containers() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for path in MANIFEST_FILES:
        for doc in _docs(path):
            if doc["kind"] == "Deployment":
                out.extend((_rel(path), c) for c in doc["spec"]["template"]["spec"]["containers"]
                           if c["name"] == "celery-exporter")
    assert len(out) == 2  # the standalone Deployment and the sidecar
    return out


@pytest.mark.parametrize(("where", "container"), _exporter_containers(), ids=lambda v: v if isinstance(v, str) else "")
def test_exporter_container_is_hardened_and_probes_real_endpoints(where: str, container: dict[str, Any]) -> None:
    assert container["livenessProbe"]["httpGet"]["path"] == http.HEALTH_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == http.READY_PATH
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http-metrics", EXPORTER_PORT)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http-metrics"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}
    env = {e["name"]: e for e in container["env"]}
    secret = env["CELERY_EXPORTER_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"] and "value" not in env["CELERY_EXPORTER_BROKER_URL"]
    known = {o.env for o in OPTIONS}
    assert set(env) <= known, f"unknown options: {set(env) - known}"
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    config = load_config([], {**values, "CELERY_EXPORTER_BROKER_URL": "redis://redis:6379/0"})
    assert config.port == EXPORTER_PORT
    assert "default" in config.queues  # the autoscalers' queue exists at zero from the first poll


def test_standalone_deployment_runs_one_non_root_replica() -> None:
    deployment = _one(_docs(K8S / "base" / "deployment.yaml"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in _container(deployment, "celery-exporter")["volumeMounts"]}
    assert mounts == {"/tmp"}


def test_service_and_servicemonitor_reach_the_metrics_endpoint() -> None:
    docs = kustomize(K8S / "base")
    service = _one(docs, "Service")
    deployment = _one(docs, "Deployment")
    monitor = _one(docs, "ServiceMonitor")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http-metrics", EXPORTER_PORT, "http-metrics")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == http.METRICS_PATH


def test_sidecar_overlay_replaces_the_standalone_exporter() -> None:
    docs = kustomize(K8S / "overlays" / "sidecar")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["celery-worker-default"]
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    worker = deployments[0]
    names = [c["name"] for c in worker["spec"]["template"]["spec"]["containers"]]
    assert names == ["celery-worker", "celery-exporter"]
    assert "-E" in _container(worker, "celery-worker")["command"]  # workers must send events
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------------------------ PrometheusRule
def test_prometheusrule_is_generated_from_alerts(generator: ModuleType) -> None:
    committed = (K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert generator.render() == committed, "stale: run python deploy/kubernetes/generate_prometheusrule.py"
    groups = _one(load_yaml_docs(committed), "PrometheusRule")["spec"]["groups"]
    expected = [g for p in generator.rule_files() for g in (load_yaml(p) or {}).get("groups") or []]
    assert groups == expected


def test_generator_merges_rule_files_and_rejects_duplicate_groups(generator: ModuleType, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts"
    alerts.mkdir()
    rule = {"alert": "A", "expr": "up == 0\nor\nvector(1)", "for": "5m"}
    (alerts / "b.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "b", "rules": [rule]}]}))
    (alerts / "a.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "a", "rules": []}]}))
    (alerts / "a_test.yml").write_text("rule_files: [a.rules.yml]\n")  # promtool tests are not rules
    rendered = _one(load_yaml_docs(generator.render(tmp_path)), "PrometheusRule")
    assert rendered["spec"]["groups"] == [{"name": "a", "rules": []}, {"name": "b", "rules": [rule]}]
    assert "expr: |" in generator.render(tmp_path)  # multi-line PromQL stays readable
    (alerts / "c.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "a", "rules": []}]}))
    with pytest.raises(ValueError, match="also defined"):
        generator.render(tmp_path)


# --------------------------------------------------------------------------------------- autoscaling
@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    return _one(_docs(K8S / "overlays" / "autoscaling" / "hpa.yaml"), "HorizontalPodAutoscaler")


def test_hpa_reads_celery_queue_length_of_queue_default(hpa: dict[str, Any]) -> None:
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {"name": "celery_queue_length",
                                            "selector": {"matchLabels": {"queue": "default"}}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "100"}
    series = exported_series()
    assert set(metric["external"]["metric"]["selector"]["matchLabels"]) <= series["celery_queue_length"]


def test_hpa_is_the_seed_manifest(hpa: dict[str, Any]) -> None:
    seed = seed_hpa()
    if seed is None:
        pytest.skip("shared/seeds is not beside the repository")
    assert hpa == seed


def test_hpa_scales_the_sidecar_overlays_worker(hpa: dict[str, Any]) -> None:
    worker = _one(_docs(K8S / "overlays" / "sidecar" / "worker-deployment.yaml"), "Deployment")
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
    return _one(_docs(K8S / "overlays" / "keda" / "scaledobject.yaml"), "ScaledObject")


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


@pytest.mark.integration
@pytest.mark.slow
def test_autoscaler_queries_read_the_real_queue_length_through_prometheus(
    adapter_rule: dict[str, Any], hpa: dict[str, Any], scaled_object: dict[str, Any], tmp_path: Path
) -> None:
    """Two exporter replicas configured as the Deployment is, on the real Redis, scraped by a real
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

    container = _container(_one(_docs(K8S / "base" / "deployment.yaml"), "Deployment"), "celery-exporter")
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
            wait_until(url, functools.partial(_answers_ok, url), deadline)

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

        adapter_answer = wait_until("the adapter query", query(_render_adapter_query(adapter_rule, hpa, "celery")),
                                   deadline)
        assert [(r["metric"], float(r["value"][1])) for r in adapter_answer] == [({"queue": "default"}, depth)]
        keda_answer = wait_until("the KEDA query", query(scaled_object["spec"]["triggers"][0]["metadata"]["query"]),
                                deadline)
        assert [float(r["value"][1]) for r in keda_answer] == [depth]
    finally:
        stop_processes(procs)
        client.delete(*created)
