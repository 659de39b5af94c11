"""Shared pieces of the reliability and security tests: self-signed certificates, the captured event
payloads, a publisher replaying them into Redis, and counting the series of a scrape.

The private redis-server is ``tests._broker_helpers.RedisServer``; the daemon as a subprocess, scraping and
parsing its /metrics are ``tests._support.Daemon`` and ``parse_samples``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

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


# ---------------------------------------------------------------- metrics and events
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
