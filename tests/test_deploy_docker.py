"""The container image (deploy/docker/Dockerfile), checked without a Docker engine: its stages, base
image pins, non-root user, entrypoint, build context, and a HEALTHCHECK that is run for real against the
exporter's HTTP server."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from exporter import http
from exporter.config import load_config
from exporter.options import OPTIONS
from tests._deploy_helpers import DOCKERFILE, REPO, Stage, is_pinned, parse_dockerfile, pyproject

DEFAULT_PORT = next(o.default for o in OPTIONS if o.name == "port")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_parser_handles_continuations_flags_and_comments() -> None:
    parsed = parse_dockerfile(
        "# c\nFROM a:1.2 AS b\nRUN x \\\n  # inner comment\n  && y\nFROM c:3.4\n"
        "COPY --from=b /s /d\nHEALTHCHECK --interval=5s CMD [\"p\", \"-c\", \"1\"]\n"
    )
    assert [(s.image, s.name) for s in parsed] == [("a:1.2", "b"), ("c:3.4", None)]
    assert parsed[0].instructions[0].args == "x  && y"
    copy, health = parsed[1].instructions
    assert copy.flags == {"from": "b"} and copy.args == "/s /d"
    assert health.flags == {"interval": "5s"} and health.args.startswith("CMD [")


@pytest.mark.parametrize(
    ("image", "pinned"),
    [("python:3.11.13-slim-bookworm", True), ("redis:7.4.2-alpine", True), ("prom/prometheus:v2.54.1", True),
     ("x@sha256:" + "a" * 64, True), ("python:3.11-slim", True), ("python", False), ("python:latest", False),
     ("python:3", False), ("python:slim", False), ("localhost:5000/img", False)],
)
def test_pin_rule(image: str, pinned: bool) -> None:
    assert is_pinned(image) is pinned


def test_multi_stage_build_of_a_wheel_into_a_venv(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2
    build = stages[0]
    assert build.name, "the build stage needs a name for COPY --from"
    build_runs = " ".join(i.args for i in build.all("RUN"))
    assert "pip wheel" in build_runs and "venv" in build_runs
    assert not any("pip wheel" in i.args or "pip install" in i.args for i in final.all("RUN"))
    copies_from = [i for i in final.all("COPY") if i.flags.get("from") == build.name]
    assert [c.args.split() for c in copies_from] == [["/opt/venv", "/opt/venv"]]
    env = " ".join(i.args for i in final.all("ENV"))
    assert "/opt/venv/bin" in env  # the console script and the healthcheck's python come from the venv


def test_base_images_pinned_and_identical(stages: list[Stage]) -> None:
    for stage in stages:
        assert is_pinned(stage.image), f"FROM {stage.image} is not pinned to a version"
    # The venv is copied between stages: both must be the very same interpreter build.
    assert len({s.image for s in stages}) == 1


def test_runs_as_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid == "65532" and gid in ("", "65532")
    # Nothing after USER switches back.
    index = final.instructions.index(users[-1])
    assert not [i for i in final.instructions[index + 1:] if i.keyword == "USER"]


def test_entrypoint_is_the_declared_console_script(final: Stage) -> None:
    scripts = pyproject()["project"]["scripts"]
    entry = final.all("ENTRYPOINT")[-1].exec_form()
    assert entry is not None, "ENTRYPOINT must be exec form (no shell at run time)"
    assert entry == ["celery-exporter"] and entry[0] in scripts
    module, _, func = scripts[entry[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert not final.all("CMD"), "configuration comes from CELERY_EXPORTER_* variables, not CMD"


def test_exposes_the_default_port_and_env_names_are_options(final: Stage) -> None:
    assert [i.args for i in final.all("EXPOSE")] == [str(DEFAULT_PORT)]
    known = {o.env for o in OPTIONS}
    env: dict[str, str] = {}
    for inst in final.all("ENV"):
        for part in inst.args.split():
            key, _, value = part.partition("=")
            env[key] = value.strip('"')
    exporter_env = {k: v for k, v in env.items() if k.startswith("CELERY_EXPORTER_")}
    assert exporter_env and set(exporter_env) <= known
    assert "CELERY_EXPORTER_BROKER_URL" not in exporter_env  # a secret, supplied at run time
    config = load_config([], {**exporter_env, "CELERY_EXPORTER_BROKER_URL": "redis://r:6379/0"})
    assert config.port == DEFAULT_PORT


def test_copy_sources_exist_and_survive_the_dockerignore(stages: list[Stage]) -> None:
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    patterns = [p.strip() for p in ignore.read_text(encoding="utf-8").splitlines()
                if p.strip() and not p.startswith("#")]

    def excluded(path: str) -> bool:
        verdict = False
        for pattern in patterns:  # last match wins, as in Docker
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                verdict = not negate
        return verdict

    sources = []
    for stage in stages:
        for inst in stage.all("COPY") + stage.all("ADD"):
            if "from" in inst.flags:
                continue
            sources.extend(inst.args.split()[:-1])
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
        assert not excluded(src), f"COPY {src} is excluded by {ignore.name}"
    assert excluded("tests/test_state.py") and excluded(".git/config")


def _healthcheck_command(final: Stage) -> list[str]:
    inst = final.all("HEALTHCHECK")[-1]
    kind, _, rest = inst.args.partition(" ")
    assert kind == "CMD" and rest.lstrip().startswith("["), "HEALTHCHECK must be exec form: no shell"
    command = json.loads(rest)
    assert isinstance(command, list) and command
    return [str(part) for part in command]


def test_healthcheck_is_exec_form_python_on_healthz(final: Stage) -> None:
    command = _healthcheck_command(final)
    assert command[0] == "python" and command[1] == "-c"
    assert http.HEALTH_PATH in command[2]
    assert not {"curl", "wget", "sh", "/bin/sh"} & set(command)


def test_healthcheck_passes_when_alive_and_fails_when_not(final: Stage) -> None:
    """Runs the HEALTHCHECK's own command against the real HTTP server of the exporter."""
    command = _healthcheck_command(final)
    alive = {"ok": True}
    server = http.MetricsServer(
        "127.0.0.1", 0, CollectorRegistry(),
        http.Health(alive=lambda: (alive["ok"], "state"), ready=lambda: (True, "ready")),
    )
    server.start()
    try:
        env = {**os.environ, "CELERY_EXPORTER_PORT": str(server.port)}
        run = [sys.executable, *command[1:]]
        assert subprocess.run(run, env=env, capture_output=True, timeout=20).returncode == 0
        alive["ok"] = False
        failed = subprocess.run(run, env=env, capture_output=True, text=True, timeout=20)
        assert failed.returncode != 0 and "503" in failed.stderr
    finally:
        server.stop()
