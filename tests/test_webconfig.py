"""The web config file (exporter-toolkit format) and the locked-down HTTP server: real self-signed
certificates made in the test, a real TLS server socket, real clients (ssl + http.client, requests).
Also the limits every HTTP client meets, with or without TLS: slow clients, bodies, header sizes.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from prometheus_client import CollectorRegistry

import exporter.http as http_mod
from exporter.collectors.tasks import TaskCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.http import Health, MetricsServer
from exporter.options import ConfigError
from exporter.state import ClusterState
from exporter.webconfig import BasicAuth, load_web_config
from tests._events import T0, redis_envelope, sent
from tests._reliability_helpers import Pem, make_ca, make_leaf, tls_client_context
from tests._support import ROOT, Daemon, FakeClock, free_port, parse_samples, wait_for

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca_pem, ca_cert, ca_key = make_ca(d)
    _, other_cert, other_key = make_ca(d, "other-ca")
    return {
        "dir": d,
        "ca": ca_pem,
        "server": make_leaf(d, "server", (ca_cert, ca_key)),
        "client": make_leaf(d, "client", (ca_cert, ca_key), client=True),
        "stranger": make_leaf(d, "stranger", (other_cert, other_key), client=True),
    }


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def tls_yaml(server: Pem, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n{extra}"


# ---------------------------------------------------------------- loading and validation
def test_full_toolkit_file_loads(tmp_path: Path, pki: dict[str, Any]) -> None:
    # Relative paths resolve against the web config file's directory, as in exporter-toolkit.
    path = pki["dir"] / "web.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: test-ca.crt\n"
        "  min_version: TLS12\n  max_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: true\n  curve_preferences: [X25519]\n"
        "http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        f"basic_auth_users:\n  prometheus: {HASH}\n"
    )
    web = load_web_config(str(path))
    ctx = web.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert web.headers == {"X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=31536000"}
    assert web.authorizer() is not None
    assert HASH not in repr(web)


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    web = load_web_config(write(tmp_path, ""))
    assert web.ssl_context() is None and web.authorizer() is None


def test_inline_pem_is_accepted(tmp_path: Path, pki: dict[str, Any]) -> None:
    cert, key = pki["server"].cert.read_text(), pki["server"].key.read_text()
    indent = lambda s: "\n".join("    " + line for line in s.splitlines())  # noqa: E731
    path = write(tmp_path, f"tls_server_config:\n  cert: |\n{indent(cert)}\n  key: |\n{indent(key)}\n")
    assert isinstance(load_web_config(path).ssl_context(), ssl.SSLContext)


BAD_FILES = [
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n  cert_fle: x\n",
     "tls_server_config.cert_fle"),
    ("basic_auth_user:\n  a: b\n", "basic_auth_user"),
    ("tls_server_config:\n  cert_file: /nonexistent/cert.pem\n  key_file: {server.key}\n",
     "tls_server_config.cert_file"),
    ("tls_server_config:\n  key_file: {server.key}\n", "tls_server_config.cert_file"),
    # a certificate with someone else's key
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {client.key}\n", "tls_server_config.cert_file"),
    # not PEM at all
    ("tls_server_config:\n  cert_file: {web}\n  key_file: {server.key}\n", "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
     "  min_version: TLS14\n", "tls_server_config.min_version"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n  min_version: TLS13\n"
     "  max_version: TLS12\n", "tls_server_config.min_version"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
     "  client_ca_file: {ca.cert}\n", "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
     "  client_auth_type: RequireAnyClientCert\n  client_ca_file: {ca.cert}\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: {server.cert}\n  key_file: {server.key}\n"
     "  client_allowed_sans: [a]\n", "tls_server_config.client_allowed_sans"),
    ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "http_server_config.headers.X-Powered-By"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options"),
    ("basic_auth_users:\n  alice: not-a-hash\n", "basic_auth_users.alice"),
    ("basic_auth_users:\n  alice: $2b$04$tooshort\n", "basic_auth_users.alice"),
    ("basic_auth_users: [alice]\n", "basic_auth_users"),
    ("- just\n- a list\n", "(top level)"),
    ("tls_server_config: [\n", "--web.config.file"),
]


@pytest.mark.parametrize(("text", "key"), BAD_FILES)
def test_bad_file_raises_config_error_naming_key_and_file(
    tmp_path: Path, pki: dict[str, Any], text: str, key: str
) -> None:
    web = tmp_path / "web.yml"
    path = write(tmp_path, text.format(web=web, **pki))
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert key in str(info.value)
    assert path in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_web_config(str(tmp_path / "nope.yml"))


def test_bad_hash_value_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, "basic_auth_users:\n  alice: hunter2-plain-password\n"))
    assert "hunter2" not in str(info.value)


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, pki: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["server"].key.read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass")))
    path = write(tmp_path, f"tls_server_config:\n  cert_file: {pki['server'].cert}\n  key_file: {encrypted}\n")
    with pytest.raises(ConfigError, match=r"tls_server_config\.cert_file"):
        load_web_config(path)


# ---------------------------------------------------------------- the authorizer
def test_authorizer_accepts_only_the_right_credentials() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert auth(basic("prometheus", PASSWORD))
    assert auth(basic("prometheus", PASSWORD).replace("Basic", "basic"))
    for header in (
        None, "", basic("prometheus", "wrong"), basic("nobody", PASSWORD), basic("prometheus", ""),
        "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"prometheus:\xff\xfe").decode(),
        basic("prometheus", "x" * 1000),  # bcrypt refuses > 72 bytes: must be a no, not an error
        "Basic " + "A" * 100_000,
    ):
        assert not auth(header), header


def test_long_password_matches_like_exporter_toolkit() -> None:
    # bcrypt uses the first 72 bytes; htpasswd and Go truncate, so a hash made from a long password works.
    long_pw = "p" * 100
    hashed = bcrypt.hashpw(long_pw.encode()[:72], bcrypt.gensalt(rounds=4))
    assert BasicAuth({"u": hashed})(basic("u", long_pw))


def test_successful_checks_are_cached_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(1) or real(pw, h))
    users = {f"user{i}": bcrypt.hashpw(f"pw{i}".encode(), bcrypt.gensalt(rounds=4)) for i in range(3)}
    auth = BasicAuth(users, cache_size=2)
    for _ in range(5):
        assert auth(basic("user0", "pw0"))
    assert len(calls) == 1  # bcrypt paid once per credential
    for _ in range(3):
        assert not auth(basic("user0", "wrong"))
    assert len(calls) == 4  # failures are never cached
    assert auth(basic("user1", "pw1")) and auth(basic("user2", "pw2"))
    assert auth.cached == 2  # the LRU dropped user0
    assert auth(basic("user0", "pw0"))
    assert len(calls) == 7


# ---------------------------------------------------------------- over real sockets
def make_server(web_path: str | None = None) -> MetricsServer:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(), clock)
    Ingest(state, clock).feed_redis([redis_envelope([sent("u", "proj.add", T0, queue="default")])])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(state.take_snapshot))
    web = load_web_config(web_path) if web_path else None
    return MetricsServer(
        "127.0.0.1", 0, registry, Health(lambda: (True, "ok"), lambda: (True, "ok")),
        ssl_context=web.ssl_context() if web else None, authorize=web.authorizer() if web else None,
        headers=web.headers if web else None,
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[MetricsServer] = []

    def start(web_path: str | None = None) -> MetricsServer:
        srv = make_server(web_path)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def https_get(port: int, ctx: ssl.SSLContext, path: str = "/metrics",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_https_with_basic_auth_end_to_end(tmp_path: Path, pki: dict[str, Any], serve: Any) -> None:
    srv = serve(write(tmp_path, tls_yaml(pki["server"]) + f"basic_auth_users:\n  prometheus: {HASH}\n"))
    ctx = tls_client_context(pki["ca"].cert)

    status, headers, _ = https_get(srv.port, ctx)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert https_get(srv.port, ctx, headers={"Authorization": basic("prometheus", "wrong")})[0] == 401
    assert https_get(srv.port, ctx, headers={"Authorization": basic("intruder", PASSWORD)})[0] == 401
    status, _, body = https_get(srv.port, ctx, headers={"Authorization": basic("prometheus", PASSWORD)})
    assert status == 200
    assert parse_samples(body.decode())['celery_task_sent_total{queue="default",task_name="proj.add"}'] == 1
    for path in ("/healthz", "/readyz", "/", "/nope"):  # every endpoint is behind auth
        assert https_get(srv.port, ctx, path)[0] == 401, path

    # The same with requests, which verifies the certificate against our CA.
    url = f"https://localhost:{srv.port}/metrics"
    r = requests.get(url, verify=str(pki["ca"].cert), auth=("prometheus", PASSWORD), timeout=5)
    assert r.status_code == 200 and "celery_task_sent_total" in r.text
    assert requests.get(url, verify=str(pki["ca"].cert), timeout=5).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):  # an untrusted certificate is an error, not data
        requests.get(url, timeout=5)


def test_plain_http_to_the_tls_port_gets_nothing(tmp_path: Path, pki: dict[str, Any], serve: Any) -> None:
    srv = serve(write(tmp_path, tls_yaml(pki["server"])))
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/metrics")
        conn.getresponse()
    conn.close()
    # ... and the failed handshake did not hurt the server.
    assert https_get(srv.port, tls_client_context(pki["ca"].cert))[0] == 200


def test_tls_version_floor(tmp_path: Path, pki: dict[str, Any], serve: Any) -> None:
    srv = serve(write(tmp_path, tls_yaml(pki["server"], "  min_version: TLS13\n")))
    old = tls_client_context(pki["ca"].cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        https_get(srv.port, old)
    assert https_get(srv.port, tls_client_context(pki["ca"].cert))[0] == 200


def test_client_certificates(tmp_path: Path, pki: dict[str, Any], serve: Any) -> None:
    srv = serve(write(tmp_path, tls_yaml(
        pki["server"], f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki['ca'].cert}\n")))
    assert https_get(srv.port, tls_client_context(pki["ca"].cert, pki["client"]))[0] == 200
    for client in (None, pki["stranger"]):
        with pytest.raises((ssl.SSLError, ConnectionError)):  # TLS 1.3 reports it on the first read
            https_get(srv.port, tls_client_context(pki["ca"].cert, client))


def test_configured_headers_are_sent(tmp_path: Path, serve: Any) -> None:
    srv = serve(write(tmp_path, "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
                      "    X-Frame-Options: deny\n" f"basic_auth_users:\n  prometheus: {HASH}\n"))
    for auth in (None, basic("prometheus", PASSWORD)):  # on refusals too
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/metrics", headers={"Authorization": auth} if auth else {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert resp.getheader("X-Frame-Options") == "deny"


def plain_get(port: int, path: str = "/metrics") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_slow_client_does_not_block_scrapes(serve: Any) -> None:
    srv = serve()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as slow:
        slow.sendall(b"GET /met")  # half a request line, then nothing
        for _ in range(3):
            assert plain_get(srv.port) == 200


def test_slow_tls_handshake_does_not_block_scrapes(tmp_path: Path, pki: dict[str, Any], serve: Any) -> None:
    srv = serve(write(tmp_path, tls_yaml(pki["server"])))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as slow:
        slow.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert https_get(srv.port, tls_client_context(pki["ca"].cert))[0] == 200


def test_request_bodies_are_refused_and_the_connection_closed(serve: Any) -> None:
    srv = serve()
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413")
    assert data.count(b"HTTP/1.1 ") == 1, "the body must not be served as a second request"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413") and data.count(b"HTTP/1.1 ") == 1
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 405") and data.count(b"HTTP/1.1 ") == 1
    assert plain_get(srv.port) == 200


def test_oversized_request_line_and_headers_are_refused(serve: Any) -> None:
    srv = serve()
    for request in (
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
        b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 70_000 + b"\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(request)
            status = s.recv(100).split(b" ", 2)[1]
        assert status in (b"414", b"431", b"400"), status
    assert plain_get(srv.port) == 200


def test_cli_exits_2_on_a_bad_web_config(tmp_path: Path) -> None:
    bad = write(tmp_path, "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--broker-url", "redis://127.0.0.1:6379/0", "--port", str(free_port()),
         "--web-config-file", bad],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "tls_server_config.cert_file" in proc.stderr and bad in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_trickling_client_is_cut_off_at_the_request_deadline(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slowloris: one header byte at a time, each well inside the per-read time-out, never finishing.
    # The whole request must arrive within REQUEST_TIMEOUT, or the connection (and its slot) is taken back.
    monkeypatch.setattr(http_mod, "REQUEST_TIMEOUT", 1.0)
    srv = serve()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        closed = False
        for _ in range(30):  # 30 x 0.25 s: far beyond the 1 s deadline
            try:
                s.sendall(b"a")
                s.settimeout(0.25)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
                break
            else:  # the server answered (408/400) and will close
                closed = True
                break
        assert closed, "the server kept a never-ending request open"
    assert plain_get(srv.port) == 200


def test_a_trickled_tls_handshake_is_cut_off_at_the_deadline(
    tmp_path: Path, pki: dict[str, Any], serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "REQUEST_TIMEOUT", 1.0)
    srv = serve(write(tmp_path, tls_yaml(pki["server"])))
    # A real ClientHello, sent one byte every 0.25 s: each read is quick, the handshake never ends.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls_client_context(pki["ca"].cert).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        closed = False
        for byte in hello[:30]:  # 30 x 0.25 s: far beyond the 1 s deadline
            try:
                s.sendall(bytes([byte]))
                s.settimeout(0.25)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the server waited for a never-ending handshake"
    assert https_get(srv.port, tls_client_context(pki["ca"].cert))[0] == 200


@pytest.mark.integration
def test_the_daemon_serves_every_endpoint_over_tls_with_auth(tmp_path: Path, pki: dict[str, Any],
                                                             exporter_process: Callable[..., Daemon]) -> None:
    web = write(tmp_path, tls_yaml(pki["server"]) + "http_server_config:\n  headers:\n"
                "    X-Frame-Options: deny\n" f"basic_auth_users:\n  prometheus: {HASH}\n")
    ctx = tls_client_context(pki["ca"].cert)
    auth = {"Authorization": basic("prometheus", PASSWORD)}
    daemon = exporter_process(["--broker-url", "redis://127.0.0.1:6379/0", "--web-config-file", web],
                              wait_healthy=False)
    wait_for(lambda: https_get(daemon.port, ctx, "/healthz", auth)[0] == 200, 30, what="HTTPS /healthz")
    status, headers, body = https_get(daemon.port, ctx, "/metrics", auth)
    assert status == 200 and b"celery_exporter_build_info" in body
    assert headers["X-Frame-Options"] == "deny"
    for path in ("/metrics", "/healthz", "/readyz", "/"):
        status, headers, _ = https_get(daemon.port, ctx, path)
        assert status == 401 and "WWW-Authenticate" in headers, path
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        daemon.get("/metrics")  # plain HTTP
    assert daemon.terminate() == 0


def test_broken_yaml_is_reported_by_line_and_column_never_by_content(tmp_path: Path) -> None:
    # PyYAML's own message quotes the offending line: here a bcrypt hash and a pasted password.
    path = tmp_path / "web.yml"
    path.write_text('basic_auth_users:\n  admin: "$2b$12$SeCrEtHaSh\n  other: [pw-SeCrEt\n')
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    message = str(err.value)
    assert "SeCrEt" not in message and "$2b$" not in message, message
    assert "not valid YAML" in message and "line " in message and "column " in message
