"""Capture the real Celery events of every ending issue 12 is about (Reject through a DLX ladder, hard
and soft time limits, Ignore, retries with jitter, a pool child killed, revoke with terminate, an expired
task, a worker SIGKILLed mid-task), from real prefork workers, into ``tests/testdata/events/``.

The tasks and the driver are the delivery tests' own (tests/_deliveries_app.py,
tests/_deliveries_driver.py); the recorders are tools/capture_events.py's. Usage (repository root)::

    python -m tools.capture_deliveries redis redis://127.0.0.1:6379/15 OUT.jsonl
    python -m tools.capture_deliveries amqp amqp://guest:guest@127.0.0.1:5672/%2F OUT.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests._deliveries_driver import kill_victim, send_plan, workers
from tools.capture_events import Recorder, record_amqp, record_redis


class DeliveryRecorder(Recorder):
    def keep(self, line: dict[str, Any], body: bytes | str) -> None:
        events = json.loads(body)
        events = events if isinstance(events, list) else [events]
        if any(str(e.get("hostname", "")).startswith(("deliveries-", "victim-"))
               or str(e.get("name", "")).startswith("deliveries.") for e in events):
            with self.lock:
                self.lines.append(line)
                for e in events:
                    self.types[e["type"]] += 1


def main(argv: list[str]) -> int:
    mode, url, out = argv
    rec = DeliveryRecorder("deliveries-")
    ready = threading.Event()
    reader = threading.Thread(target=record_amqp if mode == "amqp" else record_redis, args=(url, rec, ready),
                              daemon=True)
    reader.start()
    if not ready.wait(10):
        raise SystemExit("recorder did not start")
    with tempfile.TemporaryDirectory() as tmp:
        truth = Path(tmp)
        with workers(url, truth, "capture") as (_, _, vproc):
            send_plan(url, truth, lambda: rec.count("worker-online") >= 2)
            kill_victim(truth, vproc)
            time.sleep(8)  # the ladder's returns, the jitter retries, two heartbeats after Ignore
    time.sleep(1)
    rec.stop.set()
    reader.join(10)
    with open(out, "w", encoding="utf-8") as fh:
        for line in rec.lines:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
    summary = {"mode": mode, "messages": len(rec.lines), "events_by_type": dict(sorted(rec.types.items()))}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
