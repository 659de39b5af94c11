"""The Kubernetes manifests (deploy/kubernetes): every file and every rendered overlay validates against
the Kubernetes schemas (kubernetes-validate, pinned version) or our CRD schemas; the exporter containers
are hardened and probe endpoints the HTTP server serves; the sidecar overlay replaces the standalone
StatefulSet; the standalone exporter is a StatefulSet whose pod name names its RabbitMQ event queue;
the PrometheusRule is generated from alerts/ and, like the ServiceMonitor, carries the
operator's selector label. Autoscaling: test_deploy_autoscaling.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter import http
from exporter.config import load_config
from exporter.options import OPTIONS
from tests._deploy_helpers import (
    CRD_SCHEMAS,
    K8S,
    REPO,
    container_named,
    is_pinned,
    kustomize,
    load_yaml,
    load_yaml_docs,
    manifest_docs,
    only,
    validate_manifest,
)

EXPORTER_PORT = next(o.default for o in OPTIONS if o.name == "port")
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
NOT_MANIFESTS = {"kustomization.yaml", "prometheus-adapter-config.yaml"}
WORKLOADS = ("Deployment", "StatefulSet")
MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S))


# ------------------------------------------------------------------------------------ schema validation
def test_there_is_something_to_validate() -> None:
    assert {_rel(p) for p in KUSTOMIZATIONS} >= {
        "base", "overlays/sidecar", "overlays/autoscaling", "overlays/keda"}
    kinds = {d["kind"] for p in MANIFEST_FILES for d in manifest_docs(p)}
    assert kinds == {"ServiceAccount", "StatefulSet", "Deployment", "Service", "ServiceMonitor", "PrometheusRule",
                     "HorizontalPodAutoscaler", "ScaledObject"}


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=_rel)
def test_manifest_file_validates(path: Path) -> None:
    docs = manifest_docs(path)
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

    monitor = only(manifest_docs(K8S / "base" / "servicemonitor.yaml"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(monitor)
    scaled = only(manifest_docs(K8S / "overlays" / "keda" / "scaledobject.yaml"), "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 100  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled)
    assert len(CRD_SCHEMAS) == 3


def test_images_are_pinned_and_the_exporter_tag_is_the_project_version() -> None:
    from exporter import __version__ as version  # the one place the version lives

    for path in MANIFEST_FILES:
        for doc in manifest_docs(path):
            if doc["kind"] not in WORKLOADS:
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
        for doc in manifest_docs(path):
            if doc["kind"] in WORKLOADS:
                out.extend((_rel(path), c) for c in doc["spec"]["template"]["spec"]["containers"]
                           if c["name"] == "celery-exporter")
    assert len(out) == 2  # the standalone StatefulSet and the sidecar
    return out


@pytest.mark.parametrize(("where", "container"), _exporter_containers(), ids=lambda v: v if isinstance(v, str) else "")
def test_exporter_container_is_hardened_and_probes_real_endpoints(where: str, container: dict[str, Any]) -> None:
    assert container["livenessProbe"]["httpGet"]["path"] == http.HEALTH_PATH
    # A sidecar's readiness gates the worker pod's rollout: it must not depend on the exporter's broker
    # connection (/readyz), or a broker blip would stall worker deploys. The standalone exporter uses it.
    ready = http.HEALTH_PATH if where.startswith("overlays/sidecar") else http.READY_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == ready
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http-metrics", EXPORTER_PORT)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http-metrics"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "256Mi"}}
    env = {e["name"]: e for e in container["env"]}
    secret = env["CELERY_EXPORTER_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"] and "value" not in env["CELERY_EXPORTER_BROKER_URL"]
    known = {o.env for o in OPTIONS}
    assert set(env) <= known, f"unknown options: {set(env) - known}"
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    config = load_config([], {**values, "CELERY_EXPORTER_BROKER_URL": "redis://redis:6379/0"})
    assert config.port == EXPORTER_PORT
    assert "default" in config.queues  # the autoscalers' queue exists at zero from the first poll


def test_standalone_statefulset_runs_one_non_root_replica() -> None:
    deployment = only(manifest_docs(K8S / "base" / "statefulset.yaml"), "StatefulSet")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container_named(deployment, "celery-exporter")["volumeMounts"]}
    assert mounts == {"/tmp"}


def test_each_replica_names_its_event_queue_after_its_stable_pod_name() -> None:
    """A StatefulSet's pod names (celery-exporter-0, -1) survive rollouts and restarts; a Deployment's
    do not. Each replica's RabbitMQ event queue is named after its own pod, so a restarted replica drains
    what arrived meanwhile and an HA pair never shares (and splits) one queue. The sidecar keeps
    per-process queues: worker pods come and go, and a stable name would leave a queue behind each."""
    statefulset = only(kustomize(K8S / "base"), "StatefulSet")
    assert statefulset["spec"]["serviceName"] == "celery-exporter"
    env = {e["name"]: e for e in container_named(statefulset, "celery-exporter")["env"]}
    name = env["CELERY_EXPORTER_EVENT_QUEUE_NAME"]
    assert name == {"name": "CELERY_EXPORTER_EVENT_QUEUE_NAME",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    # What the downward API gives the process is a valid option value.
    config = load_config([], {"CELERY_EXPORTER_BROKER_URL": "amqp://rabbitmq//",
                              "CELERY_EXPORTER_EVENT_QUEUE_NAME": "celery-exporter-0"})
    assert config.event_queue_name == "celery-exporter-0"
    sidecar = only(kustomize(K8S / "overlays" / "sidecar"), "Deployment")
    sidecar_env = {e["name"] for e in container_named(sidecar, "celery-exporter")["env"]}
    assert "CELERY_EXPORTER_EVENT_QUEUE_NAME" not in sidecar_env


def test_service_and_servicemonitor_reach_the_metrics_endpoint() -> None:
    docs = kustomize(K8S / "base")
    service = only(docs, "Service")
    deployment = only(docs, "StatefulSet")
    monitor = only(docs, "ServiceMonitor")
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
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    worker = deployments[0]
    names = [c["name"] for c in worker["spec"]["template"]["spec"]["containers"]]
    assert names == ["celery-worker", "celery-exporter"]
    assert "-E" in container_named(worker, "celery-worker")["command"]  # workers must send events
    service = only(docs, "Service")
    assert service["spec"]["selector"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------------------------ PrometheusRule
def test_prometheusrule_is_generated_from_the_rules() -> None:
    from tools import rules

    committed = (K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert rules.targets()[rules.PROMETHEUSRULE] == committed, "stale: run python -m tools.generate"
    manifest = only(load_yaml_docs(committed), "PrometheusRule")
    assert manifest["spec"]["groups"] == load_yaml(rules.RULES)["groups"]


def test_operator_resources_carry_the_selector_label() -> None:
    """kube-prometheus-stack selects ServiceMonitors and PrometheusRules by `release` (documented and
    overridable in docs/deployment.md): both must carry it, with the same value."""
    monitor = only(manifest_docs(K8S / "base" / "servicemonitor.yaml"), "ServiceMonitor")
    rule = only(manifest_docs(K8S / "base" / "prometheusrule.yaml"), "PrometheusRule")
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]
    assert "release" in (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
