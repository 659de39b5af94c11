"""The README's first command, exactly as a newcomer runs it: ``pip install .`` into a fresh virtualenv
(a real, non-editable install, so a module or file left out of the package fails here), then
``celery-exporter demo`` from outside the repository, serving live task metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests._support import wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_names_the_commands_this_test_runs() -> None:
    assert "pip install . && celery-exporter demo" in README
    assert "bash scripts/test.sh" in README and (ROOT / "scripts" / "test.sh").exists()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.integration
def test_pip_install_then_demo_from_a_fresh_virtualenv(tmp_path: Path, free_tcp_port: int) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    exe = venv / "bin" / "celery-exporter"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert re.fullmatch(r"celery-exporter \d+\.\d+\.\d+\n", version.stdout)

    port = free_tcp_port
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "demo", "--broker", "memory", "--port", str(port)], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = ""

        def scrape() -> str:
            nonlocal body
            body = ""
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
            return body

        # Stops early if the demo exits: the assertion below then shows its log.
        wait_for(lambda: proc.poll() is not None or re.search(r'^celery_task_succeeded_total\{[^}]*\} [1-9]',
                                                              scrape(), re.M),
                 60, every=0.5, what="a succeeded task in /metrics", errors=(OSError,),
                 context=lambda: log.read_text()[-3000:])
        assert re.search(r'^celery_task_succeeded_total\{[^}]*\} [1-9]', body, re.M), log.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
