"""The README and docs/ say what the code does: generated tables are current, every flag and metric the
README names exists, and every file it links to is there."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.collectors import all_specs
from exporter.doctor import PARSER as DOCTOR_PARSER
from exporter.mixin.cli import flags as generate_flags
from exporter.options import OPTIONS
from tools import docs, generate

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_generated_docs_are_current() -> None:
    for path, text in docs.targets().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m tools.generate"


def test_one_check_mode_covers_every_generated_file() -> None:
    """`python -m tools.generate --check` (run by scripts/test.sh) passes on a clean tree and knows every
    generated file: docs tables, rules, PrometheusRule, Compose rules and dashboards."""
    assert generate.main(["--check"]) == 0
    names = {path.relative_to(ROOT).as_posix() for make in generate.GENERATORS.values() for path in make()}
    assert {"README.md", "docs/metrics.md", "alerts/celery-exporter.rules.yml",
            "deploy/kubernetes/base/prometheusrule.yaml", "dashboards/celery-overview.json"} <= names


def test_generators_live_outside_the_runtime_package() -> None:
    assert not (ROOT / "exporter" / "docs.py").exists()
    assert not (ROOT / "dashboards" / "generate.py").exists()
    assert not (ROOT / "deploy" / "kubernetes" / "generate_prometheusrule.py").exists()


def test_every_metric_is_in_the_readme_table_and_no_other() -> None:
    table = README.split("<!-- BEGIN GENERATED: metrics -->")[1].split("<!-- END GENERATED: metrics -->")[0]
    named = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert named == {s.name for s in all_specs()}


def test_every_celery_metric_named_in_readme_exists() -> None:
    known = {n for s in all_specs() for n in (s.name, *s.sample_names, *s.labels)}
    named = set(re.findall(r"\b(celery_[a-z_]+)\b", README))
    # celery_app... appears in example Python module paths, not as a metric
    named = {n for n in named if not n.startswith("celery_app") and not n.endswith("_")}  # prefixes in grep examples
    assert named <= known, named - known


def test_every_flag_named_in_readme_exists() -> None:
    flags = {f for o in OPTIONS for f in o.all_flags} | {"--config", "--version", "--help"} | generate_flags()
    flags |= set(re.findall(r"--[a-z-]+", DOCTOR_PARSER.format_help()))  # celery-exporter doctor's own
    # Commands of other tools (docker, kubectl, the benchmark scripts, the generators) have flags of their own.
    ours = re.sub(r"`(?:docker|kubectl|python benchmarks/|python -m tools)[^`]*`", "", README)
    ours = re.sub(r"(?m)^python -m tools.*$", "", ours)
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z.-]*[a-z])", ours))
    assert named <= flags, named - flags


def test_every_linked_file_exists() -> None:
    for link in re.findall(r"\]\(((?!https?:)[^)#]+)", README):
        assert (ROOT / link).exists(), link
    for path in re.findall(r"`((?:alerts|dashboards|deploy|docs|benchmarks|scripts)/[^`\s]*)`", README):
        assert (ROOT / path).exists(), path
