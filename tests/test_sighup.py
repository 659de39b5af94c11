"""SIGHUP to the real daemon reloads what can change while running (the web config file, the log level),
names the options that need a restart, refuses a configuration that no longer loads, and never stops the
process; SIGTERM afterwards is still a clean stop.
"""

from __future__ import annotations

import base64
import http.client
import signal
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from tests._support import Daemon, wait_for

pytestmark = pytest.mark.integration


def users(**passwords: str) -> str:
    lines = [f"  {user}: {bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for user, pw in passwords.items()]
    return "basic_auth_users:\n" + "\n".join(lines) + "\n"


def status_as(daemon: Daemon, user: str, password: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def logged(daemon: Daemon, event: str) -> list[dict[str, object]]:
    return [line for line in daemon.log_lines() if line.get("event") == event]


def hup_and_wait(daemon: Daemon, event: str, count: int) -> dict[str, object]:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    found = wait_for(lambda: logged(daemon, event), 10, ok=lambda lines: len(lines) >= count,
                     what=f"{event!r} after SIGHUP", context=daemon.output)
    assert daemon.proc.poll() is None, daemon.output()
    return found[-1]


def test_sighup_reloads_the_web_config_and_log_level_and_keeps_running(
        tmp_path: Path, exporter_process: Callable[..., Daemon]) -> None:
    web, conf = tmp_path / "web.yml", tmp_path / "exporter.yml"
    web.write_text(users(alice="alice-pw"))
    conf.write_text("log_level: info\n")
    daemon = exporter_process(["--broker-url", "redis://127.0.0.1:1/0", "--config", str(conf),
                               "--web-config-file", str(web), "--log-format", "json"], wait_healthy=False)
    wait_for(lambda: status_as(daemon, "alice", "alice-pw") == 200, 20, what="the daemon to serve",
             context=daemon.output)
    assert status_as(daemon, "bob", "bob-pw") == 401

    web.write_text(users(bob="bob-pw"))
    conf.write_text("log_level: debug\npoll_interval: 7\n")
    line = hup_and_wait(daemon, "configuration reloaded", 1)
    assert line["log_level"] == "debug"
    assert status_as(daemon, "bob", "bob-pw") == 200
    assert status_as(daemon, "alice", "alice-pw") == 401
    (restart,) = logged(daemon, "changed options apply only after a restart")
    assert restart["options"] == ["--poll-interval"]
    # The new level is in force: the daemon's own debug lines now appear.
    wait_for(lambda: any(x.get("level") == "debug" for x in daemon.log_lines()), 15,
             what="a debug line after the reload", context=daemon.output)

    web.write_text("basic_auth_users: [bob]\n")  # no longer valid: refused, bob keeps his access
    hup_and_wait(daemon, "configuration reload refused; the running configuration stays", 1)
    assert status_as(daemon, "bob", "bob-pw") == 200
    assert len(logged(daemon, "configuration reloaded")) == 1

    assert daemon.terminate() == 0
    assert logged(daemon, "celery-exporter stopped")
    assert not any(line.get("event") == "signal received, stopping" and line.get("signal") == "SIGHUP"
                   for line in daemon.log_lines())
