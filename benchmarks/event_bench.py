"""Benchmark: Celery event throughput, scrape latency and memory of the real exporter on real brokers.

    python benchmarks/event_bench.py                          # every scenario
    python benchmarks/event_bench.py --scenario redis         # or: amqp, scale, memory, sustained
    python benchmarks/event_bench.py --scenario redis --tasks 50000 --rate 0

Each scenario starts ``python -m exporter`` as a subprocess (free port, JSON logs to a temp file), waits
for ``/readyz``, then floods the broker with Celery 5 events built from the captured payloads
(``benchmarks/_flood.py``), all encoded before the clock starts. Redis: a private ``redis-server`` with
its default limits (so a slow subscriber is disconnected exactly as in production; ``--redis-url`` uses
another server), pipelined PUBLISH of ready RESP commands from one process per lane of sources.
RabbitMQ: a private vhost created and deleted through the management API, ``basic_publish`` on the
``celeryev`` topic exchange. A thread scrapes ``/metrics`` every 100 ms with Prometheus' own Accept and
Accept-Encoding headers, recording latency and ``sum(celery_exporter_events_total)``; the run ends when
that sum equals the events published (or at a deadline: the difference is reported as lost).

Reported per scenario: events/s (events published / seconds from the first publish until /metrics
showed the last of them), offered rate, events lost, per-type mismatches, events refused, /metrics
p50/p99/max during ingest, series on /metrics, peak RSS (VmHWM), exporter CPU seconds, reconnects, and on
Redis the subscriber's peak output-buffer backlog. Prints one table and one JSON line; exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _flood as flood
import _harness as h
import _publishers as pub

SCENARIOS = ("redis", "amqp", "scale", "memory", "sustained")
PROFILE: str | None = None  # --py-spy FILE
DEADLINE = 60.0  # seconds after the last publish for /metrics to catch up before events count as lost
TARGETS: dict[str, dict[str, float]] = {
    "redis": {"events_per_s": 50_000, "lost": 0},
    "amqp": {"events_per_s": 30_000, "lost": 0},
    "scale": {"series": 20_000, "peak_rss_mb": 120, "scrape_p99_ms": 100, "lost": 0},
    "memory": {"peak_rss_mb": 150, "rss_growth_second_half_mb": 10, "lost": 0},
    "sustained": {"lost": 0, "reconnects": 0, "events_per_s": 20_000 * 0.95},
}


class RedisMonitor:
    """Samples the pub/sub connections of a private redis-server (the exporter's is the only one): their
    ids (a new id is a reconnect) and ``omem``, the bytes Redis holds for a subscriber (the figure the
    output-buffer limits apply to)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.peak_omem = 0
        self.ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RedisMonitor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for c in self.client.client_list(_type="pubsub"):
                    self.ids.add(int(c["id"]))
                    self.peak_omem = max(self.peak_omem, int(c.get("omem", 0)))
            except Exception:
                pass
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def build(w: flood.Workload) -> tuple[list[flood.Message], int]:
    msgs = list(flood.simulate(w))
    return msgs, sum(m.n_events for m in msgs)


def schedule(msgs: list[flood.Message], rate: float) -> list[float]:
    """Publish offsets (seconds from t0) pacing ``rate`` events/s; 0 means as fast as possible."""
    if not rate:
        return [0.0] * len(msgs)
    out, acc = [], 0
    for m in msgs:
        out.append(acc / rate)
        acc += m.n_events
    return out


def publish_redis(url: str, msgs: list[flood.Message], rate: float, lanes: int) -> tuple[float, list[Any]]:
    parts = urlsplit(url)
    db = int((parts.path or "/0").strip("/") or 0)
    encoded = flood.encode_redis(msgs, db)
    offsets = schedule(msgs, rate)
    lane_items = [[(offsets[i], encoded[i]) for i in idx] for idx in flood.split_by_source(msgs, lanes)]
    del encoded
    start_at, procs, results = pub.run_publishers(pub.redis_publisher, lane_items,
                                                 (parts.hostname or "127.0.0.1", parts.port or 6379))
    return start_at, [procs, results]


def publish_amqp(url: str, msgs: list[flood.Message], rate: float, lanes: int) -> tuple[float, list[Any]]:
    offsets = schedule(msgs, rate)
    lane_items = [[(offsets[i], (msgs[i].routing_key, msgs[i].body, msgs[i].hostname)) for i in idx]
                  for idx in flood.split_by_source(msgs, lanes)]
    parts = urlsplit(url)
    conn_args = (parts.hostname or "127.0.0.1", parts.port or 5672, parts.path.lstrip("/") or "/")
    start_at, procs, results = pub.run_publishers(pub.amqp_publisher, lane_items, (conn_args,), lead=1.5)
    return start_at, [procs, results]


def run_flood(broker: str, url: str, exporter_args: list[str], w: flood.Workload, rate: float, lanes: int,
              redis_log: Path | None = None) -> dict[str, Any]:
    """One exporter, one flood: everything a scenario reports."""
    w.t0 = time.time() - 2.0
    msgs, n_events = build(w)
    n_msgs = len(msgs)
    with h.Exporter(url, exporter_args, PROFILE) as exp:
        monitor = RedisMonitor(url).start() if redis_log is not None else None
        watch = h.Watch(exp.port, exp.pid).start()
        time.sleep(0.3)
        cpu0 = h.cpu_seconds(exp.pid)
        publish = publish_redis if broker == "redis" else publish_amqp
        start_at, (procs, results) = publish(url, msgs, rate, lanes)
        del msgs
        while time.monotonic() < start_at:
            time.sleep(0.001)
        watch.recording = True
        pubs = pub.join_publishers(procs, results, timeout=600)
        sent_at = max(p["sent_at"] for p in pubs)
        caught_up = watch.wait_for(n_events, sent_at + DEADLINE)
        watch.recording = False
        done_at = watch.done_at or time.monotonic()
        cpu = h.cpu_seconds(exp.pid) - cpu0
        _, text = h.scrape(exp.port)
        status = h.proc_status(exp.pid)
        watch.stop()
        if monitor:
            monitor.stop()
        seen = h.metric_sum(text, "celery_exporter_events_total")
        by_type = _by_label(text, "celery_exporter_events_total", "type")
        mismatched = {t: int(by_type.get(t, 0) - n) for t, n in w.by_type.items() if by_type.get(t, 0) != n}
        elapsed = done_at - start_at
        buffer_kills = 0
        if redis_log is not None and redis_log.exists():
            buffer_kills = redis_log.read_text(errors="replace").count("output buffer limits")
        return {
            "tasks": w.tasks, "task_names": w.task_names, "workers": w.workers,
            "messages": n_msgs, "events": n_events,
            "offered_events_per_s": round(rate) if rate else "max",
            "publish_s": round(sent_at - start_at, 3),
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(n_events / elapsed) if caught_up else 0,
            "lost": int(n_events - seen),
            "mismatched_types": mismatched,
            "invalid": int(h.metric_sum(text, "celery_exporter_events_invalid_total")),
            "unheard_publishes": sum(p["unheard"] for p in pubs),
            "scrapes": len(watch.latencies),
            "scrape_p50_ms": round(h.percentile(watch.latencies, 50) * 1e3, 1),
            "scrape_p99_ms": round(h.percentile(watch.latencies, 99) * 1e3, 1),
            "scrape_max_ms": round(max(watch.latencies, default=float("nan")) * 1e3, 1),
            "series": h.series_count(text),
            "peak_rss_mb": round(status["VmHWM"] / 1024, 1),
            "rss_mb": round(status["VmRSS"] / 1024, 1),
            "exporter_cpu_s": round(cpu, 2),
            "tracked_tasks": int(h.metric_sum(text, "celery_exporter_tracked_tasks")),
            "reconnects": int(h.metric_sum(text, "celery_exporter_broker_reconnects_total")),
            "subscriber_connections": len(monitor.ids) if monitor else None,
            "peak_backlog_mb": round(monitor.peak_omem / 2**20, 1) if monitor else None,
            "redis_buffer_disconnects": buffer_kills if redis_log is not None else None,
            "scrape_errors": watch.errors[:3],
            "slow_connects_s": [round(x, 2) for x in h.SLOW_CONNECTS],
        }


def _by_label(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = name + "{" + label + '="'
    for line in text.splitlines():
        if line.startswith(prefix):
            value = line[len(prefix):line.index('"', len(prefix))]
            out[value] = out.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# ------------------------------------------------------------------------------------ scenarios
def scenario_redis(args: argparse.Namespace, url: str, log: Path | None) -> dict[str, Any]:
    w = flood.Workload(tasks=args.tasks or 20_000, task_names=50, workers=20)
    return run_flood("redis", url, [], w, args.rate if args.rate is not None else 100_000, 1, log)


def scenario_amqp(args: argparse.Namespace) -> dict[str, Any]:
    w = flood.Workload(tasks=args.tasks or 20_000, task_names=50, workers=20)
    with h.private_vhost() as vhost:
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        return run_flood("amqp", url, [], w, args.rate or 0, args.amqp_publishers)


def scenario_scale(args: argparse.Namespace, url: str, log: Path | None) -> dict[str, Any]:
    w = flood.Workload(tasks=args.tasks or 50_000, task_names=200, workers=100)
    return run_flood("redis", url, [], w, args.rate if args.rate is not None else 50_000, 1, log)


def scenario_sustained(args: argparse.Namespace, url: str, log: Path | None) -> dict[str, Any]:
    rate, seconds = 20_000.0, args.seconds
    # ~4.25 events a task with this mix: size the run to rate x seconds events.
    w = flood.Workload(tasks=int(rate * seconds / 4.25), task_names=50, workers=20, rate=rate / 4.25)
    return run_flood("redis", url, [], w, rate, 1, log)


def scenario_memory(args: argparse.Namespace, url: str, log: Path | None) -> dict[str, Any]:
    """1,000,000 tasks in chunks (encoded between chunks, off the clock), a quarter of them never
    finishing so the task table fills and evicts; worker names come and go (1,000 in all) and are
    purged after 10 s of silence. RSS is sampled after each chunk has been fully ingested."""
    total, chunk, names_per_chunk = args.tasks or 1_000_000, 50_000, 50
    rate = args.rate if args.rate is not None else 60_000
    chunks = max(1, total // chunk)
    extra = ["--worker-timeout", "5", "--worker-purge-after", "10"]
    published, points, lat = 0, [], []
    with h.Exporter(url, extra) as exp:
        watch = h.Watch(exp.port, exp.pid).start()
        cpu0 = h.cpu_seconds(exp.pid)
        t_start = time.monotonic()
        parts = urlsplit(url)
        for i in range(chunks):
            sim_rate = 12_000.0
            w = flood.Workload(tasks=chunk, task_names=200, workers=names_per_chunk // 2, seed=100 + i,
                               rate=sim_rate, worker_lifetime=chunk / sim_rate, lost=0.25)
            w.t0 = time.time() - chunk / sim_rate - 1
            msgs, n = build(w)
            encoded = flood.encode_redis(msgs, int((parts.path or "/0").strip("/") or 0))
            offsets = schedule(msgs, rate)
            items = [list(zip(offsets, encoded, strict=True))]
            del msgs, encoded
            _, procs, results = pub.run_publishers(pub.redis_publisher, items,
                                                  (parts.hostname or "127.0.0.1", parts.port or 6379))
            watch.recording = True
            pub.join_publishers(procs, results, 600)
            published += n
            watch.wait_for(published, time.monotonic() + DEADLINE)
            watch.recording = False
            time.sleep(0.3)
            _, text = h.scrape(exp.port)
            rss = h.proc_status(exp.pid)["VmRSS"] / 1024
            points.append({"tasks": (i + 1) * chunk, "rss_mb": round(rss, 1),
                           "tracked": int(h.metric_sum(text, "celery_exporter_tracked_tasks")),
                           "workers": int(h.metric_sum(text, "celery_workers"))})
            print(f"  memory: {points[-1]}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - t_start
        lat = watch.latencies
        _, text = h.scrape(exp.port)
        status = h.proc_status(exp.pid)
        cpu = h.cpu_seconds(exp.pid) - cpu0
        watch.stop()
    seen = h.metric_sum(text, "celery_exporter_events_total")
    # "Full": finished tasks leave the table, so it hovers just under --max-tracked-tasks (100,000).
    full = next((p for p in points if p["tracked"] >= 95_000), None)
    growth = round(points[-1]["rss_mb"] - full["rss_mb"], 1) if full else None
    half = points[len(points) // 2 - 1]
    # The table is full from ~40% of the run; "flat" is judged on the second half, after the one-time
    # growth that follows the first evictions (the table's dict settles at its churn size).
    second_half = round(points[-1]["rss_mb"] - half["rss_mb"], 1) if full and full["tasks"] <= half["tasks"] else None
    return {
        "tasks": chunks * chunk, "worker_names": chunks * names_per_chunk, "events": published,
        "offered_events_per_s": round(rate), "elapsed_s": round(elapsed, 1),
        "lost": int(published - seen),
        "invalid": int(h.metric_sum(text, "celery_exporter_events_invalid_total")),
        "scrape_p50_ms": round(h.percentile(lat, 50) * 1e3, 1),
        "scrape_p99_ms": round(h.percentile(lat, 99) * 1e3, 1),
        "series": h.series_count(text),
        "peak_rss_mb": round(status["VmHWM"] / 1024, 1), "rss_mb": round(status["VmRSS"] / 1024, 1),
        "table_full_at_tasks": full["tasks"] if full else None,
        "rss_at_table_full_mb": full["rss_mb"] if full else None,
        "rss_growth_after_full_mb": growth,
        "rss_growth_second_half_mb": second_half,
        "evicted": int(h.metric_sum(text, "celery_exporter_tracked_tasks_evicted_total")),
        "workers_purged": int(h.metric_sum(text, "celery_exporter_workers_purged_total")),
        "exporter_cpu_s": round(cpu, 1),
        "rss_curve_mb": [p["rss_mb"] for p in points],
    }


# ------------------------------------------------------------------------------------ report
def check(name: str, result: dict[str, Any]) -> list[str]:
    missed = []
    for key, target in TARGETS[name].items():
        value = result.get(key)
        if value is None:
            missed.append(f"{key}: not measured")
            continue
        ok = value >= target if key == "events_per_s" else value <= target
        if key == "lost":
            ok = value == 0 and not result.get("mismatched_types")
        if not ok:
            missed.append(f"{key}={value} (target {'>=' if key == 'events_per_s' else '<='} {target:g})")
    return missed


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "loadavg_before": open("/proc/loadavg").read().split()[:3]}


COLUMNS = (
    ("events", "events"), ("offered_events_per_s", "offered/s"), ("events_per_s", "events/s"),
    ("lost", "lost"), ("invalid", "invalid"), ("scrape_p50_ms", "p50 ms"), ("scrape_p99_ms", "p99 ms"),
    ("series", "series"), ("peak_rss_mb", "peak RSS MB"), ("exporter_cpu_s", "CPU s"),
    ("reconnects", "reconn"), ("peak_backlog_mb", "backlog MB"),
)


def table(results: dict[str, dict[str, Any]], verdicts: dict[str, list[str]]) -> str:
    head = ["scenario", *(c[1] for c in COLUMNS), "targets"]
    rows = [head]
    for name, r in results.items():
        rows.append([name, *("-" if r.get(k) is None else str(r.get(k)) for k, _ in COLUMNS),
                     "met" if not verdicts[name] else "MISSED: " + "; ".join(verdicts[name])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i])
                               for i, cell in enumerate(row)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM runs the finally blocks too: the throw-away vhost (and every queue in it) is deleted and the
    # exporter stopped, instead of orphan queues collecting events on the shared RabbitMQ.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    ap.add_argument("--broker", choices=("redis", "amqp"), help="shorthand for --scenario redis|amqp")
    ap.add_argument("--redis-url", help="use this Redis instead of a private redis-server (e.g. db 12)")
    ap.add_argument("--tasks", type=int, help="override the scenario's task count")
    ap.add_argument("--rate", type=float, help="offered events/s (0: as fast as the publishers go)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the sustained scenario")
    ap.add_argument("--amqp-publishers", type=int, default=1, help="publisher processes for RabbitMQ")
    ap.add_argument("--py-spy", metavar="FILE", help="record the exporter with py-spy (.svg, or .txt: raw)")
    args = ap.parse_args(argv)
    global PROFILE
    PROFILE = args.py_spy
    names = [args.broker] if args.broker else list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    info = machine()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "amqp":
            results[name] = scenario_amqp(args)
            continue
        fn = {"redis": scenario_redis, "scale": scenario_scale, "memory": scenario_memory,
              "sustained": scenario_sustained}[name]
        if args.redis_url:
            results[name] = fn(args, args.redis_url, None)
        else:
            with h.private_redis() as (url, log):
                results[name] = fn(args, url, log)
    verdicts = {name: check(name, r) for name, r in results.items()}
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
          f"load average before {' '.join(info['loadavg_before'])}")
    print(table(results, verdicts))
    for name, r in results.items():
        rest = {k: v for k, v in r.items() if k not in dict(COLUMNS)}
        print(f"{name}: {json.dumps(rest)}")
    print(json.dumps({"machine": info, "results": results, "missed": verdicts}))
    return 1 if any(verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
