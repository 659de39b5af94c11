"""The README and docs/ say what the code does: generated tables are current, every flag and metric the
README names exists, and every file it links to is there."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.collectors import all_specs
from exporter.config import OPTIONS
from exporter.docs import main as docs_main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_generated_docs_are_current() -> None:
    assert docs_main(["--check"]) == 0, "run: python -m exporter.docs"


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
    flags = {f for o in OPTIONS for f in o.all_flags} | {"--config", "--version", "--help"}
    # Commands of other tools (docker, kubectl, the benchmark scripts) have flags of their own.
    ours = re.sub(r"`(?:docker|kubectl|python benchmarks/)[^`]*`", "", README)
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z.-]*[a-z])", ours))
    assert named <= flags, named - flags


def test_every_linked_file_exists() -> None:
    for link in re.findall(r"\]\(((?!https?:)[^)#]+)", README):
        assert (ROOT / link).exists(), link
    for path in re.findall(r"`((?:alerts|dashboards|deploy|docs|benchmarks|scripts)/[^`\s]*)`", README):
        assert (ROOT / path).exists(), path
