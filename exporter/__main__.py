"""``celery-exporter`` / ``python -m exporter``: parse the config, build the app, run until SIGTERM/SIGINT.
Subcommands: ``demo`` (exporter.demo) and ``generate`` (rules and dashboards, exporter.mixin.cli).

SIGHUP re-reads the configuration and applies what can change while running (``exporter.reload``: the
web config file, the log level), as Prometheus' own tools do; it never stops the process.

Exit status: 0 after a clean stop, 2 for a configuration error (one message naming the key and its
source; a broker URL option the driver refuses is one too), 1 if the exporter cannot start (for example,
the listen port is taken). No message shows a password (``exporter.secrets``).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from exporter.config import load_config_or_report
from exporter.options import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        from exporter.demo import main as demo_main

        return demo_main(args[1:])
    if args[:1] == ["doctor"]:
        from exporter.doctor import main as doctor_main

        return doctor_main(args[1:])
    if args[:1] == ["generate"]:
        from exporter.mixin.cli import main as generate_main

        return generate_main(args[1:])
    if "--version" in args:
        from exporter.cli import version_text

        print(version_text())
        return 0
    config = load_config_or_report(args, "celery-exporter")
    return 2 if config is None else run(config, args)


def run(config: object, argv: Sequence[str] = ()) -> int:
    import structlog

    from exporter.app import App
    from exporter.brokers.settings import BrokerSettingsError
    from exporter.config import Config
    from exporter.config_values import join_host_port
    from exporter.logs import configure_logging
    from exporter.reload import reload
    from exporter.secrets import describe_error, option_secrets, url_secrets

    assert isinstance(config, Config)
    configure_logging(config.log_level, config.log_format)
    log = structlog.get_logger("exporter")
    secrets = (*url_secrets(config.broker_url), *url_secrets(config.rabbitmq_management_url or ""),
               *option_secrets(config.broker_transport_options))
    try:
        app = App(config)
    except (ConfigError, BrokerSettingsError) as exc:
        print(f"celery-exporter: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot start", error=describe_error(exc, secrets),
                  listen=join_host_port(config.listen_address, config.port))
        return 1
    except ValueError as exc:  # a driver refusing a URL option (redis-py: ?socket_timeout=abc): no traceback
        print(f"celery-exporter: error: --broker-url: {describe_error(exc, secrets)}", file=sys.stderr)
        return 2

    stop, hup = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        hup.set()  # the reload itself runs below, in the main loop: no logging or I/O in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    app.start()
    while not stop.wait(0.2):
        if hup.is_set():
            hup.clear()
            log.info("signal received, reloading the configuration", signal="SIGHUP")
            reload(app, argv)
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
