"""The Compose demo stack (deploy/compose), checked without a Docker engine: its structure, pins, paths
and ports, and the Prometheus / Alertmanager / Grafana configs it mounts (with promtool and amtool where
installed). The sample Celery app it runs: test_deploy_sample_app.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from exporter.config import load_config
from exporter.options import OPTIONS
from tests._deploy_helpers import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    REPO,
    is_pinned,
    load_yaml,
    parse_dockerfile,
    promtool,
    run_tool,
)

EXPORTER_PORT = next(o.default for o in OPTIONS if o.name == "port")
KNOWN_ENV = {o.env for o in OPTIONS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _exporters(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {
        name: svc for name, svc in services.items()
        if (svc.get("build") or {}).get("dockerfile") == "deploy/docker/Dockerfile"
    }
    assert found, "no service is built from deploy/docker/Dockerfile"
    return found


def _volumes(svc: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount."""
    out = []
    for vol in svc.get("volumes", []):
        host, container = vol.split(":")[:2]
        assert host.startswith("."), f"{vol}: only bind mounts of repository paths are expected"
        out.append(((COMPOSE_DIR / host).resolve(), container))
    return out


def _host_path(svc: dict[str, Any], container_path: str) -> Path:
    """Where a path inside a container comes from on the host, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for host, mount in _volumes(svc):
        if target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents:
            return host / target.relative_to(mount)
    raise AssertionError(f"{container_path} is not mounted into the service")


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc, f"{name}: no image (built images get a versioned name too)"
        assert is_pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned to a version"


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    built = 0
    for name, svc in services.items():
        if "build" not in svc:
            continue
        built += 1
        context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
        dockerfile = context / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for stage in parse_dockerfile(dockerfile.read_text(encoding="utf-8")):
            assert is_pinned(stage.image), f"{dockerfile}: FROM {stage.image} is not pinned"
            for inst in stage.all("COPY"):
                if "from" not in inst.flags:
                    for src in inst.args.split()[:-1]:
                        assert (context / src).exists(), f"{dockerfile}: COPY {src} missing in {context}"
    assert built >= 2


def test_every_mounted_path_exists(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, host) for name, svc in services.items() for host, _ in _volumes(svc)]
    assert mounts
    for name, host in mounts:
        assert host.exists(), f"{name}: mounts {host}, which does not exist"
    hosts = {host for _, host in mounts}
    assert {COMPOSE_DIR / "prometheus" / "rules", REPO / "dashboards"} <= hosts


def test_published_ports_do_not_collide(services: dict[str, dict[str, Any]]) -> None:
    published = [str(p).split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert published and len(published) == len(set(published)), published


def test_depends_on_names_real_services(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_exporters_listen_on_9808_and_their_env_is_valid_config(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _exporters(services).items():
        container_ports = {str(p).split(":")[-1] for p in svc["ports"]}
        assert container_ports == {str(EXPORTER_PORT)}, name
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert set(env) <= KNOWN_ENV, f"{name}: unknown options {set(env) - KNOWN_ENV}"
        config = load_config([], env)
        assert config.port == EXPORTER_PORT
        assert config.broker_url.split("://")[0] in ("redis", "amqp")


def test_prometheus_scrapes_every_exporter(services: dict[str, dict[str, Any]]) -> None:
    prom = services["prometheus"]
    config = load_yaml(_host_path(prom, "/etc/prometheus/prometheus.yml"))
    targets = {
        t for job in config["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job.get("static_configs", []) for t in sc["targets"]
    }
    for name in _exporters(services):
        assert f"{name}:{EXPORTER_PORT}" in targets
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"] and "alertmanager" in services


def test_prometheus_loads_the_rules_rendered_for_compose(services: dict[str, dict[str, Any]]) -> None:
    """The demo loads the rules rendered from alerts/ with its own overrides (tools/rules.py)."""
    from tools import rules

    prom = services["prometheus"]
    config = load_yaml(_host_path(prom, "/etc/prometheus/prometheus.yml"))
    globs = [_host_path(prom, g) for g in config["rule_files"]]
    loaded = {p for g in globs for p in g.parent.glob(g.name)}
    assert loaded == {rules.COMPOSE_RULES}
    assert rules.COMPOSE_RULES.read_text(encoding="utf-8") == rules.render_rules(
        rules.load_config(rules.COMPOSE_CONFIG))


def test_promtool_accepts_the_prometheus_config_and_its_rules(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    tool = promtool()
    prom = services["prometheus"]
    config = load_yaml(_host_path(prom, "/etc/prometheus/prometheus.yml"))
    config["rule_files"] = [str(_host_path(prom, g)) for g in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_tool([tool, "check", "config", str(copy)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config(services: dict[str, dict[str, Any]]) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (apt-get install prometheus-alertmanager)")
    path = _host_path(services["alertmanager"], "/etc/alertmanager/alertmanager.yml")
    result = run_tool([amtool, "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisions_the_datasource_and_the_dashboards_dir(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    prov = _host_path(grafana, "/etc/grafana/provisioning")
    (datasource,) = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(prov / "dashboards" / "celery.yml")["providers"]
    assert _host_path(grafana, provider["options"]["path"]) == REPO / "dashboards"


def _datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


@pytest.mark.parametrize(
    "dashboard", sorted((REPO / "dashboards").glob("*.json")), ids=lambda p: p.name
)
def test_dashboards_use_the_provisioned_datasource(dashboard: Path, services: dict[str, dict[str, Any]]) -> None:
    """A file-provisioned dashboard cannot ask for ${DS_*} import inputs: every datasource reference is
    the provisioned uid, a datasource template variable of the dashboard, or the default."""
    prov = _host_path(services["grafana"], "/etc/grafana/provisioning")
    uid = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"][0]["uid"]
    board = json.loads(dashboard.read_text(encoding="utf-8"))
    variables = {v["name"] for v in board.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
    allowed = {None, uid, "Prometheus", "-- Grafana --", "grafana"} | {f"${v}" for v in variables} | {
        f"${{{v}}}" for v in variables}
    for ref in _datasource_refs(board):
        value = ref.get("uid") if isinstance(ref, dict) else ref
        assert value in allowed, f"{dashboard.name}: datasource {ref!r} is not provisioned"
