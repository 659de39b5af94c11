"""Shared pieces of the reliability and security tests: self-signed certificates, a private redis-server,
the real daemon as a subprocess, scraping and parsing its /metrics, and the captured event payloads.

Everything started here is stopped by the same helper (context managers), with a time-out on every wait.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests._support import free_port as free_port  # re-exported for the tests

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "testdata" / "events"


# ---------------------------------------------------------------- certificates
@dataclass
class Pem:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "test-ca") -> tuple[Pem, Any, Any]:
    """A self-signed CA: its PEM files, and the (certificate, key) objects to sign leaves with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key), cert, key


def make_leaf(directory: Path, name: str, ca: tuple[Any, Any], client: bool = False) -> Pem:
    """A certificate for ``localhost``/127.0.0.1 (server) or a client certificate, signed by ``ca``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


def _write(directory: Path, name: str, cert: Any, key: Any) -> Pem:
    from cryptography.hazmat.primitives import serialization

    pem = Pem(directory / f"{name}.crt", directory / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pem


# ---------------------------------------------------------------- ports, processes


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class RedisServer:
    """A private ``redis-server`` on its own port (no persistence), restartable on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-reliability-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel",
             "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain-HTTP GET: (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------- metrics and events
def parse_samples(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample, labels sorted, as Prometheus would parse them."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def series_count(registry: Any) -> int:
    """How many samples a scrape of ``registry`` serves (what Prometheus would ingest as series)."""
    from prometheus_client.exposition import generate_latest

    return sum(len(f.samples) for f in text_string_to_metric_families(generate_latest(registry).decode()))


def redis_payloads(name: str = "redis_payloads.jsonl") -> list[str]:
    """The captured pub/sub payloads (kombu envelopes) of one real Celery run."""
    return [json.loads(line)["payload"] for line in (EVENTS / name).read_text().splitlines() if line.strip()]


def captured_channels(name: str = "redis_payloads.jsonl") -> list[tuple[str, str]]:
    return [(d["channel"], d["payload"]) for d in map(json.loads, (EVENTS / name).read_text().splitlines())]


def amqp_messages() -> list[tuple[bytes, str | None, str | None]]:
    out = []
    for line in (EVENTS / "amqp_messages.jsonl").read_text().splitlines():
        d = json.loads(line)
        out.append((d["body"].encode(), d["content_type"], d["content_encoding"]))
    return out


@contextlib.contextmanager
def publisher(port: int, channel_db: int = 0, rate: float | None = None) -> Iterator[dict[str, int]]:
    """A thread PUBLISHing the captured payloads in a loop on ``/<db>.celeryev/...`` until the block ends.

    ``rate`` is messages per second (None: as fast as Redis takes them). Yields a dict whose ``sent``
    key counts messages published, for tests that compare it with what the exporter counted.
    """
    import redis

    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
    messages = [(ch.replace("/15.", f"/{channel_db}.", 1), p) for ch, p in captured_channels()]
    stop = threading.Event()
    counts = {"sent": 0, "errors": 0}

    def run() -> None:
        interval = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        while not stop.is_set():
            pipe = client.pipeline(transaction=False)
            for ch, payload in messages:
                pipe.publish(ch, payload)
            try:
                pipe.execute()
                counts["sent"] += len(messages)
            except Exception:
                counts["errors"] += 1
                stop.wait(0.05)
            if interval:
                next_at += interval * len(messages)
                stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=run, name="test-publisher", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(10)
        client.close()


def tls_client_context(ca: Path, cert: Pem | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx
