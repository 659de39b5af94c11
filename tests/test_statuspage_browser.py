"""The status page at ``/`` opened in a real headless Chromium, for a healthy and for a misconfigured
Redis cluster: the checks, workers and queues are on the rendered page, a screenshot of each is kept
under ``tests/artifacts/`` (ignored by git), and the page needs the credentials the web config asks for.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from tests._broker_helpers import RedisServer
from tests._doctor_helpers import send_tasks, worker
from tests._support import ROOT, Daemon, parse_samples, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "tests" / "artifacts"
USER, PASSWORD = "ops", "doctor-s3cret"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")


def get(port: int, path: str, auth: bool = True) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        conn.request("GET", path, headers={"Authorization": f"Basic {token}"} if auth else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def browser(url: str, *args: str) -> str:
    """Headless Chromium on ``url`` with a fresh profile; returns stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1280,1900", *args, url],
            capture_output=True, timeout=90, check=False)
    return done.stdout.decode("utf-8", "replace")


def web_config(tmp: Path) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = tmp / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n")
    return path


def check_value(port: int, check: str) -> float | None:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return parse_samples(body.decode()).get(f'celery_exporter_check_status{{check="{check}"}}')


def open_page(port: int, name: str) -> str:
    """The rendered DOM of ``/`` (with credentials in the URL) and a screenshot kept as an artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"statuspage-{name}.png"
    shot.unlink(missing_ok=True)
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/"
    browser(url, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot at {shot}"
    return browser(url, "--dump-dom")


def run_cluster(redis_server: RedisServer, tmp_path: Path, start: Callable[..., Daemon],
                app_env: dict[str, str], args: list[str], decided: str,
                names: tuple[str, ...] = ("doctor.add",)) -> Daemon:
    env = {"DOCTOR_BROKER": redis_server.url(0), **app_env}
    daemon = start(["--broker-url", redis_server.url(0), "--web-config-file", str(web_config(tmp_path)),
                    "--poll-interval", "1", *args], wait_healthy=False)
    wait_for(lambda: get(daemon.port, "/healthz")[0] == 200, 20, what="daemon /healthz", context=daemon.output)
    send_tasks(env, names=names)
    wait_for(lambda: check_value(daemon.port, decided) in (0.0, 2.0), 30, what=f"the {decided} check")
    wait_for(lambda: check_value(daemon.port, "queue_keys") == 0.0, 30, what="the queue keys found")
    return daemon


def test_healthy_cluster_page(redis_server: RedisServer, tmp_path: Path,
                              exporter_process: Callable[..., Daemon]) -> None:
    with worker({"DOCTOR_BROKER": redis_server.url(0)}, "healthy@page"):
        daemon = run_cluster(redis_server, tmp_path, exporter_process, {}, [], "task_sent_events")
        wait_for(lambda: check_value(daemon.port, "clock_skew") == 0.0, 20, what="clock_skew ok")
        # The page needs the credentials the web config asks for, like /metrics.
        assert get(daemon.port, "/", auth=False)[0] == 401
        assert "Checks" not in browser(f"http://127.0.0.1:{daemon.port}/", "--dump-dom")
        dom = open_page(daemon.port, "healthy")
    assert "no problem found" in dom
    for text in ("worker_events", "clock_skew", "caps", "healthy@page", "kombu binding", "--max-task-names"):
        assert text in dom, text
    assert 'class="problem"' not in dom
    assert PASSWORD not in dom


def test_misconfigured_cluster_page(redis_server: RedisServer, tmp_path: Path,
                                    exporter_process: Callable[..., Daemon]) -> None:
    app = {"DOCTOR_BROKER": redis_server.url(0), "DOCTOR_SENT_EVENT": "0", "DOCTOR_CLOCK_SHIFT": "-45"}
    with worker(app, "skewed@page"):
        daemon = run_cluster(redis_server, tmp_path, exporter_process, app, ["--max-task-names", "1"],
                             "task_sent_events", names=("doctor.add", "doctor.mul"))
        wait_for(lambda: check_value(daemon.port, "clock_skew") == 2.0, 20, what="clock_skew problem")
        wait_for(lambda: check_value(daemon.port, "caps") == 2.0, 20, what="caps problem")
        dom = open_page(daemon.port, "misconfigured")
    assert "3 problem(s)" in dom, dom
    for check in ("task_sent_events", "clock_skew", "caps"):
        row = dom.split(f'id="check-{check}"', 1)[1].split("</tr>", 1)[0]
        assert "problem" in row and "Fix:" in row, row
    for text in ("skewed@page: -45", "task_send_sent_event = True", "NTP", "celery"):
        assert text in dom, text
    assert PASSWORD not in dom
