"""Builders for Celery 5 event dicts, field for field as celery.events.Event and the worker send them
(compare tests/testdata/events/, captured from real workers)."""

from __future__ import annotations

import base64
import json
from typing import Any

T0 = 1_700_000_000.0


def ev(type_: str, ts: float, hostname: str = "celery@w1", **fields: Any) -> dict[str, Any]:
    base = {"hostname": hostname, "utcoffset": 0, "pid": 4242, "clock": 1, "timestamp": ts, "type": type_}
    base.update(fields)
    return base


def sent(uuid: str, name: str, ts: float, queue: str | None = "celery", retries: int = 0,
         eta: str | None = None) -> dict[str, Any]:
    return ev("task-sent", ts, hostname="gen1@producer", uuid=uuid, root_id=uuid, parent_id=None, name=name,
              args="()", kwargs="{}", retries=retries, eta=eta, expires=None, queue=queue, exchange="",
              routing_key=queue)


def received(uuid: str, name: str, ts: float, retries: int = 0, eta: str | None = None) -> dict[str, Any]:
    return ev("task-received", ts, uuid=uuid, name=name, args="()", kwargs="{}", root_id=uuid,
              parent_id=None, retries=retries, eta=eta, expires=None)


def started(uuid: str, ts: float) -> dict[str, Any]:
    return ev("task-started", ts, uuid=uuid)


def succeeded(uuid: str, ts: float, runtime: float) -> dict[str, Any]:
    return ev("task-succeeded", ts, uuid=uuid, result="None", runtime=runtime)


def failed(uuid: str, ts: float, exception: str = "ValueError('boom')") -> dict[str, Any]:
    return ev("task-failed", ts, uuid=uuid, exception=exception, traceback="Traceback ...")


def retried(uuid: str, ts: float, exception: str = "ConnectionError('down')") -> dict[str, Any]:
    return ev("task-retried", ts, uuid=uuid, exception=exception, traceback="Traceback ...")


def heartbeat(hostname: str, ts: float, active: int = 0, type_: str = "worker-heartbeat",
              processed: int = 0) -> dict[str, Any]:
    return ev(type_, ts, hostname=hostname, freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
              sw_sys="Linux", active=active, processed=processed, loadavg=[0.1, 0.1, 0.1])


def redis_envelope(body: Any, routing_key: str = "task.multi", content_type: str = "application/json") -> bytes:
    """A kombu Redis-transport envelope exactly as the worker publishes it on /{db}.celeryev/<key>."""
    raw = json.dumps(body).encode()
    return json.dumps({
        "body": base64.b64encode(raw).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"hostname": "celery@w1"},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "5e2c0c4a-9b38-4c39-9f6c-2b1b5b3a7c11",
        },
    }).encode()
