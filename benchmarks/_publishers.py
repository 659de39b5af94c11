"""The flood publishers of ``event_bench.py``, one forked process per lane of message sources.

Every message is encoded before the clock starts and written paced at the offered rate: Redis as ready
RESP ``PUBLISH`` commands on a raw socket (replies counted on a second thread; a reply of 0 means nobody
was subscribed), RabbitMQ as ready ``basic.publish`` frames on a raw AMQP connection.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import socket
import threading
import time
from typing import Any


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
