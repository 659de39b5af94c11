"""The one home of what every kind of test needs: a free port, a fake clock, waiting for a condition, a
real Celery worker, and the real exporter daemon as a subprocess (``Daemon``) with its /metrics parsed.

``tests/conftest.py`` turns these into fixtures (``free_tcp_port``, ``fake_clock``, ``exporter_process``);
tests that need one inside a helper or a parametrised scenario import them from here.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """An injectable ``time.time``: returns ``now``, which only the test moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _truthy(value: object) -> bool:
    return bool(value)


def wait_for(cond: Callable[[], T], timeout: float = 15.0, *, ok: Callable[[T], bool] = _truthy,
             every: float = 0.05, what: str = "", errors: tuple[type[Exception], ...] = (Exception,),
             context: Callable[[], str] | None = None) -> T:
    """Call ``cond`` every ``every`` seconds until ``ok`` accepts its value (by default: until it is
    truthy), and return that value. An exception listed in ``errors`` (by default any: a server that is
    not up yet refuses, resets or half-answers) counts as "not yet". After ``timeout`` seconds fail with
    an AssertionError naming ``what``, the last value or error, and ``context()`` (say, the logs of the
    processes involved)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
            if ok(value):
                return value
            last = f"last value: {value!r}"
        except errors as exc:
            last = f"last error: {exc!r}"
        if time.monotonic() >= deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or cond}; {last}{extra}")
        time.sleep(every)


@contextmanager
def celery_worker(app: str, queue: str, name: str, env: dict[str, str], cwd: Path,
                  pool: str = "prefork", concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` subprocess with task events on; warm-shut-down (SIGTERM) on exit, killed
    if it does not stop within 20 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "-E", f"--pool={pool}", "-c", str(concurrency),
         "-n", name, "-Q", queue, "--without-mingle", "--without-gossip", "-l", "warning"],
        env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with terminated_on_exit(proc, 20):
        yield proc


@contextmanager
def terminated_on_exit(proc: subprocess.Popen[Any], timeout: float) -> Iterator[subprocess.Popen[Any]]:
    """SIGTERM to ``proc`` on exit (unless it has ended), killed if it does not stop within ``timeout``."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain-HTTP GET: (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- the exporter as a subprocess
@dataclass
class Daemon:
    """The real ``python -m exporter`` in a subprocess; output collected by reader threads."""

    args: list[str]
    port: int = field(default_factory=free_port)
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    _readers: list[threading.Thread] = field(default_factory=list)

    def start(self, wait_healthy: bool = True) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        env.pop("CELERY_EXPORTER_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--listen-address", "127.0.0.1", "--port", str(self.port),
             *self.args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for pipe, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            t = threading.Thread(target=_drain, args=(pipe, sink), daemon=True)
            t.start()
            self._readers.append(t)
        if wait_healthy:
            wait_for(lambda: self.get("/healthz")[0] == 200 or self._died(), 20, what="daemon /healthz")
            assert self.proc.poll() is None, self.output()
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return http_get("127.0.0.1", self.port, path, timeout)

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_samples(body.decode())

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._readers:
            t.join(5)

    def output(self) -> str:
        return (bytes(self.stdout) + b"\n" + bytes(self.stderr)).decode("utf-8", "replace")

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in bytes(self.stdout).decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(pipe: Any, sink: bytearray) -> None:
    for chunk in iter(lambda: pipe.read1(65536), b""):
        sink.extend(chunk)


def parse_samples(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample, labels sorted, as Prometheus would parse them."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
