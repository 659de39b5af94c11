"""HTTP/1.1 on an asyncio stream, as much as the exporter needs: read one request's line and headers
within a total byte budget, write one response, and linger after a refusal. No bodies: GET and HEAD only.

The budget is the point: headers are read before authentication (they carry it), so what an anonymous
client can make the exporter hold is ``MAX_HEADER_BYTES`` per request, and (with the stream reader's
limit set to the same) about twice that per connection, pipelined bytes included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter import __version__

MAX_HEADER_BYTES = 64 * 1024  # request line + headers, per request
MAX_HEADERS = 100
# Seconds, and bytes below, of a refused request's input discarded before closing: enough to cover what a
# client has in flight (loopback socket buffers reach several MB) when it sees the refusal and stops.
LINGER = 2.0
LINGER_BYTES = 8 * 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; repeats joined by ", "


class HTTPError(Exception):
    """A request refused while it was being read; the connection is closed after the answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def read_request(reader: asyncio.StreamReader, first: bytes) -> Request:
    """Read one request line and its headers (``first``: a byte already read), within the budget."""
    budget = MAX_HEADER_BYTES - len(first)
    try:
        line = first + await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HTTPError(414, "request line too long") from None
    budget -= len(line)
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400 if len(parts) != 3 else 505, "bad request line")
    request = Request(parts[0], parts[1].split("?", 1)[0], parts[2])
    for _ in range(MAX_HEADERS + 1):
        try:
            raw = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "request headers too large") from None
        budget -= len(raw)
        if budget < 0:
            raise HTTPError(431, "request headers too large")
        if raw == b"\r\n":
            return request
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "bad header line")
        key, value = name.lower(), value.strip()
        request.headers[key] = f"{request.headers[key]}, {value}" if key in request.headers else value
    raise HTTPError(431, "too many request headers")


async def write_response(
    writer: asyncio.StreamWriter, code: int, body: bytes, content_type: str, *, head: bool = False,
    close: bool = False, encoding: str | None = None, headers: Iterable[tuple[str, str]] = (),
    timeout: float,
) -> None:
    """Write one response and wait (up to ``timeout``) until the transport has handed it on."""
    lines = [f"HTTP/1.1 {code} {_REASONS.get(code, '')}", f"Server: celery-exporter/{__version__}",
             f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"]
    if code != 401 or body:
        lines.append(f"Content-Type: {content_type}")
    if encoding:
        lines += [f"Content-Encoding: {encoding}", "Vary: Accept-Encoding"]
    lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
    if not head:
        writer.write(body)
    async with asyncio.timeout(timeout):
        await writer.drain()


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request whose bytes may still be arriving, half-close and discard input for a
    moment (bounded in time and bytes), so the client reads the refusal rather than a connection reset
    (closing a socket with unread input makes the kernel send RST). Go's net/http does the same."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        got = 0
        async with asyncio.timeout(LINGER):
            while got < LINGER_BYTES and (chunk := await reader.read(65536)):
                got += len(chunk)
