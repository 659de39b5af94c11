"""The HTTP server: ``/metrics`` (Prometheus text or OpenMetrics by content negotiation, gzip),
``/healthz`` (process and event loop alive), ``/readyz`` (connected to the broker), and an index page.

A scrape only renders what the collectors already hold: it never talks to a worker or waits on the broker.
Each connection gets its own thread with a socket time-out, so a slow or stalled client ties up only
itself; the number of connections served at once is capped, and request lines, headers and bodies are
bounded. TLS and basic auth come from an exporter-toolkit web config (``exporter.webconfig``).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import html
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.exposition import render

log = structlog.get_logger("exporter.http")

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
INDEX_PATH = "/"

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request or read the answer
MAX_CONNECTIONS = 64
BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Health:
    """What /healthz and /readyz answer from; callables so the server holds no component references."""

    def __init__(
        self,
        alive: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        index_info: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.alive = alive
        self.ready = ready
        self.index_info = index_info or (lambda: {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    registry: CollectorRegistry
    health: Health
    authorize: Callable[[str | None], bool] | None
    extra_headers: tuple[tuple[str, str], ...]
    slots: threading.BoundedSemaphore
    ssl_context: ssl.SSLContext | None
    metrics_path: str

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(REQUEST_TIMEOUT)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(BUSY_RESPONSE)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                # Handshake in the connection's own thread, under its time-out, never in the accept loop.
                request = self.ssl_context.wrap_socket(request, server_side=True)
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection failed", client=client_address[0], error=str(exc))
            self.shutdown_request(request)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request handling failed", client=client_address[0], exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline: a per-read time-out alone lets a client trickle a request
    one byte at a time and keep its connection slot forever (slowloris)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + REQUEST_TIMEOUT

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(min(left, REQUEST_TIMEOUT))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(REQUEST_TIMEOUT)  # writes keep the full per-operation time-out


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":  # dual-stack whatever the host's net.ipv6.bindv6only says
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"celery-exporter/{__version__}"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain makefile() reader; it holds a reference that delays the socket close
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The request line and headers (and, on a kept-alive connection, the wait for them) must all
        # arrive within REQUEST_TIMEOUT of each other.
        self._reader.deadline = time.monotonic() + REQUEST_TIMEOUT
        super().handle_one_request()

    def end_headers(self) -> None:
        for name, value in self.server.extra_headers:  # http_server_config.headers, on every response
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", client=self.client_address[0], line=format % args)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        length = self.headers.get("Content-Length")
        if length not in (None, "0") or self.headers.get("Transfer-Encoding"):
            # The body is never read, so the connection must end here: otherwise its bytes would be
            # parsed as the next request on this connection (request smuggling).
            self.close_connection = True
            self._send(413, b"request bodies are not accepted\n", "text/plain; charset=utf-8", head)
            return
        if self.server.authorize is not None and not self.server.authorize(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="celery-exporter"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path.split("?", 1)[0]
        if path == self.server.metrics_path:
            self._metrics(head)
        elif path == HEALTH_PATH:
            self._check(self.server.health.alive, head)
        elif path == READY_PATH:
            self._check(self.server.health.ready, head)
        elif path == INDEX_PATH:
            self._send(200, self._index(), "text/html; charset=utf-8", head)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head)

    def do_POST(self) -> None:
        self.close_connection = True  # the body, if any, is unread: see do_GET
        self._send(405, b"method not allowed\n", "text/plain; charset=utf-8", False)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _metrics(self, head: bool) -> None:
        _, content_type = choose_encoder(self.headers.get("Accept") or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        try:
            body = render(self.server.registry, openmetrics=openmetrics)
        except Exception:
            log.exception("rendering /metrics failed")
            self._send(500, b"error rendering metrics\n", "text/plain; charset=utf-8", head)
            return
        encoding = None
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            encoding = "gzip"
        self._send(200, body, content_type, head, encoding)

    def _check(self, probe: Callable[[], tuple[bool, str]], head: bool) -> None:
        ok, detail = probe()
        self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8", head)

    def _index(self) -> bytes:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self.server.health.index_info().items()
        )
        paths = (self.server.metrics_path, HEALTH_PATH, READY_PATH)
        links = "".join(f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>' for p in paths)
        return (
            "<!doctype html><html><head><title>Celery Exporter</title></head><body>"
            f"<h1>Celery Exporter {html.escape(__version__)}</h1><ul>{links}</ul>"
            f"<table>{rows}</table></body></html>"
        ).encode()

    def _send(
        self, code: int, body: bytes, content_type: str, head: bool, encoding: str | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if encoding:
            self.send_header("Content-Encoding", encoding)
            self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class MetricsServer:
    """Owns the listening socket and the accept thread."""

    def __init__(
        self,
        address: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        ssl_context: ssl.SSLContext | None = None,
        authorize: Callable[[str | None], bool] | None = None,
        headers: Mapping[str, str] | None = None,
        metrics_path: str = METRICS_PATH,
    ) -> None:
        if address:
            server_cls: type[_Server] = _Server6 if ":" in address else _Server  # ":" only in IPv6 literals
            self._server = server_cls((address, port), _Handler)
        else:  # every address: IPv6 and (dual-stack) IPv4, or IPv4 alone on a host without IPv6
            try:
                self._server = _Server6(("::", port), _Handler)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                self._server = _Server(("0.0.0.0", port), _Handler)
        self._server.metrics_path = metrics_path
        self._server.registry = registry
        self._server.health = health
        self._server.authorize = authorize
        self._server.extra_headers = tuple((headers or {}).items())
        self._server.ssl_context = ssl_context
        self._server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
