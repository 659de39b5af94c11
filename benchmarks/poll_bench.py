"""Benchmark: one broker poll over 1,000 queues, on the real brokers of this machine.

    python benchmarks/poll_bench.py [--queues 1000] [--polls 10]

* Redis (db 14, keys named ``bench-*``): 1,000 kombu queues (binding sets, messages spread over priority
  sub-queues, some at steps the exporter was not told about), 50 ``dlq:*`` lists and the
  ``celery:dead_letter_queue`` sorted set.
* RabbitMQ management API: the same number of queues in a vhost created for the run and deleted after.
* RabbitMQ passive declares over AMQP (no management API), on the same queues, for comparison.

Every poll's totals are checked against what was created, so a fast wrong answer fails the run. Prints a
table and one JSON line; exits 1 when a target is missed (Redis < 1 s, management API < 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika
import redis

from exporter.brokers.polling import build_pollers
from exporter.brokers.rabbitmq.poller import ManagementApi
from exporter.config import Config, poll_settings
from exporter.status import PollResult

REDIS_URL = "redis://127.0.0.1:6379/14"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
MGMT = "http://guest:guest@127.0.0.1:15672"
SEP = "\x06\x16"
TARGETS = {"redis": 1.0, "rabbitmq_management": 2.0}


def time_polls(poll: Callable[[float], PollResult], n: int, check: Callable[[PollResult], None]) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        result = poll(time.monotonic() + 30)
        out.append(time.perf_counter() - started)
        check(result)
    return out


# ------------------------------------------------------------------------------------------ Redis
def bench_redis(n_queues: int, n_polls: int) -> dict[str, Any]:
    client = redis.Redis.from_url(REDIS_URL)
    _redis_cleanup(client)
    expected_ready = 0
    pipe = client.pipeline(transaction=False)
    for i in range(n_queues):
        q = f"bench-q-{i:04d}"
        pipe.sadd(f"_kombu.binding.{q}", f"{q}{SEP}{SEP}{q}")
        pipe.lpush(q, *[b"{}"] * (i % 3 + 1))
        expected_ready += i % 3 + 1
        if i % 4 == 0:
            pipe.lpush(f"{q}{SEP}3", b"{}", b"{}")  # a configured step
            pipe.lpush(f"{q}{SEP}7", b"{}")  # a step only the producer knew
            expected_ready += 3
    for i in range(50):
        pipe.lpush(f"dlq:bench.task{i}", json.dumps({"timestamp": time.time() - 60}))
    pipe.zadd("celery:dead_letter_queue", {f"bench-{i}": time.time() - i for i in range(20)})
    pipe.execute()
    keys = client.dbsize()

    config = Config(REDIS_URL, max_queues=n_queues + 100)
    poller = build_pollers(poll_settings(config), lambda: ())[0]

    def check(result: PollResult) -> None:
        ready = sum(d.ready for name, d in result.queues.items() if name.startswith("bench-q-"))
        dlq = sum(v for name, v in result.dead_letter.items() if name.startswith("dlq:bench."))
        assert ready == expected_ready, (ready, expected_ready)
        assert dlq == 50, dlq
        assert result.dead_letter.get("celery:dead_letter_queue") == 20.0

    try:
        times = time_polls(poller.poll, n_polls, check)
    finally:
        poller.close()
        _redis_cleanup(client)
    return {"source": "redis", "queues": n_queues, "keys": keys, "times": times}


def _redis_cleanup(client: redis.Redis) -> None:
    for pattern in ("bench-*", "_kombu.binding.bench-*", "dlq:bench.*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            client.delete(*batch[i:i + 1000])
    client.delete("celery:dead_letter_queue")


# ------------------------------------------------------------------------------------------ RabbitMQ
def bench_rabbitmq(n_queues: int, n_polls: int) -> list[dict[str, Any]]:
    api = ManagementApi(MGMT)
    vhost = f"celery-exporter-bench-{os.getpid()}"
    api.request("PUT", f"/api/vhosts/{vhost}", body={})
    try:
        api.request("PUT", f"/api/permissions/{vhost}/guest",
                    body={"configure": ".*", "write": ".*", "read": ".*"})
        conn = pika.BlockingConnection(pika.URLParameters(AMQP + vhost))
        ch = conn.channel()
        ch.confirm_delivery()
        names = [f"bench-q-{i:04d}" for i in range(n_queues)]
        expected_ready = 0
        for i, name in enumerate(names):
            ch.queue_declare(name, durable=False)
            if i % 10 == 0:
                ch.basic_publish("", name, b"{}")
                expected_ready += 1
        conn.close()

        def check_mgmt(result: PollResult) -> None:
            ready = sum(d.ready for n, d in result.queues.items() if n.startswith("bench-q-"))
            assert len(result.queues) == n_queues and ready == expected_ready, (len(result.queues), ready)

        _wait_for_stats(api, vhost, n_queues, expected_ready)
        base = Config(AMQP + vhost, max_queues=n_queues + 100, poll_timeout=30.0)
        mgmt_poller = build_pollers(
            poll_settings(Config(AMQP + vhost, rabbitmq_management_url=MGMT, max_queues=n_queues + 100)),
            lambda: (),
        )[0]
        out = [{"source": "rabbitmq_management", "queues": n_queues,
                "times": time_polls(mgmt_poller.poll, n_polls, check_mgmt)}]

        amqp_poller = build_pollers(poll_settings(base), lambda: names)[0]

        def check_amqp(result: PollResult) -> None:
            ready = sum(d.ready for n, d in result.queues.items() if n.startswith("bench-q-"))
            assert ready == expected_ready, ready

        try:
            out.append({"source": "rabbitmq_amqp", "queues": n_queues,
                        "times": time_polls(amqp_poller.poll, n_polls, check_amqp)})
        finally:
            amqp_poller.close()
        return out
    finally:
        api.request("DELETE", f"/api/vhosts/{vhost}")


def _wait_for_stats(api: ManagementApi, vhost: str, n: int, ready: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = api.get(f"/api/queues/{urllib.parse.quote(vhost, safe='')}",
                       {"columns": "name,messages_ready"})
        counted = sum(r.get("messages_ready") or 0 for r in rows)
        if len(rows) == n and counted == ready:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"management stats never settled: {len(rows)} queues, {counted} ready")
        time.sleep(1)


def main() -> int:
    # SIGTERM runs the finally blocks too: the throw-away vhost (and every queue in it) is deleted and the
    # exporter stopped, instead of orphan queues collecting events on the shared RabbitMQ.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=10)
    args = parser.parse_args()
    runs = [bench_redis(args.queues, args.polls), *bench_rabbitmq(args.queues, args.polls)]
    print(f"{'source':<22}{'queues':>8}{'min s':>10}{'median s':>10}{'max s':>10}{'target s':>10}  ok")
    ok = True
    for run in runs:
        t = run["times"]
        target = TARGETS.get(run["source"])
        passed = target is None or max(t) < target
        ok &= passed
        run.update(min=min(t), median=statistics.median(t), max=max(t), target=target, ok=passed)
        print(f"{run['source']:<22}{run['queues']:>8}{min(t):>10.3f}{statistics.median(t):>10.3f}"
              f"{max(t):>10.3f}{target if target else '-':>10}  {'yes' if passed else 'NO'}")
    print(json.dumps({"benchmark": "poll", "polls": args.polls,
                      "results": [{k: v for k, v in r.items() if k != "times"} for r in runs]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
