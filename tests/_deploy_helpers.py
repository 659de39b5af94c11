"""Shared helpers of the deploy/ tests: paths, a Dockerfile parser, YAML loading, PromQL reference
extraction checked against ``exporter.collectors.all_specs()``, promtool runs, and structural schemas for
the CRDs (ServiceMonitor, PrometheusRule, ScaledObject) that kubernetes-validate has no schema for.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter.collectors import all_specs

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
SEED_HPA = REPO.parent / "shared" / "seeds" / "001_4115143979359264.txt"
K8S_VERSION = "1.30.0"  # the Kubernetes API version the manifests are validated against

# Labels Prometheus adds to every scraped series: target labels from the Prometheus Operator
# (ServiceMonitor) and the two that every scrape has.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# ------------------------------------------------------------------------------------------ Dockerfile
@dataclass
class Instruction:
    keyword: str  # upper-cased, e.g. "COPY"
    flags: dict[str, str]  # --from=build -> {"from": "build"}
    args: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
        return value


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


_FLAG = re.compile(r"--([a-z-]+)=(\S+)\s*")


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: line continuations joined, comment lines dropped, --flags split off.
    HEALTHCHECK keeps its CMD in ``args`` (e.g. ``CMD ["python", ...]``)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comment lines are removed even inside a continuation, as Docker does
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while (m := _FLAG.match(rest)) is not None:
            flags[m.group(1)] = m.group(2)
            rest = rest[m.end():]
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return stages


_VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)?([.-][A-Za-z0-9.-]+)?$")


def is_pinned(image: str) -> bool:
    """``name:1.2.3[-variant]`` or ``name@sha256:...``; never untagged, ``latest`` or a bare major."""
    if "@sha256:" in image:
        return True
    _, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag (the colon belonged to a registry port)
        return False
    return bool(_VERSION_TAG.match(tag))


# ------------------------------------------------------------------------------------- the contract
def exported_series() -> dict[str, frozenset[str]]:
    """Every series name PromQL can reference, with the label names the exporter gives it."""
    out: dict[str, frozenset[str]] = {}
    for spec in all_specs():
        for sample in spec.sample_names:
            labels = set(spec.labels)
            if spec.kind == "histogram" and sample.endswith("_bucket"):
                labels.add("le")
            out[sample] = frozenset(labels)
    return out


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_CELERY_NAME = re.compile(r"\bcelery_[A-Za-z0-9_:]*")


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def promql_selectors(expr: str) -> list[Selector]:
    out = []
    for m in _SELECTOR.finditer(expr):
        matchers = tuple((lm.group(1), lm.group(2), lm.group(3)) for lm in _MATCHER.finditer(m.group(2)))
        metric = m.group(1)
        for label, op, value in matchers:
            if label == "__name__" and op == "=":
                metric = value
        out.append(Selector(metric, matchers))
    return out


def promql_problems(expr: str, extra_labels: frozenset[str] = TARGET_LABELS) -> list[str]:
    """What in ``expr`` the exporter does not export: unknown celery_* series, labels a series does not
    carry, grouping labels no referenced series carries. Empty when the query reads only real data."""
    series = exported_series()
    problems: list[str] = []
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(_CELERY_NAME.findall(no_strings))
    for sel in promql_selectors(expr):
        if sel.metric:
            names.add(sel.metric)
    for name in sorted(names):
        if name not in series:
            problems.append(f"{name} is not a series the exporter serves")
    referenced: set[str] = set()
    for sel in promql_selectors(expr):
        if sel.metric is None:
            problems.append("selector without a metric name")
            continue
        allowed = series.get(sel.metric, frozenset()) | extra_labels
        referenced |= allowed
        for label, _, _ in sel.matchers:
            if label != "__name__" and label not in allowed:
                problems.append(f"{sel.metric} has no label {label!r}")
    for name in names:
        referenced |= series.get(name, frozenset()) | extra_labels
    for group in _GROUPING.findall(no_strings):
        for label in (g.strip() for g in group.split(",")):
            if label and label not in referenced:
                problems.append(f"grouping by {label!r}, which no referenced series carries")
    return problems


# ------------------------------------------------------------------------------------------ promtool
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path




# What a half-started service raises while ``wait_for`` polls it ("not yet"); anything else fails at once.
DEPLOY_NOT_UP = (requests.RequestException, ValueError, KeyError, IndexError)


def stop_processes(procs: Iterable[subprocess.Popen[Any]]) -> None:
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def run_tool(args: list[str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------------------ CRD structural schemas
# kubernetes-validate knows only built-in kinds. These schemas cover the fields of the operator/KEDA CRDs
# that our manifests use, closed with additionalProperties: false so a misspelt field fails the test.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STR_MAP,
                   "annotations": _STR_MAP},
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA,
                       "spec": spec},
        "additionalProperties": False,
    }


_RULE = {
    "type": "object",
    "oneOf": [{"required": ["alert", "expr"]}, {"required": ["record", "expr"]}],
    "properties": {"alert": {"type": "string"}, "record": {"type": "string"}, "expr": {"type": "string"},
                   "for": _DURATION, "keep_firing_for": _DURATION, "labels": _STR_MAP, "annotations": _STR_MAP},
    "additionalProperties": False,
}

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": _STR_MAP},
                         "required": ["matchLabels"], "additionalProperties": False},
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                               "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                               "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"}},
                "additionalProperties": False}},
        },
        "additionalProperties": False,
    }),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object",
        "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"],
            "properties": {"name": {"type": "string"}, "interval": _DURATION, "limit": {"type": "integer"},
                           "rules": {"type": "array", "items": _RULE}},
            "additionalProperties": False}}},
        "additionalProperties": False,
    }),
    ("keda.sh/v1alpha1", "ScaledObject"): _crd("keda.sh/v1alpha1", "ScaledObject", {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"],
                               "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                              "name": {"type": "string"}},
                               "additionalProperties": False},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["type", "metadata"],
                "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                               "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                               "metadata": _STR_MAP},  # KEDA trigger metadata values are all strings
                "additionalProperties": False}},
        },
        "additionalProperties": False,
    }),
}


def validate_manifest(doc: dict[str, Any]) -> None:
    """Validate one manifest: built-in kinds with kubernetes-validate (strict, pinned version), the CRDs
    we use with the schemas above. Raises on any problem; an unknown CRD kind is a problem too."""
    import jsonschema
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = run_tool([kubectl(), "kustomize", str(directory)])
    assert result.returncode == 0, result.stderr
    return load_yaml_docs(result.stdout)


def manifest_docs(path: Path) -> list[dict[str, Any]]:
    return load_yaml_docs(path.read_text(encoding="utf-8"))


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_named(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def seed_hpa() -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler manifest of shared/seeds/001, if the seeds are beside the repo."""
    if not SEED_HPA.exists():
        return None
    for block in re.findall(r"```yaml\n(.*?)```", SEED_HPA.read_text(encoding="utf-8"), flags=re.S):
        for doc in load_yaml_docs(block):
            if doc.get("kind") == "HorizontalPodAutoscaler":
                return doc
    raise AssertionError(f"{SEED_HPA} has no HorizontalPodAutoscaler manifest")
