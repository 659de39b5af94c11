"""The HTTP server: ``/metrics`` (Prometheus text or OpenMetrics by content negotiation, gzip),
``/healthz`` (process and event loop alive), ``/readyz`` (connected to the broker), and an index page.

A scrape only renders what the collectors already hold: it never talks to a worker or waits on the broker.

Design: one asyncio event loop in the ``http`` thread owns every connection, the way Go's net/http
(which exporter-toolkit builds on) keeps a cheap goroutine per connection. A connection that is idle,
half-open, in its TLS handshake or trickling its headers costs a socket and a bounded buffer, never a
thread or a slot, so such clients cannot lock out a scrape. (The thread-per-connection server this
replaced took one of 64 slots on connect: 64 silent clients made /metrics and /healthz answer 503.)

* **Connections**: at most ``MAX_CONNECTIONS`` open. A new connection over the cap closes the oldest
  *idle* one (no complete request yet, or kept alive between requests), so a flood of idle or
  slowloris clients only ever evicts itself once real clients keep connecting. The cap is total, not
  per client IP: Prometheus, the kubelet's probes and an attacker may all share one (node or NAT)
  address, and a per-IP cap would then lock the probes out along with the attacker.
* **Deadlines**: a new connection must complete its TLS handshake and its request line and headers
  within ``REQUEST_TIMEOUT`` of being accepted; a kept-alive connection may wait ``IDLE_TIMEOUT`` for
  its next request's first byte, then has ``REQUEST_TIMEOUT`` for the rest. A response must be taken
  within ``REQUEST_TIMEOUT`` too.
* **Header budget** (``exporter.http_wire``): request line plus headers at most ``MAX_HEADER_BYTES``
  (431 beyond, 414 for a request line alone over it) and ``MAX_HEADERS`` lines; the stream reader stops
  reading a connection whose unparsed input exceeds twice that. Headers are parsed before
  authentication (they carry it), so this is what an anonymous client can make the exporter hold:
  ``MAX_CONNECTIONS`` x 128 KiB at worst.
* **Slots only for parsed requests**: rendering ``/metrics`` and the status page ``/``
  (``exporter.statuspage``) runs in a small thread pool, off the loop so a long render never delays a
  probe, at most ``MAX_RENDERS`` at once; up to ``MAX_WAITING`` complete requests wait for a slot until
  their deadline, more get 503 at once. ``/healthz`` and ``/readyz`` need no slot and are answered on
  the loop, so a probe never fails because of other clients.
* **Authentication**: a cached credential is checked on the loop; a cache miss (bcrypt, slow by
  design) runs in its own pool, at most ``MAX_AUTH_PENDING`` queued (other requests get 503 beyond
  that; probes wait their turn), so wrong passwords cannot delay scrapes with cached credentials.
  Until authenticated, and while its answer is being taken, a connection counts as idle for eviction:
  at most ``MAX_RENDERS + MAX_WAITING`` connections are ever not evictable, far below the cap.

Request bodies are refused (and the connection closed, so a body cannot be smuggled in as a second
request). TLS and basic auth come from an exporter-toolkit web config (``exporter.webconfig``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from prometheus_client.registry import CollectorRegistry

from exporter.exposition import OPENMETRICS_CONTENT_TYPE, negotiate, render
from exporter.http_wire import MAX_HEADER_BYTES, HTTPError, Request, linger, read_request, write_response
from exporter.statuspage import basic_page

log = structlog.get_logger("exporter.http")

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
INDEX_PATH = "/"

REQUEST_TIMEOUT = 10.0  # seconds to send a request (from the first byte) or to take a response
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
MAX_CONNECTIONS = 256  # open connections; the oldest idle one is closed to admit a new one
MAX_RENDERS = 4  # /metrics renders at once; more complete requests wait for a slot
MAX_WAITING = 16  # /metrics requests waiting for a render slot; beyond that, 503 at once
MAX_AUTH_PENDING = 16  # uncached (bcrypt) password checks queued; beyond that, 503 at once
TEXT = "text/plain; charset=utf-8"


def _no_info() -> dict[str, str]:
    return {}


@dataclass
class Health:
    """What /healthz, /readyz and / answer from; callables so the server holds no component references."""

    alive: Callable[[], tuple[bool, str]]
    ready: Callable[[], tuple[bool, str]]
    index_info: Callable[[], dict[str, str]] = _no_info  # the plain page's rows, when there is no ``page``
    page: Callable[[], str] | None = None  # the status page (exporter.statuspage), rendered in a slot


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    idle: bool = True
    served: int = 0  # requests answered on this connection


class MetricsServer:
    """Owns the listening socket, the event loop thread and the connections."""

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
        self.metrics_path = metrics_path
        self.registry = registry
        self.health = health
        self.ssl_context = ssl_context
        self.authorize = authorize
        self.extra_headers = tuple((headers or {}).items())  # http_server_config.headers
        # Bound here, as before, so a port in use fails at construction and .port is known at once.
        if address:
            self._sock = _listen(address, port)
        else:  # every address: IPv6 and (dual-stack) IPv4, or IPv4 alone on a host without IPv6
            try:
                self._sock = _listen("::", port)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                self._sock = _listen("0.0.0.0", port)
        self._loop = asyncio.new_event_loop()
        self._conns: OrderedDict[asyncio.StreamWriter, _Conn] = OrderedDict()  # oldest idle first
        self._renders = ThreadPoolExecutor(MAX_RENDERS, thread_name_prefix="http-render")
        self._auth = ThreadPoolExecutor(2, thread_name_prefix="http-auth")
        self._slots = asyncio.Semaphore(MAX_RENDERS)  # binds to the loop on first use (3.10+)
        self._waiting = 0  # /metrics requests waiting for a slot (touched on the loop only)
        self._auth_pending = 0  # uncached password checks queued or running (touched on the loop only)
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=5)
        self._renders.shutdown(wait=False, cancel_futures=True)
        self._auth.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._sock.close()

    # ------------------------------------------------------------------ loop and connections
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, sock=self._sock, limit=MAX_HEADER_BYTES)
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for writer in list(self._conns):
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    def _admit(self, conn: _Conn) -> bool:
        """Make room for ``conn``: close the oldest idle connection when at the cap."""
        while len(self._conns) >= MAX_CONNECTIONS:
            oldest = next((w for w, c in self._conns.items() if c.idle), None)
            if oldest is None:
                return False  # every connection is being answered: refuse the newcomer instead
            del self._conns[oldest]
            oldest.transport.abort()
            log.debug("closed the oldest idle connection to admit a new one")
        self._conns[conn.writer] = conn
        return True

    def _mark_idle(self, conn: _Conn) -> None:
        conn.idle = True
        if conn.writer in self._conns:
            self._conns.move_to_end(conn.writer)  # idle since now: the youngest idle connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        if not self._admit(conn):
            writer.transport.abort()
            return
        deadline = time.monotonic() + REQUEST_TIMEOUT
        clean = False  # True once the last answer was drained and the connection may close gracefully
        try:
            if self.ssl_context is not None:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await writer.start_tls(self.ssl_context)
            # drain() then waits until the whole response is handed to the kernel, under its deadline.
            writer.transport.set_write_buffer_limits(high=0)
            while True:
                if conn.served:
                    # Kept alive: wait for the next request's first byte, then the usual deadline.
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        first = await reader.readexactly(1)
                    deadline = time.monotonic() + REQUEST_TIMEOUT
                else:
                    first = b""
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        request = await read_request(reader, first)
                except HTTPError as exc:
                    await self._send(writer, exc.code, (str(exc) + "\n").encode(), TEXT, close=True)
                    await linger(reader, writer)
                    clean = True
                    return
                keep_alive = await self._respond(request, writer, deadline)
                conn.served += 1
                if not keep_alive:
                    if request.method not in ("GET", "HEAD") or "content-length" in request.headers or (
                            "transfer-encoding" in request.headers):
                        await linger(reader, writer)  # a body may still be arriving
                    clean = True
                    return
                self._mark_idle(conn)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # an empty one is a client closing between requests: normal
                log.debug("connection closed mid-request", client=peer)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("connection closed", client=peer, error=type(exc).__name__)
        except asyncio.CancelledError:  # server shutdown; asyncio logs a cancelled handler as an error
            pass
        finally:
            self._conns.pop(writer, None)
            if clean:
                # A graceful close flushes what TLS may still buffer; abort() bounds how long that takes.
                # Only then: a timer keeps the transport (and its read buffer) alive until it fires.
                writer.close()
                if writer.transport.get_write_buffer_size():
                    asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, writer.transport.abort)
            else:
                writer.transport.abort()

    # ------------------------------------------------------------------ answering
    async def _respond(self, request: Request, writer: asyncio.StreamWriter, deadline: float) -> bool:
        """Answer one parsed request; returns whether the connection may serve another."""
        h = request.headers
        keep = h.get("connection", "").lower() != "close" and (
            request.version != "HTTP/1.0" or h.get("connection", "").lower() == "keep-alive"
        )
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            # The body, if any, is unread, so the connection must end here (request smuggling).
            await self._send(writer, 405, b"method not allowed\n", TEXT, close=True)
            return False
        if h.get("content-length", "0") != "0" or "transfer-encoding" in h:
            await self._send(writer, 413, b"request bodies are not accepted\n", TEXT, head, close=True)
            return False
        # Until authenticated, a request is anonymous: its connection stays evictable like an idle one,
        # so clients without the password (a bcrypt check each) cannot fill the connection table.
        authorized: bool | None = True
        if self.authorize is not None:
            probe = request.path in (HEALTH_PATH, READY_PATH)
            authorized = await self._authorized(h.get("authorization"), may_refuse=not probe)
        if authorized is None:
            await self._send(writer, 503, b"too many authentication checks at once\n", TEXT, head, close=True)
            return False
        if not authorized:
            await self._send(writer, 401, b"", TEXT, head, close=not keep,
                             extra=(("WWW-Authenticate", 'Basic realm="celery-exporter"'),))
            return keep
        conn = self._conns.get(writer)
        if conn is not None:
            conn.idle = False
        path = request.path
        if path == self.metrics_path:
            code, body, ctype, encoding = await self._metrics(h, deadline)
            await self._send(writer, code, body, ctype, head, close=not keep, encoding=encoding)
        elif path == HEALTH_PATH:
            await self._check(writer, self.health.alive, head, keep)
        elif path == READY_PATH:
            await self._check(writer, self.health.ready, head, keep)
        elif path == INDEX_PATH:
            code, body, ctype = await self._index_page(deadline)
            await self._send(writer, code, body, ctype, head, close=not keep)
        else:
            await self._send(writer, 404, b"not found\n", TEXT, head, close=not keep)
        return keep

    async def _authorized(self, header: str | None, may_refuse: bool) -> bool | None:
        """True or False; None when too many uncached checks are already queued and ``may_refuse``
        (probes never are refused for that: they wait their turn)."""
        assert self.authorize is not None
        quick = getattr(self.authorize, "cached_ok", None)  # BasicAuth: a cache hit needs no bcrypt
        if quick is not None and quick(header):
            return True
        if may_refuse and self._auth_pending >= MAX_AUTH_PENDING:
            return None  # bcrypt runs one check at a time: a longer queue only grows latency and memory
        self._auth_pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._auth, self.authorize, header)
        finally:
            self._auth_pending -= 1

    async def _slot(self, deadline: float) -> bool:
        """Take a render slot before ``deadline``; False (answer 503) when none frees up in time."""
        if self._waiting >= MAX_WAITING:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self._slots.acquire()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    async def _index_page(self, deadline: float) -> tuple[int, bytes, str]:
        if not await self._slot(deadline):  # the page copies a snapshot: off the loop, like a scrape
            return 503, b"too many requests at once\n", TEXT
        try:
            page = self.health.page or (lambda: basic_page((self.metrics_path, HEALTH_PATH, READY_PATH),
                                                           self.health.index_info()))
            text = await asyncio.get_running_loop().run_in_executor(self._renders, page)
        except Exception:
            log.exception("rendering the status page failed")
            return 500, b"error rendering the status page\n", TEXT
        finally:
            self._slots.release()
        return 200, text.encode("utf-8", "replace"), "text/html; charset=utf-8"

    async def _metrics(self, h: dict[str, str], deadline: float) -> tuple[int, bytes, str, str | None]:
        content_type = negotiate(h.get("accept", ""))
        openmetrics = content_type == OPENMETRICS_CONTENT_TYPE
        if not await self._slot(deadline):
            return 503, b"too many scrapes at once\n", TEXT, None
        gz = "gzip" in h.get("accept-encoding", "")
        try:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self._renders, _render, self.registry, openmetrics, gz)
        except Exception:  # render() isolates families; this is only for what it cannot
            log.exception("rendering /metrics failed")
            return 500, b"error rendering metrics\n", TEXT, None
        finally:
            self._slots.release()
        return 200, body, content_type, "gzip" if gz else None

    async def _check(
        self, writer: asyncio.StreamWriter, probe: Callable[[], tuple[bool, str]], head: bool, keep: bool
    ) -> None:
        ok, detail = probe()  # cheap by contract (thread liveness, flags): answered on the loop
        await self._send(writer, 200 if ok else 503, (detail + "\n").encode(), TEXT, head, close=not keep)

    async def _send(
        self, writer: asyncio.StreamWriter, code: int, body: bytes, content_type: str, head: bool = False,
        close: bool = False, encoding: str | None = None, extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        conn = self._conns.get(writer)
        if conn is not None:
            # Its request is answered: a client slow to take the answer is as evictable as an idle one.
            conn.idle = True
        await write_response(writer, code, body, content_type, head=head, close=close, encoding=encoding,
                             headers=(*extra, *self.extra_headers), timeout=REQUEST_TIMEOUT)


def _listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET  # ":" only in IPv6 literals
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address == "::":  # dual-stack whatever the host's net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _render(registry: CollectorRegistry, openmetrics: bool, gz: bool) -> bytes:
    body = render(registry, openmetrics=openmetrics)
    return gzip.compress(body, compresslevel=1) if gz else body
