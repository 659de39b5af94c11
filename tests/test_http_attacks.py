"""Hostile HTTP clients against the real exporter process, over real sockets on 127.0.0.1: idle and
slowloris connections, half-open TLS handshakes, header floods. Each attack is bounded in connections and
time; after (and during) each one, /metrics and /healthz still answer 200 and basic auth is still
required. Memory is read from /proc/<pid>/status of the exporter process.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from benchmarks._harness import proc_status
from exporter import http as http_mod
from tests._reliability_helpers import make_ca, make_leaf, tls_client_context
from tests._support import Daemon, free_port, http_get, parse_samples, wait_for


def rss_kib(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
AUTH = {"Authorization": "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()}
IDLE = http_mod.MAX_CONNECTIONS + 44  # more idle clients than the server keeps open at once
FAST = 3.0  # seconds within which a real request must be answered while under attack


def _no_broker() -> list[str]:
    # The HTTP server is what is under test: the daemon runs (and is alive) without its broker.
    return ["--broker-url", f"redis://127.0.0.1:{free_port()}/0", "--log-format", "json"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with Daemon(_no_broker()) as d:
        d.start()
        yield d


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, ssl.SSLContext]]:
    d = tmp_path_factory.mktemp("pki")
    ca_pem, ca_cert, ca_key = make_ca(d)
    server = make_leaf(d, "server", (ca_cert, ca_key))
    web = d / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
                   f"basic_auth_users:\n  prometheus: {HASH}\n")
    ctx = tls_client_context(ca_pem.cert)
    with Daemon([*_no_broker(), "--web-config-file", str(web)]) as daemon:
        daemon.start(wait_healthy=False)
        wait_for(lambda: https(daemon.port, ctx, "/healthz", AUTH)[0] == 200, 20, what="TLS /healthz")
        yield daemon, ctx


def get(port: int, path: str, timeout: float = FAST) -> tuple[int, bytes]:
    return http_get("127.0.0.1", port, path, timeout)


def https(port: int, ctx: ssl.SSLContext, path: str, headers: dict[str, str] | None = None,
          timeout: float = FAST) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def open_idle(port: int, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            s.sendall(first_bytes)
        out.append(s)
    return out


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def assert_served(port: int) -> None:
    started = time.monotonic()
    for path in ("/metrics", "/healthz", "/metrics", "/healthz"):
        status, body = get(port, path)
        assert status == 200, (path, status, body[:200])
    assert time.monotonic() - started < 4 * FAST
    assert "celery_exporter_build_info" in get(port, "/metrics")[1].decode()


def test_idle_and_slowloris_connections_do_not_lock_out_scrapes_or_probes(daemon: Daemon) -> None:
    # Plain idle connections first, then slowloris ones with half a request: more than the cap in all.
    idle = open_idle(daemon.port, IDLE // 2)
    slow = open_idle(daemon.port, IDLE - IDLE // 2, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    try:
        assert_served(daemon.port)
        # The cap was reached: the server closed the OLDEST idle connections to admit new ones, and
        # kept the youngest (well within their 10 s request deadline here).
        assert not any(closed_by_server(s) for s in slow[-20:])
        wait_for(lambda: closed_by_server(idle[0]), 5, what="the oldest idle connection closed")
        assert sum(closed_by_server(s) for s in idle[:40]) == 40
    finally:
        for s in idle + slow:
            s.close()
    assert_served(daemon.port)


def test_a_kept_alive_scraper_is_not_disturbed_by_idle_clients(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=FAST)
    idle: list[socket.socket] = []
    try:
        for _ in range(3):
            idle += open_idle(daemon.port, IDLE // 3)
            conn.request("GET", "/metrics")  # http.client reconnects if its connection was evicted
            resp = conn.getresponse()
            assert resp.status == 200 and b"celery_exporter_build_info" in resp.read()
    finally:
        conn.close()
        for s in idle:
            s.close()


def _flood(port: int, clients: int, lines: int, line_bytes: int, seconds: float) -> list[bytes]:
    """``clients`` connections each sending ``lines`` headers of ``line_bytes`` as fast as the server
    takes them, all at once from one thread; returns what each connection got back."""
    header = b"X-Flood: " + b"a" * (line_bytes - 11) + b"\r\n"
    payload = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + header * lines + b"\r\n"
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, dict[str, Any]] = {}
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        state[s] = {"sent": 0, "got": b""}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    results: list[bytes] = []
    deadline = time.monotonic() + seconds
    while state and time.monotonic() < deadline:
        for key, events in sel.select(0.1):
            s, st = key.fileobj, state[key.fileobj]  # type: ignore[index]
            try:
                if events & selectors.EVENT_READ:
                    chunk = s.recv(65536)  # type: ignore[union-attr]
                    st["got"] += chunk
                    if not chunk:
                        raise ConnectionResetError
                    # An HTTP client stops sending once the server has answered (what is in flight
                    # still arrives: the server must read it away rather than reset the answer).
                    st["sent"] = len(payload)
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                if events & selectors.EVENT_WRITE and st["sent"] < len(payload):
                    st["sent"] += s.send(payload[st["sent"]:st["sent"] + 262144])  # type: ignore[union-attr]
                    if st["sent"] >= len(payload):
                        sel.modify(s, selectors.EVENT_READ)
            except OSError:
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                state.pop(s)  # type: ignore[arg-type]
                results.append(st["got"])
    for s, st in state.items():
        results.append(st["got"])
        s.close()
    sel.close()
    return results


@pytest.mark.parametrize("clients", [10, 60])
def test_header_floods_are_refused_and_memory_stays_bounded(daemon: Daemon, clients: int) -> None:
    # 99 header lines of 65 KB each: within a naive per-line (64 KiB-ish) and count (100) limit, 6.4 MB
    # a request. The total header budget refuses each with 431 once 64 KiB have arrived.
    assert daemon.proc is not None
    pid = daemon.proc.pid
    get(daemon.port, "/metrics")
    before = rss_kib(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        got = _flood(daemon.port, clients, lines=99, line_bytes=65_000, seconds=20)
        assert_served(daemon.port)
    finally:
        stop.set()
        sampler.join(5)
    statuses = [g.split(b" ", 2)[1] if g.startswith(b"HTTP/1.1 ") else g[:20] for g in got]
    assert statuses == [b"431"] * clients, statuses
    # Each connection holds at most ~2 x 64 KiB of unparsed input (plus a read chunk): tens of MB for
    # 60 connections, where reading every header into memory took 787 MB.
    grown_mib = (peak[0] - before) / 1024
    assert grown_mib < 40, f"RSS grew {grown_mib:.0f} MiB during {clients} header floods"
    # And what was held is given back (or at least not kept growing): RSS returns near where it was.
    wait_for(lambda: rss_kib(pid) - before < 20 * 1024, 10, what="RSS back near its level before the flood")


def test_header_budget_is_total_not_per_line(daemon: Daemon) -> None:
    # 40 lines of 2 KB pass any per-line limit and the line count limit; together they exceed 64 KiB.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + (b"X-A: " + b"a" * 2000 + b"\r\n") * 40 + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + (b"X-A: " + b"a" * 2000 + b"\r\n") * 20 + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_half_open_tls_handshakes_do_not_lock_out_scrapes(tls_daemon: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, ctx = tls_daemon
    # The first bytes of a ClientHello, then nothing: each waits in its handshake.
    half_open = open_idle(daemon.port, IDLE, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    try:
        started = time.monotonic()
        assert https(daemon.port, ctx, "/metrics", AUTH)[0] == 200
        assert https(daemon.port, ctx, "/healthz", AUTH)[0] == 200
        assert time.monotonic() - started < 2 * FAST
        # Basic auth is still required, under attack too.
        assert https(daemon.port, ctx, "/metrics")[0] == 401
        wrong = {"Authorization": "Basic " + base64.b64encode(b"prometheus:wrong").decode()}
        assert https(daemon.port, ctx, "/metrics", wrong)[0] == 401
        wait_for(lambda: closed_by_server(half_open[0]), 5, what="the oldest half-open handshake closed")
    finally:
        for s in half_open:
            s.close()
    status, body = https(daemon.port, ctx, "/metrics", AUTH)
    assert status == 200 and any(k.startswith("celery_exporter_build_info") for k in parse_samples(body.decode()))


def test_half_open_handshakes_are_cut_off_at_the_request_deadline(
    tls_daemon: tuple[Daemon, ssl.SSLContext],
) -> None:
    daemon, _ = tls_daemon
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01")
        s.settimeout(http_mod.REQUEST_TIMEOUT + 5)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1024) == b""
        assert time.monotonic() - started <= http_mod.REQUEST_TIMEOUT + 2


def test_healthz_answers_while_many_scrapes_wait_for_a_render_slot(daemon: Daemon) -> None:
    # Many complete /metrics requests at once: they queue for the render slots; probes never do.
    done: list[int] = []

    def scrape() -> None:
        done.append(get(daemon.port, "/metrics", timeout=30)[0])

    threads = [threading.Thread(target=scrape) for _ in range(4 * http_mod.MAX_RENDERS)]
    for t in threads:
        t.start()
    assert get(daemon.port, "/healthz")[0] == 200
    for t in threads:
        t.join(30)
    assert done == [200] * len(threads)


def test_headers_before_authentication_are_bounded_too(tls_daemon: tuple[Daemon, ssl.SSLContext]) -> None:
    # Without credentials, over TLS: the budget refuses the headers before any password check, and a
    # request within it still needs the password.
    daemon, ctx = tls_daemon
    big = {f"X-Pad-{i}": "a" * 2000 for i in range(40)}
    assert https(daemon.port, ctx, "/metrics", big)[0] == 431
    assert https(daemon.port, ctx, "/metrics", {**big, **AUTH})[0] == 431
    assert https(daemon.port, ctx, "/healthz")[0] == 401
    assert https(daemon.port, ctx, "/healthz", AUTH)[0] == 200


def test_slow_password_checks_are_bounded_and_probes_still_answer() -> None:
    # A stand-in for bcrypt at a high cost: 0.2 s a check, one at a time, nothing cached. 40 clients
    # with a wrong password at once: at most MAX_AUTH_PENDING checks queue, the rest get 503 at once,
    # and a probe with the right password waits its turn instead of being refused.
    lock = threading.Lock()

    def slow_check(header: str | None) -> bool:
        with lock:
            time.sleep(0.2)
        return header == AUTH["Authorization"]

    srv = http_mod.MetricsServer("127.0.0.1", 0, CollectorRegistry(auto_describe=False),
                                 http_mod.Health(lambda: (True, "ok"), lambda: (True, "ok")), authorize=slow_check)
    srv.start()
    try:
        codes: list[int] = []
        wrong = {"Authorization": "Basic " + base64.b64encode(b"prometheus:wrong").decode()}

        def attempt() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.request("GET", "/metrics", headers=wrong)
            codes.append(conn.getresponse().status)
            conn.close()

        threads = [threading.Thread(target=attempt) for _ in range(40)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/healthz", headers=AUTH)
        assert conn.getresponse().status == 200
        conn.close()
        for t in threads:
            t.join(30)
        assert sorted(set(codes)) == [401, 503] and len(codes) == 40
        assert codes.count(401) <= http_mod.MAX_AUTH_PENDING + 2  # + the checks already running
    finally:
        srv.stop()
