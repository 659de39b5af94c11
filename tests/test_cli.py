"""The installed ``celery-exporter`` command as an operator meets it: exporter-toolkit flags on a real
process against the real Redis, ``--help``, ``--version``, logfmt logs, and configuration errors that exit 2
with one line naming the flag.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest

from exporter import __version__
from exporter.options import GROUPS
from tests._support import free_port, terminated_on_exit, wait_for
from tests._support import http_get as get

COMMAND = Path(sys.executable).parent / "celery-exporter"  # the console script pip installed
REDIS_URL = "redis://127.0.0.1:6379/0"
# One logfmt pair: key=bare-value or key="quoted \" value".
LOGFMT_PAIR = re.compile(r'([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, timeout=60,
                          env={**_clean_env(), **(env or {})})


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_")}


@contextmanager
def exporter(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([str(COMMAND), "--broker-url", REDIS_URL, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**_clean_env(), "PYTHONUNBUFFERED": "1"})
    with terminated_on_exit(proc, 10):
        yield proc


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    return out


def test_toolkit_flags_serve_on_the_given_port_and_path() -> None:
    port = free_port()
    with exporter(f"--web.listen-address=:{port}", "--log.level", "warn",
                  "--web.telemetry-path=/custom-metrics") as proc:
        # ":PORT" is every address: IPv4 and, where the host has it, IPv6
        wait_for(lambda: get("127.0.0.1", port, "/healthz")[0] == 200 or proc.poll() is not None, 20,
                 what="the exporter to listen")
        status, body = get("127.0.0.1", port, "/custom-metrics")
        assert status == 200 and b"celery_exporter_build_info" in body
        assert get("127.0.0.1", port, "/metrics")[0] == 404
        assert b'href="/custom-metrics"' in get("127.0.0.1", port, "/")[1]
        if socket.has_ipv6:
            assert get("::1", port, "/healthz")[0] == 200
        out = stop(proc)
    # warn: the info lines ("celery-exporter started") are not printed
    assert "celery-exporter started" not in out, out


def test_ipv6_listen_address_and_logfmt_logs() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    port = free_port()
    with exporter(f"--web.listen-address=[::1]:{port}", "--log.format=logfmt") as proc:
        wait_for(lambda: get("::1", port, "/healthz")[0] == 200 or proc.poll() is not None, 20,
                 what="the exporter to listen on ::1")
        with pytest.raises(OSError):
            get("127.0.0.1", port, "/healthz")
        out = stop(proc)
    lines = [line for line in out.splitlines() if line.strip()]
    started = [line for line in lines if "celery-exporter started" in line]
    assert started, out
    for line in lines:  # every line is logfmt: key=value pairs and nothing else
        assert LOGFMT_PAIR.sub("", line).strip() == "", line
    pairs = dict(LOGFMT_PAIR.findall(started[0]))
    assert pairs["level"] == "info" and pairs["event"] == '"celery-exporter started"'
    assert pairs["listen"] == f"[::1]:{port}"


def test_old_spellings_still_work() -> None:
    port = free_port()
    with exporter("--listen-address", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                  "--log-format", "json") as proc:
        wait_for(lambda: get("127.0.0.1", port, "/metrics")[0] == 200 or proc.poll() is not None, 20,
                 what="the exporter to serve /metrics")
        assert proc.poll() is None
        stop(proc)


def test_help_is_grouped_quiet_and_ends_with_examples() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert text.splitlines()[0].startswith("usage: celery-exporter") and " demo " in text.split("\n\n")[0]
    for group in GROUPS:
        assert f"\n{group}:\n" in text, group
    assert "Default: None." not in text and "Default: ." not in text and "Default: ()" not in text
    assert "--web.listen-address [HOST]:PORT" in text and "--log.level LEVEL, --log-level LEVEL" in text
    tail = text.rstrip().splitlines()[-4:]
    assert tail[0] == "examples:" and all("celery-exporter --" in line for line in tail[1:]), tail


def test_version_names_exporter_python_celery_and_kombu() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        f"celery-exporter {__version__}",
        f"  python: {sys.version.split()[0]}",
        f"  celery: {metadata.version('celery')}",
        f"  kombu: {metadata.version('kombu')}",
    ]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--broker-url", REDIS_URL, "--listen-address", "0.0.0.0:9900"], {},
         "--listen-address: takes a host without a port"),
        (["--broker-url", REDIS_URL], {"CELERY_EXPORTER_MAX_WORKERS": "abc"},
         "--max-workers: expected a whole number, got 'abc' (from CELERY_EXPORTER_MAX_WORKERS)"),
        (["--broker-url", REDIS_URL], {"CELERY_EXPORTER_POL_INTERVAL": "5"},
         "CELERY_EXPORTER_POL_INTERVAL: unknown environment variable; did you mean CELERY_EXPORTER_POLL_INTERVAL?"),
        (["--broker-url", "redis://127.0.0.1:6379/zero"], {}, "database in the URL path must be a number"),
        (["--broker-url", "nosuch://h"], {}, "no broker transport is called 'nosuch'"),
    ],
)
def test_config_errors_exit_2_with_one_line(args, env, expected) -> None:
    proc = run(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_sqs_without_boto3_says_what_to_install() -> None:
    try:
        import boto3  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("boto3 is installed here")
    proc = run("--broker-url", "sqs://AKIA:s3cr3t@")
    assert proc.returncode == 2 and "pip install 'kombu[sqs]'" in proc.stderr and "s3cr3t" not in proc.stderr


def test_redis_transport_without_packaging_says_what_to_install() -> None:
    # kombu's Redis transport imports `packaging`, which only kombu's redis extra installs (issue 15):
    # hide it from a real interpreter and the exporter must say so, not retry forever.
    code = ("import sys; sys.modules['packaging'] = None\n"
            "from exporter.__main__ import main\n"
            f"sys.exit(main(['--broker-url', {REDIS_URL!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=_clean_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("celery-exporter: error: --broker-url: the 'redis' transport needs the "
                                   "Python package 'packaging', which is not installed: "
                                   "pip install 'kombu[redis]'")
