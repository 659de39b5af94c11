"""Secrets never leave the process: the real daemon, at --log-level debug, pointed at brokers that refuse
a known password (the local Redis has none, RabbitMQ gets a wrong one, the management API too), its
every line of stdout and stderr and every HTTP body it serves are searched for the password, in every
form a library might print it (as given, percent-decoded, inside a Basic or AMQP PLAIN credential).
Also ``--help`` and configuration errors.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests._support import ROOT, Daemon, free_port, wait_for

CORE = "SeCrEt7f3a"  # any leak, whole or percent-decoded, contains this
RAW = f"pw%21{CORE}"  # as written in a URL
PLAIN = unquote(RAW)  # "pw!SeCrEt7f3a", what drivers send
MGMT_RAW = f"mg%40{CORE}x"
MGMT = unquote(MGMT_RAW)


def leaks(text: str) -> list[str]:
    forms = {CORE, RAW, PLAIN, MGMT_RAW, MGMT}
    for user in ("", "guest"):
        for pw in (RAW, PLAIN, MGMT, MGMT_RAW):
            forms.add(base64.b64encode(f"{user}:{pw}".encode()).decode())  # Basic / redis-py repr
            forms.add(base64.b64encode(f"\0{user}\0{pw}".encode()).decode())  # AMQP PLAIN response
            forms.add(f"\\x00{user}\\x00{pw}")  # the same, repr'd in a frame dump
    return [f for f in forms if f in text]


# name: (arguments, whether the broker poll fails too)
SCENARIOS = {
    # The local Redis has no password: the stream's AUTH fails (redis-py's pool, used by the poller,
    # tolerates a password the server does not ask for, so the poll succeeds).
    "redis-auth-refused": (["--broker-url", f"redis://:{RAW}@127.0.0.1:6379/0"], False),
    # Nothing listens: connection refused, with a user name too.
    "redis-refused": (["--broker-url", f"redis://default:{RAW}@127.0.0.1:{free_port()}/0"], True),
    # RabbitMQ: wrong password on AMQP, and on the management API.
    "amqp-wrong-password": (["--broker-url", f"amqp://guest:{RAW}@127.0.0.1:5672//",
                             "--rabbitmq-management-url", f"http://guest:{MGMT_RAW}@127.0.0.1:15672"], True),
    # A Unix-socket Redis (streamed and polled by the Redis package), on a socket that does not exist.
    "redis-socket": (["--broker-url", f"redis+socket://:{RAW}@/nonexistent/celery-exporter.sock"], True),
}


@pytest.mark.integration
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_daemon_never_shows_the_password(scenario: str, exporter_process: Callable[..., Daemon]) -> None:
    args, poll_fails = SCENARIOS[scenario]
    daemon = exporter_process([*args, "--log-level", "debug", "--log-format", "json",
                               "--poll-interval", "1", "--poll-timeout", "1"])
    # Let the failure paths run: the stream's refused connect, a (failed) poll, a retry.
    wait_for(lambda: daemon.output().count("event stream cannot connect") >= 2, 20,
             what="a stream error log and a retry")
    metric = "celery_exporter_poll_errors_total" if poll_fails else "celery_exporter_poll_duration_seconds"
    wait_for(lambda: any(k.startswith(metric) and v > 0 for k, v in daemon.metrics().items()), 20,
             what=metric)
    bodies = []
    for path in ("/metrics", "/", "/healthz", "/readyz", "/nope"):
        _status, body = daemon.get(path)
        bodies.append(body.decode("utf-8", "replace"))
    assert daemon.get("/readyz")[0] == 503
    assert "not connected" in bodies[3]
    assert daemon.terminate() == 0
    output = daemon.output()
    assert "event stream cannot connect" in output  # the error paths really logged
    assert leaks(output) == [], f"password in the logs: {leaks(output)}"
    for body in bodies:
        assert leaks(body) == [], f"password served over HTTP: {leaks(body)}"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_help_never_shows_the_password() -> None:
    proc = run_cli("--help", env={"CELERY_EXPORTER_BROKER_URL": f"redis://:{RAW}@h/0",
                                  "CELERY_EXPORTER_RABBITMQ_MANAGEMENT_URL": f"http://u:{MGMT_RAW}@h"})
    assert proc.returncode == 0 and "--broker-url" in proc.stdout
    assert leaks(proc.stdout + proc.stderr) == []


def config_errors(tmp_path: Path) -> list[tuple[list[str], dict[str, str]]]:
    yaml_file = tmp_path / "exporter.yml"
    yaml_file.write_text(f"broker_url: redis://:{RAW}@127.0.0.1:6379/0\nbroker_urll: typo\n")
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text(f'broker_url: "redis://:{RAW}@127.0.0.1:6379/0\n')  # unterminated quote
    url = f"redis://:{RAW}@127.0.0.1:6379/0"
    return [
        (["--broker-url", url, "--port", "not-a-port"], {}),
        (["--broker-url", f"redis//:{RAW}@127.0.0.1"], {}),  # not a URL at all
        (["--broker-url", f"redis://:{RAW}@127.0.0.1:99999/0"], {}),  # a port out of range
        (["--broker-url", f"amqp://guest:{RAW}@[::1//"], {}),  # a broken IPv6 literal
        (["--broker-url", url, "--rabbitmq-management-url", f"http://guest:{MGMT_RAW}@h:port"], {}),
        (["--broker-url", url, "--rabbitmq-management-url", f"guest:{MGMT_RAW}@127.0.0.1"], {}),
        (["--config", str(yaml_file)], {}),
        (["--config", str(bad_yaml)], {}),
        (["--worker-timeout", "-1"], {"CELERY_EXPORTER_BROKER_URL": url}),
        (["--broker-url", url, "--web-config-file", str(tmp_path / "missing.yml")], {}),
        (["--broker-url", url, "--unknown-flag"], {}),
    ]


def test_configuration_errors_never_show_the_password(tmp_path: Path) -> None:
    for args, env in config_errors(tmp_path):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip(), args
        assert leaks(proc.stdout + proc.stderr) == [], (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)


# ---------------------------------------------------------------- exporter.secrets, unit by unit
# Every URL shape docs/ and README.md show, and the malformed ones a user may type: no part of a
# password may survive, whatever it holds.
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:PASSWORD@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://redis.example:6379/0", "redis://redis.example:6379/0"),
        ("rediss://:pw@cache.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
         "rediss://:***@cache.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"),
        ("redis://user:p%40ss%2Fw@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis+socket:///tmp/redis.sock", "redis+socket:///tmp/redis.sock"),
        ("redis+socket://:pw@/tmp/redis.sock", "redis+socket://:***@/tmp/redis.sock"),
        ("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379",
         "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        ("sentinel://:a@10.0.0.1:26379/3;sentinel://10.0.0.2:26379",
         "sentinel://:***@10.0.0.1:26379/3;sentinel://10.0.0.2:26379"),
        ("amqp://USER:PASSWORD@HOST:5672//", "amqp://USER:***@HOST:5672//"),
        ("amqp://celery:celery@rabbitmq:5672//", "amqp://celery:***@rabbitmq:5672//"),
        ("amqps://u:p@rabbit/prod?ssl_ca_certs=/ca.pem", "amqps://u:***@rabbit/prod?ssl_ca_certs=/ca.pem"),
        ("amqp://h1//;amqp://h2//", "amqp://h1//;amqp://h2//"),
        ("pyamqp://a:x@h1//;pyamqp://b:y@h2:5680/v", "pyamqp://a:***@h1//;pyamqp://b:***@h2:5680/v"),
        ("http://user:pass@rabbitmq:15672", "http://user:***@rabbitmq:15672"),
        ("https://mon:s%3Acr@rabbit.example/api?password=x2", "https://mon:***@rabbit.example/api?password=***"),
        ("redis://h:6379/0?password=topsecret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("sqs://AKIAKEY:secretkey@", "sqs://AKIAKEY:***@"),
        ("memory://", "memory://"),
        # Malformed: unencoded '/', '#', '@', ';', '?' in the password; a port that is not a number.
        ("redis://:2024/pw@host/0", "redis://:***@host/0"),
        ("redis://:pw#frag@host/0", "redis://:***@host/0"),
        ("redis://:p@ss@host/0", "redis://:***@host/0"),
        ("redis://u:a;b@host/0", "redis://u:***@host/0"),
        ("redis://u:wh?at@host/0", "redis://u:***@host/0"),
        ("redis://:pw@host:notaport/0", "redis://:***@host:notaport/0"),
        ("amqp://u:[pw@h//", "amqp://u:***@h//"),
    ],
)
def test_redact_url_every_shape(url: str, shown: str) -> None:
    from exporter.secrets import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:2024/pw@host/0", "2024/pw"),
        ("redis://:p@ss@host/0", "p@ss"),
        ("redis://:pw#frag@host/0", "pw#frag"),
        ("redis://u:a;b@host/0", "a;b"),
        ("redis://:x%40y%2Fz@h/0", "x@y/z"),
        ("sentinel://:one@h1:26379;sentinel://:two@h2:26379", "two"),
        ("redis://h/0?password=qwerty42", "qwerty42"),
    ],
)
def test_url_secrets_and_text_redaction_hide_every_form(url: str, password: str) -> None:
    from exporter.secrets import describe_error, redact_text, url_secrets

    assert password in url_secrets(url)
    # A driver may quote the URL, or only the decoded password, in its message.
    for message in (f"Error connecting to {url}: refused", f"AUTH {password} rejected",
                    f"'{url}' and then some"):
        for text in (redact_text(message, url_secrets(url)), describe_error(OSError(message), url_secrets(url))):
            assert password not in text, text
    assert password not in redact_text(f"cannot reach {url} (timeout)")  # without the known secrets too


def test_redact_text_masks_password_pairs_and_keeps_plain_text() -> None:
    from exporter.secrets import describe_error, redact_text

    assert redact_text("login failed: password=hunter2 user=bob") == "login failed: password=*** user=bob"
    assert redact_text("queue celery has 3 messages") == "queue celery has 3 messages"
    assert redact_text("see http://u:pw@h:15672/api and amqp://h//") == "see http://u:***@h:15672/api and amqp://h//"
    assert describe_error(OSError()) == "OSError: OSError"
    assert describe_error(ConnectionError("x" * 900)).startswith("ConnectionError: xxx")
    assert len(describe_error(ConnectionError("x" * 900))) == 500


def test_yaml_errors_name_line_and_column_never_the_content() -> None:
    import yaml

    from exporter.secrets import yaml_error

    for text in ('basic_auth_users:\n  admin: "$2y$10$HASHHASH\n', "key: [s3cr3tpw\n", "a: b\n\tc: s3cr3tpw:\n",
                 "x: *s3cr3tpw\n", 'x: "\\qs3cr3tpw"\n'):
        with pytest.raises(yaml.YAMLError) as err:
            yaml.safe_load(text)
        message = yaml_error(err.value)
        assert "s3cr3tpw" not in message and "HASH" not in message, message
        assert " at line " in message and ", column " in message, message
