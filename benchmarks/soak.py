"""Soak: the real exporter for N minutes at a steady event rate with worker churn; is its RSS flat?

    python benchmarks/soak.py                       # 10 minutes at 5,000 events/s
    python benchmarks/soak.py --minutes 2 --rate 5000 --sample-every 5

A private ``redis-server`` (default limits) and ``python -m exporter`` as a subprocess, configured as a
Kubernetes deployment would be (``--worker-timeout 10 --worker-purge-after 60``, a task table of 1,000).
A publisher process streams Celery 5 events built from the captured payloads (``benchmarks/_flood.py``,
the shapes, batching and outcome mix real workers produce) in 15-second chunks, paced to ``--rate``:

* worker churn: 10 worker slots whose node names live 10 s each, staggered, and every chunk brings a new
  fleet, so about one new worker name a second appears while old ones go offline (or just go silent, as
  a killed pod does) and are purged after a minute;
* 2% of tasks never finish (their worker "died" after task-started), so the task table fills to its cap
  and the LRU keeps evicting: the state is at its steady size after warm-up, not slowly filling.

Every ``--sample-every`` seconds it reads the exporter's RSS from ``/proc/<pid>/status`` and scrapes
``/metrics`` (events counted, series, workers tracked, task table). After warm-up (``--warmup`` seconds,
default a quarter of the run up to 60 s) RSS must stay within 10% (max vs min of the samples). At the
end every published event must have been counted. Prints a table, the verdict and one JSON line; exits 1
if RSS was not flat, events were lost or the stream reconnected.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _flood as flood
import _harness as h

CHUNK = 15.0  # seconds of traffic simulated at once
EVENTS_PER_TASK = 4.35  # sent, received, started, outcome, plus retries (measured on _flood's mix)
WORKER_SLOTS = 10
WORKER_LIFETIME = 10.0
LOST = 0.02
EXPORTER_ARGS = ["--worker-timeout", "10", "--worker-purge-after", "60", "--max-tracked-tasks", "1000"]
FLAT_WITHIN = 0.10


def publisher(port: int, rate: float, seconds: float, start_at: float, out: Any) -> None:
    """Runs in its own process: simulate a chunk ahead, publish it paced, repeat; report the totals."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    counts = {"messages": 0, "events": 0, "replies": 0, "unheard": 0}
    done = threading.Event()

    def read_replies() -> None:
        import hiredis

        reader = hiredis.Reader()
        while not (done.is_set() and counts["replies"] >= counts["messages"]):
            sock.settimeout(1.0)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                return
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                counts["replies"] += 1
                counts["unheard"] += reply == 0  # nobody subscribed: the exporter was not listening

    replies = threading.Thread(target=read_replies, daemon=True)
    replies.start()
    chunks = max(1, round(seconds / CHUNK))
    tasks_per_chunk = int(rate * CHUNK / EVENTS_PER_TASK)
    wall0 = time.time() + (start_at - time.monotonic())
    ready: queue.Queue[tuple[list[tuple[float, bytes]], int]] = queue.Queue(maxsize=1)

    def simulate_ahead() -> None:  # the next chunk is built while the current one is being sent
        for k in range(chunks):
            w = flood.Workload(tasks=tasks_per_chunk, rate=tasks_per_chunk / CHUNK, workers=WORKER_SLOTS,
                               producers=4, seed=1000 + k, worker_lifetime=WORKER_LIFETIME, lost=LOST,
                               t0=wall0 + k * CHUNK)
            msgs = list(flood.simulate(w))
            encoded = flood.encode_redis(msgs, db=0, seed=k)
            step = CHUNK / len(encoded)
            ready.put(([(k * CHUNK + i * step, data) for i, data in enumerate(encoded)],
                       sum(m.n_events for m in msgs)))

    threading.Thread(target=simulate_ahead, daemon=True).start()
    for _ in range(chunks):
        items, n_events = ready.get()
        counts["messages"] += len(items)
        counts["events"] += n_events
        h._paced(items, sock.sendall, start_at, chunk_bytes=1 << 16)
    done.set()
    replies.join(60)
    sock.close()
    out.put(counts)


def sample(ex: h.Exporter) -> dict[str, float]:
    _, text = h.scrape(ex.port)
    return {
        "rss_mb": h.proc_status(ex.pid)["VmRSS"] / 1024,
        "cpu_s": h.cpu_seconds(ex.pid),
        "events": h.metric_sum(text, "celery_exporter_events_total"),
        "invalid": h.metric_sum(text, "celery_exporter_events_invalid_total"),
        "series": h.series_count(text),
        "workers": h.metric_sum(text, "celery_workers"),
        "tracked": h.metric_sum(text, "celery_exporter_tracked_tasks"),
        "evicted": h.metric_sum(text, "celery_exporter_tracked_tasks_evicted_total"),
        "purged": h.metric_sum(text, "celery_exporter_workers_purged_total"),
        "reconnects": h.metric_sum(text, "celery_exporter_broker_reconnects_total"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--rate", type=float, default=5_000.0, help="events per second offered (default 5000)")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from the flatness check (default: a quarter of the run, <= 60)")
    args = ap.parse_args(argv)
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds / 4)

    with h.private_redis() as (url, _log), h.Exporter(url, EXPORTER_ARGS) as ex:
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        start_at = time.monotonic() + 2.0  # the first chunk is simulated meanwhile
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proc = ctx.Process(target=publisher, args=(port, args.rate, seconds, start_at, out), daemon=True)
        proc.start()
        rows: list[dict[str, float]] = []
        print(f"soak: {args.minutes:g} min at {args.rate:,.0f} events/s, sampling every {args.sample_every:g} s,"
              f" warm-up {warmup:g} s; exporter pid {ex.pid}", flush=True)
        print(f"{'t (s)':>7} {'RSS MB':>7} {'CPU %':>6} {'events/s':>9} {'series':>7} {'workers':>7} "
              f"{'tracked':>7} {'evicted':>8} {'purged':>6}", flush=True)
        next_at = start_at
        prev: dict[str, float] | None = None
        while proc.is_alive() or not rows:
            next_at += args.sample_every
            time.sleep(max(0.0, next_at - time.monotonic()))
            row = {"t": time.monotonic() - start_at, **sample(ex)}
            if prev is not None:
                dt = row["t"] - prev["t"]
                row["rate"] = (row["events"] - prev["events"]) / dt
                row["cpu_pct"] = 100 * (row["cpu_s"] - prev["cpu_s"]) / dt
                print(f"{row['t']:7.0f} {row['rss_mb']:7.1f} {row['cpu_pct']:6.1f} {row['rate']:9,.0f} "
                      f"{row['series']:7.0f} {row['workers']:7.0f} {row['tracked']:7.0f} {row['evicted']:8.0f} "
                      f"{row['purged']:6.0f}", flush=True)
                rows.append(row)
            prev = row
            if row["t"] > seconds + 120:
                break
        published = out.get(timeout=120)
        proc.join(30)
        h.wait_until(lambda: sample(ex)["events"] >= published["events"], 30, 0.2, "the last events")
        final = sample(ex)

    steady = [r for r in rows if r["t"] >= warmup]
    busy = [r for r in rows if r["t"] <= seconds] or rows
    rss = [r["rss_mb"] for r in steady] or [rows[-1]["rss_mb"]]
    spread = (max(rss) - min(rss)) / min(rss)
    drift = (rss[-1] - rss[0]) / rss[0]
    lost = published["events"] - final["events"]
    flat = spread <= FLAT_WITHIN
    result = {
        "minutes": args.minutes, "offered_events_per_s": round(published["events"] / seconds),
        "events_published": published["events"], "events_counted": final["events"], "events_lost": lost,
        "events_invalid": final["invalid"], "unheard_publishes": published["unheard"],
        "reconnects": final["reconnects"], "rss_mb_after_warmup_min": round(min(rss), 1),
        "rss_mb_after_warmup_max": round(max(rss), 1), "rss_spread": round(spread, 4),
        "rss_drift_first_to_last": round(drift, 4), "rss_flat_within_10pct": flat,
        "cpu_pct_mean": round(sum(r["cpu_pct"] for r in busy) / len(busy), 1),
        "workers_purged": final["purged"], "tasks_evicted": final["evicted"], "series_at_end": final["series"],
    }
    print()
    print(f"RSS after warm-up: {min(rss):.1f} to {max(rss):.1f} MB (spread {spread:.1%}, first to last "
          f"{drift:+.1%}): {'FLAT' if flat else 'NOT FLAT'} within {FLAT_WITHIN:.0%}")
    print(f"events: {published['events']:,} published, {final['events']:,.0f} counted, {lost:,.0f} lost; "
          f"{final['reconnects']:.0f} reconnects; {final['purged']:.0f} workers purged; "
          f"{final['evicted']:.0f} tasks evicted")
    print(json.dumps(result))
    return 0 if flat and lost == 0 and final["reconnects"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
