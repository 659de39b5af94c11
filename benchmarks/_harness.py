"""Processes and probes for ``event_bench.py``: a private redis-server, a RabbitMQ vhost, the exporter
subprocess, and the /metrics scraper thread (the publishers are in ``_publishers.py``).

Nothing here knows about scenarios: ``event_bench.py`` composes these pieces.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What Prometheus 2.x sends (scrape.go: scrapeAcceptHeader) and its Accept-Encoding.
PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
MGMT = "http://127.0.0.1:15672"
MGMT_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ redis-server
@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, Path]]:
    """A throwaway redis-server with its default limits (pub/sub output buffer 32 MB hard, 8 MB for 60 s)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: pass --redis-url")
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="event-bench-redis-"))
    log = tmp / "redis.log"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp), "--logfile", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        wait_until(lambda: _pings(client), 10, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0", log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


# ------------------------------------------------------------------------------------ RabbitMQ vhost
def _mgmt(method: str, path: str, body: Any = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(MGMT + path, data=data, method=method,
                                 headers={"Authorization": MGMT_AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    vhost = f"event-bench-{os.getpid()}"
    if _mgmt("PUT", f"/api/vhosts/{vhost}", {}) not in (201, 204):
        raise RuntimeError("cannot create a RabbitMQ vhost through the management API")
    try:
        _mgmt("PUT", f"/api/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        yield vhost
    finally:
        _mgmt("DELETE", f"/api/vhosts/{vhost}")


def amqp_queue_depth(vhost: str) -> int:
    req = urllib.request.Request(f"{MGMT}/api/queues/{vhost}", headers={"Authorization": MGMT_AUTH})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return sum(int(q.get("messages", 0) or 0) for q in json.load(resp))


# ------------------------------------------------------------------------------------ the exporter
class Exporter:
    """``python -m exporter`` as a subprocess on a free port, logging to a temp file."""

    def __init__(self, broker_url: str, extra: list[str] | None = None, profile: str | None = None) -> None:
        self.profile = profile  # py-spy (pip install py-spy) records the exporter into this file
        self.profiler: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="event-bench-exporter-", suffix=".log")[1])
        self.args = [sys.executable, "-m", "exporter", "--broker-url", broker_url, "--listen-address",
                     "127.0.0.1", "--port", str(self.port), "--log-format", "json", *(extra or [])]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Exporter:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, 30, 0.1, "the exporter's /readyz")
        except Exception:
            self.__exit__()
            raise
        if self.profile:
            fmt = "raw" if self.profile.endswith(".txt") else "flamegraph"
            self.profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.pid), "--rate", "250", "--nonblocking", "--format", fmt,
                 "-o", self.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.profiler is not None:
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait(5)
        with contextlib.suppress(OSError):
            self.log.unlink()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return ""


SLOW_CONNECTS: list[float] = []  # TCP connects to /metrics that took over 0.5 s


def scrape(port: int, timeout: float = 10.0) -> tuple[float, str]:
    """One /metrics GET as Prometheus makes it; returns (seconds, decoded text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.connect()
        if time.perf_counter() - started > 0.5:
            SLOW_CONNECTS.append(time.perf_counter() - started)
        conn.request("GET", "/metrics", headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
        if resp.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return elapsed, body.decode()
    finally:
        conn.close()


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in "{ "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@dataclass
class Watch:
    """Scrapes /metrics every ``interval`` (latency, events seen) and samples the exporter's RSS."""

    port: int
    pid: int
    expected: int = 0
    interval: float = 0.1
    latencies: list[float] = field(default_factory=list)
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    seen: float = 0.0
    done_at: float | None = None
    errors: list[str] = field(default_factory=list)
    recording: bool = False

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.rss_kb.append((time.monotonic(), proc_status(self.pid)["VmRSS"]))
                elapsed, text = scrape(self.port)
                if self.recording:
                    self.latencies.append(elapsed)
                self.seen = metric_sum(text, "celery_exporter_events_total")
                if self.expected and self.done_at is None and self.seen >= self.expected:
                    self.done_at = time.monotonic()
            except Exception as exc:  # keep scraping; the report shows what failed
                self.errors.append(f"{type(exc).__name__}: {exc}")
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def wait_for(self, expected: int, deadline: float) -> bool:
        self.expected = expected
        while time.monotonic() < deadline:
            if self.seen >= expected:
                return True
            time.sleep(0.02)
        return self.seen >= expected


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
