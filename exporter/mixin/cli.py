"""``celery-exporter generate``: render the rules, the PrometheusRule or the dashboards from a rules
config, without a clone of the repository.

    celery-exporter generate rules --config my-alerts.yaml --output my.rules.yml
    celery-exporter generate prometheusrule --config my-alerts.yaml --output prometheusrule.yaml
    celery-exporter generate dashboards --config my-alerts.yaml --output dashboards/
    celery-exporter generate config            # the defaults, to start an override from

``--config`` names a YAML file with only the keys of the defaults (alerts/config.yaml) that you change;
without it the defaults render. Exit status 0, or 2 with one line naming the key (and SLO) at fault.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.mixin.config import MixinError, data_text, load_config
from exporter.mixin.dashboards import render as render_dashboards
from exporter.mixin.rules import render_prometheusrule, render_rules

PROG = "celery-exporter generate"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True,
                                metavar="{rules,prometheusrule,dashboards,config}")
    helps = {"rules": "a Prometheus rule file (alerts, recording rules, SLOs, schedules)",
             "prometheusrule": "the same groups as a Prometheus Operator PrometheusRule manifest",
             "dashboards": "the Grafana dashboards, one JSON file each, into the --output directory"}
    for what, text in helps.items():
        cmd = sub.add_parser(what, help=text, description=text)
        cmd.add_argument("--config", type=Path, metavar="FILE",
                         help="YAML with the keys of the defaults you change (see: generate config)")
        cmd.add_argument("--output", type=Path, metavar="DIR" if what == "dashboards" else "FILE",
                         required=what == "dashboards",
                         help="directory to write into" if what == "dashboards" else "file (default: stdout)")
        if what == "rules":
            cmd.add_argument("--template", type=Path, metavar="FILE",
                             help="your copy of alerts/rules.template.yml (default: the packaged one)")
        if what == "prometheusrule":
            cmd.add_argument("--name", default="celery-exporter", help="metadata.name of the manifest")
    sub.add_parser("config", help="print the default rules config (alerts/config.yaml)")
    return parser


def flags() -> set[str]:
    """Every option of the generate subcommands (the docs may name them)."""
    out: set[str] = set()
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for cmd in action.choices.values():
                out |= {flag for a in cmd._actions for flag in a.option_strings}
    return out


def _write(path: Path | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.what == "config":
        sys.stdout.write(data_text("config.yaml"))
        return 0
    try:
        config = load_config(args.config)
        if args.what == "dashboards":
            for name, text in render_dashboards(config).items():
                _write(args.output / name, text)
            return 0
        template = None
        if getattr(args, "template", None) is not None:
            try:
                template = args.template.read_text(encoding="utf-8")
            except OSError as exc:
                raise MixinError(f"{args.template}: cannot read ({exc.strerror or exc})") from None
        rules = render_rules(config, template)
        if args.what == "prometheusrule":
            rules = render_prometheusrule(rules, args.name)
        _write(args.output, rules)
    except MixinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
