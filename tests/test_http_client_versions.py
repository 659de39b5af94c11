"""The custom renderer pinned to what is tested: the golden exposition files, the agreement with
client_python's own encoders and parsers, the wire tests and the render-isolation tests run again under
the lowest and the highest prometheus-client that pyproject.toml's dependency range allows.

Each version is installed with pip into a temporary directory put first on PYTHONPATH, so it shadows the
virtualenv's copy for a pytest subprocess (about 15 s a version, plus the download on a cold pip cache).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests._support import ROOT

pytestmark = pytest.mark.integration

TESTS = ["tests/test_collectors.py", "tests/test_http.py", "tests/test_http_render.py"]


def requirement() -> tuple[str, str]:
    """pyproject's prometheus-client requirement and its lower bound."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [d for d in deps if re.match(r"prometheus[-_]client\b", d, re.I)]
    lower = re.search(r">=\s*([0-9][0-9.]*)", req)
    assert lower, f"{req}: the range needs a lower bound to be tested"
    return req, lower.group(1)


@pytest.mark.parametrize("end", ["lowest", "highest"])
def test_renderer_under_each_end_of_the_dependency_range(end: str, tmp_path: Path) -> None:
    req, lower = requirement()
    spec = f"prometheus-client=={lower}" if end == "lowest" else req  # pip picks the newest allowed
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                          "--target", str(target), spec], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m, prometheus_client as p; "
                               "print(m.version('prometheus-client'), p.__file__)"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    version, path = probe.stdout.split()
    assert path.startswith(str(target)), probe.stdout + probe.stderr
    if end == "lowest":
        assert tuple(map(int, version.split("."))) [:len(lower.split("."))] == tuple(map(int, lower.split(".")))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, f"prometheus-client {version}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
