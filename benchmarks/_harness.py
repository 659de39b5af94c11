"""Processes and probes for ``event_bench.py``: a private redis-server, a RabbitMQ vhost, the exporter
subprocess, the /metrics scraper thread, and the publishers.

Nothing here knows about scenarios: ``event_bench.py`` composes these pieces.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import multiprocessing as mp
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


# ------------------------------------------------------------------------------------ publishers
def _paced(items: list[tuple[float, bytes]], send: Any, start_at: float, chunk_bytes: int = 1 << 18) -> None:
    """Send pre-encoded items no earlier than ``start_at + offset``, coalescing what is due."""
    buf: list[bytes] = []
    size = 0
    for offset, data in items:
        due = start_at + offset
        now = time.monotonic()
        if due > now:
            if buf:
                send(b"".join(buf))
                buf, size = [], 0
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        buf.append(data)
        size += len(data)
        if size >= chunk_bytes:
            send(b"".join(buf))
            buf, size = [], 0
    if buf:
        send(b"".join(buf))


def redis_publisher(host: str, port: int, items: list[tuple[float, bytes]], start_at: float,
                    result: Any) -> None:
    """Pipelined PUBLISH of pre-encoded RESP commands; a reader thread counts replies and zero receivers."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    expected = len(items)
    counts = {"replies": 0, "unheard": 0}

    def read_replies() -> None:
        import hiredis

        reader = hiredis.Reader()
        while counts["replies"] < expected:
            data = sock.recv(1 << 16)
            if not data:
                break
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                counts["replies"] += 1
                if reply == 0:
                    counts["unheard"] += 1

    reader = threading.Thread(target=read_replies, daemon=True)
    reader.start()
    _paced(items, sock.sendall, start_at)
    sent_at = time.monotonic()
    reader.join(120)
    sock.close()
    result.put({"sent_at": sent_at, **counts})


class RawAmqp:
    """A minimal AMQP 0-9-1 publisher: pika's own frame codecs for the handshake, then pre-encoded
    ``basic.publish`` frames written straight to the socket. pika's ``basic_publish`` costs ~70 us of CPU
    a message, which on a 2-core machine would leave the benchmark measuring the publisher."""

    def __init__(self, host: str, port: int, vhost: str, user: str = "guest", password: str = "guest") -> None:
        import pika.frame
        import pika.spec

        self.spec, self.frame = pika.spec, pika.frame
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(pika.spec.Connection.Start)
        self._send(0, pika.spec.Connection.StartOk({"product": "event-bench"}, "PLAIN",
                                                   f"\0{user}\0{password}", "en_US"))
        tune = self._expect(pika.spec.Connection.Tune)
        self.frame_max = tune.frame_max or 131072
        self._send(0, pika.spec.Connection.TuneOk(tune.channel_max, self.frame_max, 0))
        self._send(0, pika.spec.Connection.Open(vhost))
        self._expect(pika.spec.Connection.OpenOk)
        self._send(1, pika.spec.Channel.Open())
        self._expect(pika.spec.Channel.OpenOk)
        self._send(1, pika.spec.Exchange.Declare(exchange="celeryev", type="topic", durable=True))
        self._expect(pika.spec.Exchange.DeclareOk)
        self.sock.settimeout(None)

    def _send(self, channel: int, method: Any) -> None:
        self.sock.sendall(self.frame.Method(channel, method).marshal())

    def _expect(self, cls: type) -> Any:
        while True:
            consumed, frame = self.frame.decode_frame(self.buf)
            if frame is None:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("RabbitMQ closed the connection during the handshake")
                self.buf += data
                continue
            self.buf = self.buf[consumed:]
            if isinstance(frame, self.frame.Method):
                if isinstance(frame.method, cls):
                    return frame.method
                raise RuntimeError(f"expected {cls.__name__}, got {frame.method}")

    def encode(self, routing_key: str, body: bytes, hostname: str) -> bytes:
        """basic.publish as kombu sends a Celery event (transient, JSON, utf-8, hostname header)."""
        props = self.spec.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                          delivery_mode=1, priority=0, headers={"hostname": hostname})
        parts = [self.frame.Method(1, self.spec.Basic.Publish(exchange="celeryev", routing_key=routing_key)
                                   ).marshal(),
                 self.frame.Header(1, len(body), props).marshal()]
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            parts.append(self.frame.Body(1, body[i:i + step]).marshal())
        return b"".join(parts)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.settimeout(10)
            self._send(0, self.spec.Connection.Close(200, "bye", 0, 0))
            with contextlib.suppress(Exception):
                self._expect(self.spec.Connection.CloseOk)
        self.sock.close()


def amqp_publisher(conn_args: tuple[str, int, str], items: list[tuple[float, tuple[str, bytes, str]]],
                   start_at: float, result: Any) -> None:
    """Frames encoded before ``start_at``, then written paced; RabbitMQ's flow control is TCP pushback."""
    amqp = RawAmqp(*conn_args)
    frames = [(offset, amqp.encode(*msg)) for offset, msg in items]
    _paced(frames, amqp.sock.sendall, start_at)
    sent_at = time.monotonic()
    amqp.close()
    result.put({"sent_at": sent_at, "replies": len(items), "unheard": 0})


def run_publishers(target: Any, lanes: list[list[Any]], args: tuple[Any, ...], lead: float = 0.3) -> tuple[
        float, list[Any], list[Any]]:
    """Fork one process per lane (data inherited, not pickled), start them together at ``t0``."""
    ctx = mp.get_context("fork")
    result = ctx.Queue()
    start_at = time.monotonic() + lead
    procs = [ctx.Process(target=target, args=(*args, lane, start_at, result), daemon=True) for lane in lanes]
    for p in procs:
        p.start()
    return start_at, procs, [result]


def join_publishers(procs: list[Any], results: list[Any], timeout: float) -> list[dict[str, Any]]:
    import queue

    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs):
        try:
            out.append(results[0].get(timeout=0.2))
        except queue.Empty:
            # A publisher that died without reporting (see its traceback above) must not hang the run.
            dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"publisher failed (exit codes {[p.exitcode for p in procs]})") from None
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    return out
