"""The README's first command, exactly as a newcomer runs it: the quick start's ``pip install . &&
celery-exporter demo``, taken from the README's text, in a brand-new virtualenv that gets nothing else (no
test extras, no pytest: a dependency the suite's own virtualenv happens to bring cannot hide a missing
one). ``pip install .`` runs in a fresh copy of the checkout (a real, non-editable install, so a module or
file left out of the package fails here); ``celery-exporter demo`` runs from an empty folder outside it,
once with ``redis-server`` on PATH (the default broker choice) and once with a PATH without it (kombu's
in-memory transport). Each run must show every task outcome, a non-empty DLQ and a backed-up queue within
60 s, and stop on Ctrl-C to its process group within 10 s with status 0, leaving nothing running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._demo_helpers import interrupt_group, wait_for_outcomes

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEMO_PORT = 9808  # the literal command takes the default port
BASH = shutil.which("bash") or "/bin/bash"  # by full path: the memory run's PATH has only the venv


def first_command() -> str:
    """The first line of the README's first shell block: the quick start."""
    block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()[0]


def test_readme_names_the_commands_this_test_runs() -> None:
    assert first_command() == "pip install . && celery-exporter demo"
    assert "bash scripts/test.sh" in README and (ROOT / "scripts" / "test.sh").exists()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def clean_env(path: str) -> dict[str, str]:
    """The environment of a new terminal: no virtualenv or PYTHONPATH of the test run leaks in."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTEST_ADDOPTS")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CELERY_EXPORTER_")}
    return {**env, "PATH": path}


def copy_checkout(dest: Path) -> None:
    """The working tree's tracked and new files, as a fresh clone of this commit would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv with nothing but ``pip install .`` (the first half of the README's command, run by
    a shell in a copy of the checkout, as a user types it)."""
    base = tmp_path_factory.mktemp("readme")
    venv, clone = base / "venv", base / "clone"
    clone.mkdir()
    copy_checkout(clone)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = first_command().split(" && ")[0]
    assert install == "pip install ."
    env = clean_env(f"{venv / 'bin'}:{os.environ['PATH']}")
    pip = subprocess.run([BASH, "-c", f"{install} -q"], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list"], capture_output=True,
                            text=True, check=True).stdout
    assert not re.search(r"^(pytest|hypothesis|ruff|mypy)\s", listed, re.M | re.I), listed  # nothing extra
    yield venv


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_second_half(venv: Path, cwd: Path, path: str) -> tuple[subprocess.Popen, int, Path]:
    """``celery-exporter demo`` as the README writes it, by a shell in its own process group (a
    terminal's foreground job). Only when another program holds 9808 on this shared machine does the
    test add ``--port``: the command is otherwise the README's, byte for byte."""
    command = first_command().split(" && ")[1]
    port = DEMO_PORT
    if not port_free(port):
        from tests._support import free_port

        port = free_port()
        command += f" --port {port}"
    log = cwd / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BASH, "-c", f"exec {command}"], cwd=cwd, env=clean_env(path),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port, log


def versions_line(venv: Path, cwd: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "celery-exporter"), "--version"], capture_output=True,
                         text=True, timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout


BROKERS = [
    pytest.param("redis", "private redis-server", id="redis-server-on-PATH", marks=pytest.mark.skipif(
        not shutil.which("redis-server"), reason="no redis-server on PATH")),
    pytest.param("memory", "in-memory transport", id="no-redis-server"),
]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("broker", "announced"), BROKERS)
def test_readme_first_command_in_a_fresh_virtualenv(fresh_venv: Path, tmp_path: Path, broker: str,
                                                     announced: str) -> None:
    venv_bin = str(fresh_venv / "bin")
    # The memory run: a PATH with the virtualenv and nothing else, so no redis-server can be found.
    path = f"{venv_bin}:{os.environ['PATH']}" if broker == "redis" else venv_bin
    assert "celery-exporter" in versions_line(fresh_venv, tmp_path)
    proc, port, log = run_second_half(fresh_venv, tmp_path, path)
    try:
        wait_for_outcomes(proc, port, log)
        assert announced in log.read_text()
        interrupt_group(proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
