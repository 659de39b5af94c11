"""Small pieces every kind of integration test needs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def celery_worker(app: str, queue: str, name: str, env: dict[str, str], cwd: Path,
                  pool: str = "prefork", concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` subprocess with task events on; warm-shut-down (SIGTERM) on exit, killed
    if it does not stop within 20 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "-E", f"--pool={pool}", "-c", str(concurrency),
         "-n", name, "-Q", queue, "--without-mingle", "--without-gossip", "-l", "warning"],
        env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with terminated_on_exit(proc, 20):
        yield proc


@contextmanager
def terminated_on_exit(proc: subprocess.Popen[Any], timeout: float) -> Iterator[subprocess.Popen[Any]]:
    """SIGTERM to ``proc`` on exit (unless it has ended), killed if it does not stop within ``timeout``."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
