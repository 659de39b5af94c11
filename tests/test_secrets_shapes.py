"""Every malformed URL shape, and transport options holding a password, through every output of the
real ``python -m exporter``: the exit message (flag, environment variable and YAML file), ``--help``,
``--version``, and, for the shapes the exporter accepts and runs with, its logs at debug level (stdout
and stderr), the index page ``/``, ``/metrics``, the probes and the HTTP error pages (404, 405, 400).

``CORE`` is part of every password below; any output holding it shows (part of) a password.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._support import Daemon, free_port, wait_for
from tests.test_secrets import run_cli

CORE = "Sh0wN0t9q"
DOWN = free_port()  # nothing listens here
SENTINEL_OPTIONS = json.dumps({"master_name": "mymaster", "sentinel_kwargs": {"password": f"{CORE}-sent"}})

# Refused at start (exit 2): the URL cannot be read as the user meant it.
REFUSED = {
    "port-not-a-number": f"redis://:{CORE}@127.0.0.1:notaport/0",
    "unencoded-slash": f"redis://:2024/{CORE}@127.0.0.1/0",
    "unencoded-hash": f"redis://:{CORE}#x@127.0.0.1/0",
    "unencoded-question-mark": f"redis://:{CORE}?x@127.0.0.1/0",
    "unencoded-semicolon": f"redis://u:{CORE};x@127.0.0.1/0",
    "amqp-unencoded-slash": f"amqp://guest:{CORE}/x@127.0.0.1:5672//",
    "second-sentinel-malformed": f"sentinel://:{CORE}@127.0.0.1:{DOWN};sentinel://:2024/{CORE}@127.0.0.1:1",
    "broken-ipv6": f"amqp://guest:{CORE}@[::1//",
}
# Accepted (the exporter runs and fails to connect, over and over): args for the daemon.
ACCEPTED = {
    "unencoded-at": ["--broker-url", f"redis://:{CORE}@x@127.0.0.1:{DOWN}/0"],
    "sentinel-list-with-passwords": ["--broker-url", f"sentinel://:{CORE}@127.0.0.1:{DOWN};"
                                     f"sentinel://:{CORE}2@127.0.0.1:{free_port()}/0",
                                     "--broker-transport-options", SENTINEL_OPTIONS],
    "management-url-unencoded-at": ["--broker-url", f"amqp://guest:{CORE}@127.0.0.1:5672//",
                                    "--rabbitmq-management-url", f"http://guest:{CORE}@x@127.0.0.1:15672"],
}


def no_leak(text: str, what: object) -> None:
    assert CORE not in text, f"{what}: a password is shown:\n{text}"


@pytest.mark.parametrize("shape", list(REFUSED))
def test_refused_shapes_exit_2_without_showing_the_password(shape: str, tmp_path: Path) -> None:
    url = REFUSED[shape]
    config = tmp_path / "exporter.yml"
    config.write_text(f"broker_url: '{url}'\n")
    for args, env in (
        (["--broker-url", url], {}),
        ([], {"CELERY_EXPORTER_BROKER_URL": url}),
        (["--config", str(config)], {}),
        (["--broker-url", "redis://127.0.0.1/0", "--rabbitmq-management-url", url.replace("redis", "http")], {}),
    ):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, (shape, args, proc.stderr)
        assert "value not shown" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        no_leak(proc.stdout + proc.stderr, (shape, args))
    for args in (["--help"], ["--version"]):
        proc = run_cli(*args, "--broker-url", url, env={"CELERY_EXPORTER_BROKER_URL": url})
        assert proc.returncode == 0, proc.stderr
        no_leak(proc.stdout + proc.stderr, (shape, args))


def test_transport_options_and_stray_arguments_are_never_echoed(tmp_path: Path) -> None:
    url = "sentinel://127.0.0.1:26379/0"
    broken = SENTINEL_OPTIONS[:-1]  # the closing brace missing
    config = tmp_path / "exporter.yml"
    config.write_text(f"broker_url: {url}\nbroker_transport_options: 5\n")
    for args, env in (
        (["--broker-url", url, "--broker-transport-options", broken], {}),
        (["--broker-url", url], {"CELERY_EXPORTER_BROKER_TRANSPORT_OPTIONS": broken}),
        (["--broker-url", url, "--broker-transport-options", f'["{CORE}"]'], {}),  # JSON, not an object
        (["--broker-url", url, "--broker-transport-options",
          json.dumps({"sentinel_kwargs": {"password": CORE}})], {}),  # no master_name: refused at build
        (["--broker-url", f"redis://127.0.0.1/0 {CORE}", f"redis://:{CORE}@h/0", f"--x={CORE}"], {}),
        (["--broker-url", f"redis://:{CORE}@127.0.0.1:1/0?socket_timeout=abc"], {}),  # refused by redis-py
    ):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        no_leak(proc.stdout + proc.stderr, args)
    from exporter.config import load_config

    config_obj = load_config(["--broker-url", url, "--broker-transport-options", SENTINEL_OPTIONS], {})
    assert "mymaster" in repr(config_obj)
    no_leak(repr(config_obj), "Config.__repr__")


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


@pytest.mark.integration
@pytest.mark.parametrize("shape", list(ACCEPTED))
def test_accepted_shapes_never_shown_in_logs_or_pages(shape: str,
                                                      exporter_process: Callable[..., Daemon]) -> None:
    daemon = exporter_process([*ACCEPTED[shape], "--log-level", "debug", "--log-format", "json",
                               "--poll-interval", "1", "--poll-timeout", "1"])
    wait_for(lambda: daemon.output().count("event stream cannot connect") >= 2, 30,
             what="two failed connects", context=daemon.output)
    wait_for(lambda: any(k.startswith("celery_exporter_poll_errors_total") and v > 0
                         for k, v in daemon.metrics().items()), 20, what="a failed poll")
    pages = [daemon.get(path) for path in ("/", "/metrics", "/healthz", "/readyz", "/nope")]
    assert pages[0][0] == 200 and b"127.0.0.1" in pages[0][1]
    assert pages[3][0] == 503 and pages[4][0] == 404
    raw = [raw_request(daemon.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
           raw_request(daemon.port, b"GARBAGE\r\n\r\n")]
    assert daemon.terminate() == 0
    for what, text in [("logs", daemon.output()), *((p, b.decode("utf-8", "replace")) for p, b in pages),
                       *(("raw", r.decode("utf-8", "replace")) for r in raw)]:
        no_leak(text, (shape, what))


def test_no_error_quotes_file_content(tmp_path: Path) -> None:
    files = {
        "url-as-key.yml": f"broker_url: redis://127.0.0.1/0\nredis://:{CORE}@h/0: 1\n",
        "bad-yaml.yml": f"broker_url: redis://127.0.0.1/0\nbroker_transport_options: {{password: {CORE}\n",
        "web-user.yml": f'basic_auth_users:\n  "admin:{CORE}": x\n',
        "web-hash.yml": f"basic_auth_users:\n  admin: {CORE}\n",
        "web-yaml.yml": f'basic_auth_users:\n  admin: "$2y$10${CORE}\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        flag = "--web.config.file" if name.startswith("web") else "--config"
        proc = run_cli(flag, str(tmp_path / name), *(["--broker-url", "redis://127.0.0.1:1/0"]
                                                       if flag != "--config" else []))
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        no_leak(proc.stdout + proc.stderr, name)
