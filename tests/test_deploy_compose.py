"""The Compose demo stack (deploy/compose), checked without a Docker engine: its structure, pins, paths
and ports, the Prometheus / Alertmanager / Grafana configs it mounts (with promtool and amtool where
installed), and the sample Celery app, whose tasks run eagerly and, in the integration test, on a real
worker against the real RabbitMQ to show the dead-letter exchange at work."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import requests
import yaml
from celery import signals

from exporter.config import OPTIONS, load_config
from tests._deploy_helpers import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    REPO,
    free_port,
    is_pinned,
    load_yaml,
    parse_dockerfile,
    promtool,
    run_tool,
    stop_processes,
    wait_until,
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
    assert {REPO / "alerts", REPO / "dashboards"} <= hosts


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


def test_prometheus_loads_every_rule_file_of_alerts(services: dict[str, dict[str, Any]]) -> None:
    prom = services["prometheus"]
    config = load_yaml(_host_path(prom, "/etc/prometheus/prometheus.yml"))
    globs = [_host_path(prom, g) for g in config["rule_files"]]
    loaded = {p for g in globs for p in g.parent.glob(g.name)}
    top_level = {p for p in (REPO / "alerts").iterdir() if p.suffix in (".yml", ".yaml")}
    # Rule files are the top-level YAML of alerts/ (promtool unit tests live in alerts/tests/).
    assert loaded == top_level


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


# ------------------------------------------------------------------------------------- the sample app
def _import_sample_app(monkeypatch: pytest.MonkeyPatch, broker: str, dlq: str) -> ModuleType:
    monkeypatch.setenv("CELERY_BROKER_URL", broker)
    monkeypatch.setenv("DLQ_REDIS_URL", dlq)
    monkeypatch.syspath_prepend(str(COMPOSE_DIR))
    for mod in [m for m in sys.modules if m == "sample_app" or m.startswith("sample_app.")]:
        monkeypatch.delitem(sys.modules, mod)
    return importlib.import_module("sample_app.tasks")


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    tasks = _import_sample_app(monkeypatch, "memory://", "redis://127.0.0.1:6379/13")
    tasks.app.conf.task_always_eager = True
    yield tasks
    tasks.app.close()


def test_sample_tasks_are_registered_and_the_producer_sends_each_of_them(sample: ModuleType) -> None:
    names = {n for n in sample.app.tasks if n.startswith("sample.")}
    assert names == {"sample.add", "sample.sleepy", "sample.always_fails", "sample.flaky", "sample.poison"}
    producer = importlib.import_module("sample_app.producer")
    sent: list[str] = []

    def record(sender: str | None = None, **_: Any) -> None:
        sent.append(str(sender))

    sample.app.conf.task_always_eager = False  # publish to the in-memory broker, run nothing
    signals.before_task_publish.connect(record)
    try:
        for _, send in producer.MIX:
            send()
    finally:
        signals.before_task_publish.disconnect(record)
    assert set(sent) == names


def test_sample_app_sends_events_and_uses_queue_default(sample: ModuleType) -> None:
    conf = sample.app.conf
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_default_queue == "default"  # the queue the seed's HPA scales on


def test_sample_flaky_retries_with_backoff_and_jitter(sample: ModuleType) -> None:
    flaky = sample.flaky
    assert flaky.autoretry_for == (ConnectionError,)
    assert flaky.retry_backoff and flaky.retry_jitter is True and flaky.max_retries == 3
    assert flaky.retry_backoff_max >= flaky.retry_backoff


def test_sample_topology_is_the_seed_dlx(sample: ModuleType) -> None:
    assert sample.DEFAULT_QUEUE.queue_arguments == {
        "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"}
    dlq = sample.DEAD_LETTER_QUEUE
    assert (dlq.name, dlq.exchange.name, dlq.exchange.type, dlq.routing_key) == (
        "dead_letters", "dlx", "direct", "dead_letter")


def test_sample_tasks_succeed_fail_and_reject_eagerly(sample: ModuleType) -> None:
    assert sample.add.delay(2, 3).get() == 5
    failed = sample.always_fails.delay("boom")
    assert failed.state == "FAILURE" and isinstance(failed.result, ValueError)
    assert sample.poison.delay().state == "REJECTED"


@pytest.mark.integration
def test_sample_flaky_dead_letters_into_redis_after_its_retries(sample: ModuleType) -> None:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    key = "dlq:sample.flaky"
    client.delete(key)
    try:
        result = sample.flaky.delay(1.0)
        assert result.state == "FAILURE" and isinstance(result.result, ConnectionError)
        (raw,) = client.lrange(key, 0, -1)
        entry = json.loads(raw)
        # The entry shape of shared/seeds/002 move_to_dlq.
        assert set(entry) == {"task_name", "task_id", "args", "error", "retries", "timestamp"}
        assert entry["task_name"] == "sample.flaky" and entry["retries"] == 3
        assert "attempt 4" in entry["error"]
        assert sample.flaky.delay(0.0).get() == "ok"
        assert client.llen(key) == 1  # a success dead-letters nothing
    finally:
        client.delete(key)


RABBIT_API = "http://127.0.0.1:15672/api"


@contextlib.contextmanager
def _rabbit_vhost() -> Iterator[str]:
    """A throw-away vhost, so the demo's queue names cannot clash with anything else on the broker."""
    vhost = f"deploy-test-{uuid.uuid4().hex[:8]}"
    auth = ("guest", "guest")
    try:
        requests.put(f"{RABBIT_API}/vhosts/{vhost}", auth=auth, timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.skip(f"RabbitMQ management API unavailable: {exc}")
    try:
        requests.put(f"{RABBIT_API}/permissions/{vhost}/guest", auth=auth, timeout=5,
                     json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        yield vhost
    finally:
        requests.delete(f"{RABBIT_API}/vhosts/{vhost}", auth=auth, timeout=5)


def _ready_count(conn: Any, queue: str) -> int | None:
    """Ready messages in a queue, or None while it does not exist (a fresh channel each time: a failed
    passive declare closes its channel)."""
    from amqp.exceptions import NotFound

    with conn.channel() as channel:
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except NotFound:
            return None


@pytest.mark.integration
def test_poison_task_is_dead_lettered_by_rabbitmq_on_a_real_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker command of the sample image, on the real RabbitMQ: a rejected task goes through the
    dlx exchange into dead_letters, which the worker declares when it is ready."""
    from kombu import Connection

    with _rabbit_vhost() as vhost:
        broker = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        tasks = _import_sample_app(monkeypatch, broker, "redis://127.0.0.1:6379/13")
        image = parse_dockerfile((COMPOSE_DIR / "sample_app" / "Dockerfile").read_text(encoding="utf-8"))
        command = image[-1].all("CMD")[-1].exec_form()
        assert command and command[:4] == ["celery", "-A", "sample_app.tasks", "worker"]
        argv = [sys.executable, "-m", *command, "--pool=solo", "--without-mingle", "--without-gossip"]
        env = {**os.environ, "CELERY_BROKER_URL": broker, "PYTHONPATH": str(COMPOSE_DIR)}
        worker = subprocess.Popen(argv, cwd=COMPOSE_DIR, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            with Connection(broker) as conn:
                deadline = time.monotonic() + 30
                while _ready_count(conn, "dead_letters") is None:
                    assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
                    assert time.monotonic() < deadline, "the worker never declared dead_letters"
                    time.sleep(0.2)
                tasks.poison.delay()
                tasks.add.delay(1, 2)
                while _ready_count(conn, "dead_letters") != 1:
                    assert time.monotonic() < deadline, "the rejected task was not dead-lettered"
                    time.sleep(0.2)
                with conn.channel() as channel:
                    message = channel.basic_get("dead_letters", no_ack=True)
                assert message is not None
                assert message.headers["task"] == "sample.poison"
                assert message.headers["x-death"][0]["reason"] == "rejected"
                assert _ready_count(conn, "default") == 0
        finally:
            stop_processes([worker])
            tasks.app.close()



def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


@pytest.mark.integration
@pytest.mark.slow
def test_redis_cluster_of_the_stack_shows_up_in_the_exporter(
    monkeypatch: pytest.MonkeyPatch, services: dict[str, dict[str, Any]]
) -> None:
    """The Redis half of the stack without Docker: the sample worker (its image's command) and the
    exporter (its service's environment), on the real Redis; sample tasks appear with queue "default",
    and the exhausted flaky task's dlq:sample.flaky list as a dead-letter queue."""
    import redis

    broker = "redis://127.0.0.1:6379/12"
    client = redis.Redis.from_url(broker)
    existing = set(client.keys("*"))  # db 12 is the deploy tests'; remove only what this test creates
    client.delete("dlq:sample.flaky")
    tasks = _import_sample_app(monkeypatch, broker, broker)
    image = parse_dockerfile((COMPOSE_DIR / "sample_app" / "Dockerfile").read_text(encoding="utf-8"))
    command = image[-1].all("CMD")[-1].exec_form()
    assert command
    exporter_env = {k: str(v) for k, v in services["exporter-redis"]["environment"].items()}
    exporter_env["CELERY_EXPORTER_BROKER_URL"] = broker
    port = free_port()
    env = {**os.environ, "CELERY_BROKER_URL": broker, "DLQ_REDIS_URL": broker, "PYTHONPATH": str(COMPOSE_DIR)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "exporter"], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, **exporter_env,
                                                         "CELERY_EXPORTER_PORT": str(port),
                                                         "CELERY_EXPORTER_POLL_INTERVAL": "1"}),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        # Subscribed before the worker's first events.
        wait_until("the exporter to be ready", lambda: requests.get(f"{url}/readyz", timeout=2).ok, deadline)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", *command, "--pool=solo", "--without-mingle", "--without-gossip"],
            cwd=COMPOSE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        tasks.add.delay(1, 2)
        tasks.always_fails.delay()
        tasks.flaky.apply_async((1.0,), retries=tasks.flaky.max_retries)  # the last attempt: dead-letters
        want = {
            ("celery_task_succeeded_total", frozenset({("task_name", "sample.add"), ("queue", "default")})),
            ("celery_task_failed_total", frozenset({("task_name", "sample.always_fails"), ("queue", "default"),
                                                    ("exception", "ValueError")})),
            ("celery_dead_letter_queue_length", frozenset({("queue", "dlq:sample.flaky")})),
        }
        while True:
            samples = _scrape(f"{url}/metrics")
            if all(samples.get(key, 0) >= 1 for key in want):
                break
            assert all(p.poll() is None for p in procs), "the exporter or the worker died"
            assert time.monotonic() < deadline, f"missing: {[k for k in want if not samples.get(k)]}"
            time.sleep(0.5)
        assert requests.get(f"{url}/healthz", timeout=5).ok
    finally:
        stop_processes(procs)
        tasks.app.close()
        created = set(client.keys("*")) - existing
        if created:
            client.delete(*created)

