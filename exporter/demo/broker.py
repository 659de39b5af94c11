"""The demo's broker: a private ``redis-server`` when one is on PATH, else kombu's in-memory transport.

``PrivateRedis`` starts ``redis-server`` on a free loopback port with a temporary directory and no
persistence, in its own process group (Ctrl-C in the terminal reaches only the demo, which stops Redis
last) and, on Linux, with a parent-death signal so it never outlives a killed demo. With it the exporter
runs exactly as in production: the Redis event fast path and the Redis poller, which finds the
``dlq:*`` lists by itself.

``memory://`` works only inside one process: the worker, the producer and the exporter's event receiver
share kombu's in-process broker state (its virtual exchanges route the topic ``celeryev`` exchange to
every bound queue). The exporter has no poller for it (``build_polling`` returns none for the memory
transport), so the demo supplies ``MemoryPoller``: a real ``Poller`` for the exporter's own polling
scheduler and queue collector, reading the memory transport's queue sizes and the demo's in-process
dead-letter lists (``MemoryLists``, a stand-in for the Redis lists the tasks push to).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from exporter.brokers.model import entry_timestamp
from exporter.brokers.scheduler import STALE_POLLS, Polling, PollStore, SourceRunner
from exporter.config import Config
from exporter.status import PollResult, QueueDepth

START_TIMEOUT = 5.0
MAX_DLQ_ENTRIES = 10_000  # per list: a demo left running for days stays bounded


class BrokerError(RuntimeError):
    """The demo could not start its broker."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateRedis:
    """A throw-away ``redis-server`` on 127.0.0.1; ``start()`` then ``url``; ``stop()`` always."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir = tempfile.mkdtemp(prefix="celery-exporter-demo-")

    @classmethod
    def available(cls) -> str | None:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> None:
        error = "not started"
        for _ in range(attempts):  # another process may take the free port before redis binds it
            self.port = free_port()
            args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self.tmpdir, "--daemonize", "no",
                    "--loglevel", "warning", "--logfile", os.path.join(self.tmpdir, "redis.log")]
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            error = self._wait_ready()
            if not error:
                return
            self.stop()
        raise BrokerError(f"redis-server did not start: {error}")

    def _wait_ready(self) -> str:
        import redis

        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return f"exited with status {self.proc.returncode}"
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return ""
                time.sleep(0.05)
            return f"no answer to PING within {START_TIMEOUT:g}s"
        finally:
            client.close()

    def stop(self, timeout: float = 2.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class MemoryLists:
    """The few Redis list commands the demo needs, in process memory (for the memory broker)."""

    def __init__(self, max_len: int = MAX_DLQ_ENTRIES) -> None:
        self._lists: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self.max_len = max_len

    def lpush(self, name: str, *values: Any) -> int:
        with self._lock:
            items = self._lists.setdefault(name, deque(maxlen=self.max_len))
            for value in values:
                items.appendleft(value if isinstance(value, str) else str(value))
            return len(items)

    def llen(self, name: str) -> int:
        with self._lock:
            return len(self._lists.get(name, ()))

    def lengths_and_oldest(self) -> dict[str, tuple[int, str | None]]:
        """Every list's length and its oldest entry (the tail, as LPUSH puts the newest at the head)."""
        with self._lock:
            return {k: (len(v), v[-1] if v else None) for k, v in self._lists.items()}


class MemoryPoller:
    """A ``Poller`` for the memory transport: task queue sizes and the in-process dead-letter lists."""

    source = "memory"

    def __init__(self, lists: MemoryLists, queues: Callable[[], Iterable[str]], timestamp_field: str) -> None:
        self.lists = lists
        self.queues = queues
        self.timestamp_field = timestamp_field

    def poll(self, deadline: float) -> PollResult:
        from kombu.transport.memory import Channel

        depths = {}
        for name in dict.fromkeys(self.queues()):
            queue = Channel.queues.get(name)  # shared by every memory channel in the process
            depths[name] = QueueDepth(ready=float(queue.qsize() if queue is not None else 0))
        dead, oldest = {}, {}
        for key, (length, tail) in self.lists.lengths_and_oldest().items():
            dead[key] = float(length)
            ts = entry_timestamp(tail, self.timestamp_field)
            if ts is not None:
                oldest[key] = ts
        return PollResult(queues=depths, dead_letter=dead, dead_letter_oldest=oldest)

    def close(self) -> None:
        pass


def memory_polling(config: Config, lists: MemoryLists, queues: Callable[[], Iterable[str]]) -> Polling:
    """The exporter's own polling loop and queue collector, driven by ``MemoryPoller``."""
    poller = MemoryPoller(lists, queues, config.dlq_timestamp_field)
    store = PollStore([poller.source], STALE_POLLS * config.poll_interval)
    runner = SourceRunner(poller, store, config.poll_timeout)
    return Polling([runner], config.poll_interval, store.views)
