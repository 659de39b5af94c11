"""The one entry point of the repository's generators: docs tables (tools/docs.py), alert rules and the
PrometheusRule (tools/rules.py), Grafana dashboards (tools/dashboards.py).

    python -m tools.generate            # rewrite every generated file
    python -m tools.generate --check    # exit 1, naming the stale files, if any differs (CI runs this)
    python -m tools.generate rules --config my-alerts.yaml --output my.rules.yml
                                        # the rules with your overrides of alerts/config.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tools import dashboards, docs, rules

ROOT = Path(__file__).resolve().parent.parent
GENERATORS: dict[str, Callable[[], dict[Path, str]]] = {
    "docs": docs.targets,
    "rules": rules.targets,
    "dashboards": dashboards.targets,
}


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale() -> list[Path]:
    """Generated files whose committed text differs from what the generators produce now."""
    out = []
    for make in GENERATORS.values():
        for path, text in make().items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                out.append(path)
    return out


def write_all() -> list[Path]:
    written = []
    for make in GENERATORS.values():
        for path, text in make().items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    sub = parser.add_subparsers(dest="command")
    custom = sub.add_parser("rules", help="render the rules with an override of alerts/config.yaml")
    custom.add_argument("--config", type=Path, required=True, help="YAML with the keys you change")
    custom.add_argument("--output", type=Path, help="rule file to write (default: stdout)")
    custom.add_argument("--template", type=Path, default=rules.TEMPLATE,
                        help="your copy of alerts/rules.template.yml (default: the repository's)")
    custom.add_argument("--prometheusrule", action="store_true", help="emit a PrometheusRule manifest")
    args = parser.parse_args(argv)
    if args.command == "rules":
        try:
            text = rules.render_rules(rules.load_config(args.config), args.template)
        except rules.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.prometheusrule:
            text = rules.render_prometheusrule(text)
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return 0
    if args.check:
        drifted = stale()
        for path in drifted:
            print(f"stale: {_show(path)}", file=sys.stderr)
        if drifted:
            print("run: python -m tools.generate", file=sys.stderr)
        return 1 if drifted else 0
    for path in write_all():
        print(f"wrote {_show(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
