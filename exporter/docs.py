"""Generates the reference tables of README.md, docs/metrics.md and docs/configuration.md from the code
(``MetricSpec`` declarations and the config ``OPTIONS`` table).

    python -m exporter.docs          # rewrite the generated parts
    python -m exporter.docs --check  # exit 1 if any of them drifted (tests/test_docs.py does this)

Generated parts of README.md sit between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.collectors import all_specs
from exporter.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    if value is None or value == () or value == {}:
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in all_specs():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {_cell(spec.help)} |")
    return "\n".join(rows)


def config_table() -> str:
    rows = ["| flag | environment variable | YAML key | default | meaning |", "|---|---|---|---|---|"]
    rows.append(
        "| `--config` | `CELERY_EXPORTER_CONFIG` | - | (none) | YAML file with any of the keys below. |"
    )
    for opt in OPTIONS:
        default = _cell(_default(opt.default))
        flags = " ".join(f"`{f}`" for f in opt.all_flags)  # the documented spelling, then older ones
        rows.append(f"| {flags} | `{opt.env}` | `{opt.name}` | `{default}` | {_cell(opt.help)} |")
    return "\n".join(rows)


GENERATED = {"metrics": metrics_table, "configuration": config_table}

METRICS_DOC = """# Metrics reference

Generated from the code by `python -m exporter.docs`; `tests/test_docs.py` fails when it drifts.
Every metric below is served on `/metrics`. Task metrics never carry the worker's name (pods churn);
label values are bounded by `--max-task-names`, `--max-exception-types`, `--max-queues` and `--max-workers`,
and what overflows is folded into `__overflow__` and counted in `celery_exporter_label_overflow_total`.
The exporter also serves client_python's standard `process_*`, `python_info` and `python_gc_*` metrics.

<!-- BEGIN GENERATED: metrics -->
<!-- END GENERATED: metrics -->
"""

CONFIG_DOC = """# Configuration reference

Generated from the code by `python -m exporter.docs`; `tests/test_docs.py` fails when it drifts.
Precedence: command-line flag > environment variable > YAML file (`--config`) > default. An unknown YAML
key or `CELERY_EXPORTER_*` variable, a bad value, a missing broker URL or one that can never work (a
transport kombu does not know or whose library is not installed, a Redis database that is not a number)
stops the exporter with exit status 2 and one line naming the flag and where the value came from.
Flags follow the Prometheus exporter-toolkit spellings (`--web.listen-address`, `--log.level`, ...); where
a second spelling is listed, it is the older one and still works. `--web.listen-address=[HOST]:PORT` sets
the host and port together (`:9808` is every address); a `--listen-address` or `--port` given at a
higher precedence (a flag over an environment variable) still wins for its part.

Lists take comma-separated values in flags and environment variables; mappings (`task_routes`,
`broker_transport_options`) take YAML mappings in the file, `glob=queue,...` or a JSON object on the
command line. `celery-exporter --help` shows the same options in groups (broker, events and state,
polling, web, logging).

<!-- BEGIN GENERATED: configuration -->
<!-- END GENERATED: configuration -->
"""


def render(text: str) -> str:
    for name, make in GENERATED.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.DOTALL
        )
        table = make()

        def fill(m: re.Match[str], table: str = table) -> str:
            return m.group(1) + table + "\n" + m.group(2)

        text = pattern.sub(fill, text)
    return text


def targets() -> dict[Path, str]:
    out = {
        ROOT / "docs" / "metrics.md": render(METRICS_DOC),
        ROOT / "docs" / "configuration.md": render(CONFIG_DOC),
    }
    readme = ROOT / "README.md"
    if readme.exists():
        out[readme] = render(readme.read_text(encoding="utf-8"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    drifted = []
    for path, text in targets().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            drifted.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if check and drifted:
        print("out of date (run python -m exporter.docs):", ", ".join(str(p) for p in drifted))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
