"""SIGHUP: re-read the configuration and apply what can change without a restart.

This is what Prometheus' own tools do (Prometheus and Alertmanager reload on SIGHUP, and keep running on
the old configuration when the new one does not load). ``__main__`` calls ``reload`` from the main
thread, never from the signal handler, with the same command line it started with; the environment and
the ``--config`` YAML file are read again.

Reloaded in place:

* the web config file (``--web-config-file``: TLS certificate and key, basic-auth users, response
  headers), read and validated whole, then swapped into the HTTP server for the next connection; a
  rotated certificate takes effect without a restart;
* the log level.

Every other option is used once, at start (the broker, the event queue, the pollers, the state's
limits): a change to one of them is named in a warning (never its value, which may hold a password) and
takes effect at the next restart. A configuration that no longer loads, or a web config file that no
longer validates, is refused with an error line and nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING

import structlog

from exporter.config import Config, load_config
from exporter.logs import configure_logging
from exporter.options import OPTIONS, ConfigError
from exporter.webconfig import web_security

if TYPE_CHECKING:
    from exporter.app import App

log = structlog.get_logger("exporter")

RELOADABLE = frozenset({"log_level", "web_config_file"})
_FLAGS = {o.name: o.flag for o in OPTIONS}


def needs_restart(old: Config, new: Config) -> list[str]:
    """The flags of options whose value changed but that only a restart applies."""
    return [_FLAGS.get(f.name, f.name) for f in fields(Config)
            if f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)]


def reload(app: App, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """Apply the reloadable part of the configuration ``argv`` and the environment give now.

    Returns False (and changes nothing) when it does not load."""
    try:
        new = load_config(argv, os.environ if environ is None else environ)
        ssl_context, authorize, headers = web_security(new.web_config_file)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("configuration reload refused; the running configuration stays", error=str(exc))
        return False
    old = app.config
    server = app.http
    assert server is not None  # only a serving App reloads (doctor's never does)
    server.ssl_context, server.authorize = ssl_context, authorize
    server.extra_headers = tuple((headers or {}).items())
    if new.log_level != old.log_level:
        configure_logging(new.log_level, old.log_format)
    app.config = replace(old, log_level=new.log_level, web_config_file=new.web_config_file)
    log.info("configuration reloaded", log_level=new.log_level, web_config_file=new.web_config_file)
    restart = needs_restart(old, new)
    if restart:
        log.warning("changed options apply only after a restart", options=restart)
    return True
