"""Capture real Celery events, byte for byte, from a real worker, into ``tests/testdata/events/``.

This module is both the Celery app the worker runs (``celery -A tools.capture_events worker``) and the
driver that starts that worker, sends a fixed mix of tasks and records what the broker carried:

* Redis: every pub/sub message whose channel matches ``*celeryev*`` on the chosen db, as received by a
  plain redis-py PSUBSCRIBE (channel name and the raw payload, i.e. kombu's JSON envelope with the
  base64 body);
* RabbitMQ: every message on a queue of our own bound to the ``celeryev`` topic exchange with ``#``
  (routing key, content_type, content_encoding and the body text).

Only messages from this run are kept (the worker and client node names carry our pid), so a shared
broker does not pollute the capture. Usage (from the repository root)::

    python -m tools.capture_events redis redis://127.0.0.1:6379/15 OUT.jsonl
    python -m tools.capture_events redis-prefix redis://127.0.0.1:6379/15 OUT.jsonl   # global_keyprefix pfx:
    python -m tools.capture_events amqp amqp://guest:guest@127.0.0.1:5672/%2F OUT.jsonl

See tests/testdata/events/README.md for the files this produced and what they hold.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery

BROKER = os.environ.get("CAPTURE_BROKER", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("CAPTURE_KEYPREFIX", "")
QUEUE = os.environ.get("CAPTURE_QUEUE", "capture")

app = Celery("capture", broker=BROKER)
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_default_queue=QUEUE,
    broker_transport_options={"global_keyprefix": PREFIX} if PREFIX else {},
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="capture.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="capture.fail")
def fail() -> None:
    raise ValueError("boom")


@app.task(name="capture.flaky", bind=True, autoretry_for=(ValueError,), retry_backoff=1,
          retry_jitter=False, max_retries=3)
def flaky(self: Any) -> str:
    if self.request.retries < 2:
        raise ValueError(f"flaky attempt {self.request.retries}")
    return "ok"


@app.task(name="capture.exhaust", bind=True, autoretry_for=(ValueError,), retry_backoff=1,
          retry_jitter=False, max_retries=2)
def exhaust(self: Any) -> None:
    raise ValueError(f"exhaust attempt {self.request.retries}")


# ------------------------------------------------------------------------------------------ driver
PLAN = {"add": 6, "fail": 3, "flaky": 2, "exhaust": 2, "eta": 2}
# Terminal events we wait for: succeeded = add + flaky + eta, failed = fail + exhaust.
EXPECT_SUCCEEDED = PLAN["add"] + PLAN["flaky"] + PLAN["eta"]
EXPECT_FAILED = PLAN["fail"] + PLAN["exhaust"]


def _events_of(body: bytes | str) -> list[dict[str, Any]]:
    obj = json.loads(body)
    return obj if isinstance(obj, list) else [obj]


class Recorder:
    def __init__(self, worker_name: str) -> None:
        self.worker_name = worker_name
        self.lines: list[dict[str, Any]] = []
        self.types: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def keep(self, line: dict[str, Any], body: bytes | str) -> None:
        events = _events_of(body)
        # Ours: anything our worker sent, and task-sent events of our tasks (the client and the worker's
        # retries send those under an anonymous gen<pid>@host node name).
        if not any(str(e.get("hostname", "")).startswith(self.worker_name)
                   or (e.get("type") == "task-sent" and str(e.get("name", "")).startswith("capture."))
                   for e in events):
            return
        with self.lock:
            self.lines.append(line)
            for e in events:
                self.types[e["type"]] += 1

    def count(self, etype: str) -> int:
        with self.lock:
            return self.types[etype]


def record_redis(url: str, rec: Recorder, ready: threading.Event) -> None:
    import redis

    client = redis.Redis.from_url(url)
    ps = client.pubsub()
    ps.psubscribe("*celeryev*")
    while not rec.stop.is_set():
        msg = ps.get_message(timeout=0.2)
        if msg is None:
            continue
        if msg["type"] == "psubscribe":
            ready.set()
            continue
        if msg["type"] != "pmessage":
            continue
        payload: bytes = msg["data"]
        envelope = json.loads(payload)
        body = base64.b64decode(envelope["body"])
        rec.keep({"channel": msg["channel"].decode(), "pattern": msg["pattern"].decode(),
                  "payload": payload.decode()}, body)
    ps.close()


def record_amqp(url: str, rec: Recorder, ready: threading.Event) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url.replace("pyamqp://", "amqp://")))
    ch = conn.channel()
    ch.exchange_declare("celeryev", exchange_type="topic", durable=True)
    qname = f"capture.{os.getpid()}"
    ch.queue_declare(qname, auto_delete=True, arguments={"x-expires": 60_000})
    ch.queue_bind(qname, "celeryev", routing_key="#")
    ready.set()
    while not rec.stop.is_set():
        for method, props, body in ch.consume(qname, inactivity_timeout=0.2):
            if method is None:
                break
            rec.keep({"routing_key": method.routing_key, "content_type": props.content_type,
                      "content_encoding": props.content_encoding, "delivery_mode": props.delivery_mode,
                      "body": body.decode()}, body)
            ch.basic_ack(method.delivery_tag)
    ch.cancel()
    conn.close()


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    mode, url, out = argv
    prefix = "pfx:" if mode == "redis-prefix" else ""
    worker_name = f"capture-{os.getpid()}"
    rec = Recorder(worker_name)
    ready = threading.Event()
    target = record_amqp if mode == "amqp" else record_redis
    reader = threading.Thread(target=target, args=(url, rec, ready), daemon=True)
    reader.start()
    if not ready.wait(10):
        raise SystemExit("recorder did not start")

    env = dict(os.environ, CAPTURE_BROKER=url, CAPTURE_KEYPREFIX=prefix, CAPTURE_QUEUE=QUEUE)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tools.capture_events", "worker", "-E", "--pool=prefork",
         "-c", "2", "-n", f"{worker_name}@%h", "-Q", QUEUE, "--without-mingle", "--without-gossip",
         "-l", "warning"],
        env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for(lambda: rec.count("worker-online") >= 1, 60, "worker-online")
        app.conf.broker_url = url
        app.conf.broker_transport_options = {"global_keyprefix": prefix} if prefix else {}
        with app.producer_or_acquire() as producer:
            for i in range(PLAN["add"]):
                add.apply_async((i, i), producer=producer)
            for _ in range(PLAN["fail"]):
                fail.apply_async(producer=producer)
            for _ in range(PLAN["flaky"]):
                flaky.apply_async(producer=producer)
            for _ in range(PLAN["exhaust"]):
                exhaust.apply_async(producer=producer)
            for i in range(PLAN["eta"]):
                add.apply_async((100, i), countdown=1, producer=producer)
        wait_for(lambda: rec.count("task-succeeded") >= EXPECT_SUCCEEDED
                 and rec.count("task-failed") >= EXPECT_FAILED, 90, "all tasks to finish")
        wait_for(lambda: rec.count("worker-heartbeat") >= 2, 10, "two heartbeats")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    wait_for(lambda: rec.count("worker-offline") >= 1, 10, "worker-offline")
    time.sleep(0.5)
    rec.stop.set()
    reader.join(10)

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for line in rec.lines:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
    summary = {"mode": mode, "host": socket.gethostname(), "messages": len(rec.lines),
               "events_by_type": dict(sorted(rec.types.items()))}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
