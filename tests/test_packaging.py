"""The package's identity and dependency ranges: what ``pip install .`` gets and what it is called.

* every runtime dependency has an upper bound, and the versions this suite runs against lie inside the
  declared ranges (so a bound is one that was tested: raising it without a green run on the new series
  fails here, as does a CI image that drifted past it);
* the version lives in one place, ``exporter.__version__``: pyproject reads it, and every image tag of
  this project in deploy/, README and docs equals it;
* the LICENSE file is the license pyproject declares.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from exporter import __version__

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
# The distribution name on the package index; "celery-exporter" there is an unrelated project.
DIST_NAME = "celery-metrics-exporter"


def test_distribution_name_is_ours_and_the_console_script_keeps_its_name() -> None:
    assert PROJECT["name"] == DIST_NAME
    assert PROJECT["scripts"] == {"celery-exporter": "exporter.__main__:main"}


@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_runtime_dependency_has_an_upper_bound(req: Requirement) -> None:
    uppers = [s for s in req.specifier if s.operator in ("<", "<=", "~=", "==")]
    assert uppers, f"{req}: give it an upper bound (the next series after the newest tested release)"


@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_installed_version_lies_in_the_declared_range(req: Requirement) -> None:
    installed = md.version(req.name)
    assert req.specifier.contains(Version(installed), prereleases=True), (
        f"{req.name} {installed} is installed but pyproject declares {req.specifier}: either the bound was "
        "raised without testing, or this environment runs an untested release")


@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_upper_bound_sits_right_above_the_tested_series(req: Requirement) -> None:
    """``<5.8`` with 5.7.x installed, ``<9`` with 8.x: the bound admits nothing the suite has not run. A
    bound raised ahead of its test run (``<5.9`` while 5.7 is what installs) fails here."""
    (upper,) = [s for s in req.specifier if s.operator == "<"]
    bound = Version(upper.version).release
    installed = Version(md.version(req.name)).release
    n = len(bound)
    assert installed[: n - 1] == bound[: n - 1] and installed[n - 1] == bound[n - 1] - 1, (
        f"{req.name} {md.version(req.name)} is tested but the bound is {upper}: the next series after "
        f"the tested one is the bound")


@pytest.mark.parametrize("extra", ["redis"])
def test_the_transport_extras_are_installed(extra: str) -> None:
    """celery[redis]/kombu[redis] must bring what kombu's Redis transport imports; load it for real."""
    assert any(extra in r.extras for r in RUNTIME if r.name in ("celery", "kombu"))
    from kombu.transport import resolve_transport

    for url_scheme in ("redis", "rediss", "sentinel", "amqp", "memory"):
        resolve_transport(url_scheme)  # imports the transport module: ModuleNotFoundError fails here
    import kombu.transport.redis  # noqa: F401  (needs `packaging`, which only kombu[redis] declares)


def test_linters_live_in_the_dev_extra_not_in_test_or_runtime() -> None:
    extras = PROJECT["optional-dependencies"]
    dev = {Requirement(r).name.lower() for r in extras["dev"]}
    test = {Requirement(r).name.lower() for r in extras["test"]}
    assert {"ruff", "mypy", "types-pyyaml", "types-requests"} <= dev
    assert not test & {"ruff", "mypy", "types-pyyaml", "types-requests"}
    assert "kubernetes-validate" in test  # the manifest tests import it
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "'.[test,dev]'" in script


def test_version_is_declared_once_and_read_by_the_build() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


IMAGE_TAG = re.compile(r"\bcelery-exporter(?:-demo/sample-app)?:(\d+\.\d+\.\d+)\b")
TAGGED_FILES = [*sorted((ROOT / "deploy").rglob("*.y*ml")), ROOT / "deploy" / "docker" / "Dockerfile",
                ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_image_tag_of_this_project_is_the_package_version() -> None:
    seen = 0
    for path in TAGGED_FILES:
        text = path.read_text()
        for match in IMAGE_TAG.finditer(text):
            assert match.group(1) == __version__, f"{path.relative_to(ROOT)}: {match.group(0)}"
            seen += 1
        if path.name == "kustomization.yaml":  # `images:` entries retag ours (the worker's is the user's)
            for image in yaml.safe_load(text).get("images", []):
                if image["name"] == "celery-exporter":
                    assert image["newTag"] == __version__, f"{path.relative_to(ROOT)}: {image}"
                    seen += 1
    assert seen >= 6  # compose, both Deployments, kustomization, Dockerfile, docs: the regex still matches


def test_license_file_is_the_declared_license() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a one-line notice
    assert "License :: OSI Approved" not in " ".join(PROJECT["classifiers"])  # PEP 639: license = SPDX only


def test_project_urls_point_where_the_runbooks_do() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    rules = (ROOT / "alerts" / "celery-exporter.rules.yml").read_text()
    home = urls["Source"]
    assert f"{home}/blob/main/docs/runbooks.md" in rules


def test_the_installed_distribution_and_build_info_carry_the_package_version() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.collectors.stream import StreamCollector
    from exporter.config import state_settings
    from exporter.state import ClusterState
    from exporter.status import StreamStatus

    assert md.version(DIST_NAME) == __version__  # setuptools read exporter.__version__ at install
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(ClusterState(state_settings()).take_snapshot, StreamStatus()))
    assert 'celery_exporter_build_info{celery_version="' in generate_latest(registry).decode()
    assert f'version="{__version__}"' in generate_latest(registry).decode()
