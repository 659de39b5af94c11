"""The command line, generated from ``exporter.config.OPTIONS``: ``--help`` grouped as operators of other
Prometheus exporters expect (broker, events and state, polling, web, logging), with the exporter-toolkit
spellings (``--web.listen-address``, ``--log.level``, ...) first and the older ones still accepted, and
the ``--version`` text.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

from exporter import __version__
from exporter.config import CONFIG_ENV, GROUPS, OPTIONS, ConfigError
from exporter.secrets import redact_text

PROG = "celery-exporter"
USAGE = f"""{PROG} --broker-url URL [options]
       {PROG} demo [--broker auto|redis|memory] [--port PORT]   (a self-contained demo)
       {PROG} generate rules|prometheusrule|dashboards|config [--config FILE] [--output PATH]"""
DESCRIPTION = """\
Prometheus exporter for Celery: task and worker events, queue depths, retry queues and dead-letter
queues. Every option can also be set as an environment variable (CELERY_EXPORTER_<NAME>) or as a key
of the YAML file given by --config; flags win over the environment, which wins over the file."""
EXAMPLES = f"""examples:
  {PROG} --broker-url redis://localhost:6379/0
  {PROG} --broker-url amqp://guest:guest@rabbitmq:5672// --web.listen-address=:9808 --log.level=warn
  CELERY_EXPORTER_BROKER_URL=redis://redis:6379/0 {PROG} --config exporter.yml --web.config.file=web.yml"""


class _Given(argparse.Action):
    """Keeps the flag spelling used with the value, so an error can name the flag the user typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, (values, option_string or self.option_strings[0]))


class _GivenEach(_Given):
    """A repeatable flag: the values of every occurrence, as a list, with the first spelling used."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = getattr(namespace, self.dest, None)
        listed = [*given[0], values] if given else [values]
        spelling = given[1] if given else option_string or self.option_strings[0]
        setattr(namespace, self.dest, (listed, spelling))


class _Parser(argparse.ArgumentParser):
    """argparse quotes unrecognised arguments, which may be a password (a URL pasted after a typo'd
    flag): only their flag names are shown, and every message goes through ``redact_text``."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            shown = [e.split("=", 1)[0] if e.startswith("-") else "(a value)" for e in extras]
            self.error(f"unrecognized arguments: {' '.join(shown)}")
        return ns

    def error(self, message: str) -> NoReturn:
        super().error(redact_text(message))


def _shown_default(default: object) -> str | None:
    if default is None or default == () or default == {} or default == "":
        return None  # nothing worth printing: no "Default: None." noise
    if isinstance(default, tuple):
        return ", ".join(map(str, default))
    return str(default)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", dest="config_file", action=_Given,
                        help=f"YAML file with any of the options below (snake_case keys). Env: {CONFIG_ENV}.")
    parser.add_argument("--version", action="store_true",
                        help="Print the versions of the exporter, Python, Celery and kombu, and exit.")
    sections = {name: parser.add_argument_group(name) for name in GROUPS}
    for opt in OPTIONS:
        default = _shown_default(opt.default)
        text = f"{opt.help} Env: {opt.env}." + (f" Default: {default}." if default else "")
        # A secret-bearing default never exists, so --help is safe to print anywhere.
        sections[opt.group].add_argument(*opt.all_flags, dest=opt.name, metavar=opt.metavar,
                                         action=_GivenEach if opt.repeatable else _Given,
                                         help=text.replace("%", "%%"))
    return parser


def parse_flags(argv: Sequence[str] | None) -> dict[str, tuple[Any, str]]:
    """Each option given on the command line -> (raw value, the flag spelling used). argparse prints its
    own message for a malformed command line; that becomes a ConfigError with key "arguments"."""
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help: a success, not a configuration error
            raise
        raise ConfigError("arguments", "command line", "see the message above") from exc
    given = vars(ns)
    given.pop("version", None)
    return given


def version_text() -> str:
    """What ``celery_exporter_build_info`` carries, plus kombu (the transport layer under Celery)."""
    lines = [f"{PROG} {__version__}", f"  python: {platform.python_version()}"]
    for dist in ("celery", "kombu"):
        try:
            lines.append(f"  {dist}: {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"  {dist}: not installed")
    return "\n".join(lines)
