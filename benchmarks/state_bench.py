"""Micro-benchmark: decode + apply cost per event, in one process, no broker and no HTTP.

    python benchmarks/state_bench.py                               # this checkout only
    python benchmarks/state_bench.py --baseline /work/wt/baseline  # interleaved with another checkout
    python benchmarks/state_bench.py --baseline A --baseline B --rounds 9 --tasks 20000

The traffic is event_bench's Redis flood (``benchmarks/_flood.py``, the same workload as its ``redis``
scenario, built once from this checkout's ``_flood`` so every checkout sees the same bytes). Each round
runs one subprocess per checkout (``PYTHONPATH`` pointing at it: two versions of ``exporter`` cannot share
a process), alternating, so load from other processes on the machine falls on all of them alike. A
subprocess measures, ``--repeat`` times each with a fresh ``ClusterState``:

* ``total`` (process CPU time, so that preemption on a shared machine is not counted):
  ``Ingest.feed_redis`` over the payloads in batches of ``--batch`` (decode + apply under the
  lock, what the Redis stream does), in µs per event;
* ``decode``: ``decode_redis_payload`` alone (CPU time too);
* per event type: ``ClusterState.apply`` on the pre-decoded events, each timed on its own with the wall
  clock (the timer's own ~0.1 µs is included, alike for every checkout): noisier than the totals.

Printed: the median and minimum over all repeats of all rounds, per checkout; no targets, nothing fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def build_payloads(tasks: int, path: Path) -> None:
    sys.path.insert(0, str(HERE))
    import _flood as flood

    w = flood.Workload(tasks=tasks, task_names=50, workers=20, t0=time.time() - 60)
    msgs = list(flood.simulate(w))
    payloads = [cmd.split(b"\r\n")[6] for cmd in flood.encode_redis(msgs, db=3)]  # PUBLISH's payload
    path.write_bytes(b"\n".join(payloads))


def measure(path: Path, repeat: int, batch: int) -> dict[str, Any]:
    """Runs inside the subprocess, with the checkout under test first on sys.path."""
    from exporter.events.decode import Decoded, decode_redis_payload
    from exporter.events.ingest import Ingest
    from exporter.state import ClusterState

    try:  # ClusterState takes its settings; older checkouts built their defaults themselves
        from exporter.config import state_settings

        settings = state_settings()
    except ImportError:
        settings = None
    payloads = path.read_bytes().split(b"\n")
    batches = [payloads[i:i + batch] for i in range(0, len(payloads), batch)]
    out: dict[str, Any] = {"total": [], "decode": [], "types": defaultdict(list)}
    perf = time.perf_counter_ns
    cpu = time.process_time_ns  # whole runs on CPU time: the machine may be shared, preemption is not ours
    for _ in range(repeat):
        gc.collect()
        state = ClusterState(settings) if settings is not None else ClusterState()
        ingest = Ingest(state)
        feed = ingest.feed_redis
        n = 0
        t0 = cpu()
        for b in batches:
            n += feed(b)
        out["total"].append((cpu() - t0) / 1000 / n)

        gc.collect()
        now = time.time()
        dec = Decoded()
        t0 = cpu()
        for p in payloads:
            decode_redis_payload(p, now, None, dec)
        out["decode"].append((cpu() - t0) / 1000 / len(dec.events))

        gc.collect()
        state = ClusterState(settings) if settings is not None else ClusterState()
        apply = state.apply
        spent: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        for ev in dec.events:
            etype = ev["type"]
            t0 = perf()
            apply(ev)
            spent[etype] += perf() - t0
            count[etype] += 1
        for etype, ns in spent.items():
            out["types"][etype].append(ns / 1000 / count[etype])
    out["events"] = n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", action="append", default=[], help="another checkout to compare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="measurements per subprocess")
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=64, help="payloads per feed_redis call")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # subprocess mode: the payload file
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.repeat, args.batch)))
        return 0

    checkouts = [str(ROOT), *(str(Path(p).resolve()) for p in args.baseline)]
    results: dict[str, dict[str, Any]] = {c: {"total": [], "decode": [], "types": defaultdict(list)}
                                          for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "payloads"
        build_payloads(args.tasks, data)
        for r in range(args.rounds):
            order = checkouts if r % 2 == 0 else checkouts[::-1]
            for c in order:
                env = {**os.environ, "PYTHONPATH": c}
                proc = subprocess.run(
                    [sys.executable, __file__, "--measure", str(data), "--repeat", str(args.repeat),
                     "--batch", str(args.batch)], env=env, cwd=tmp, check=True, capture_output=True,
                )
                got = json.loads(proc.stdout)
                res = results[c]
                res["total"] += got["total"]
                res["decode"] += got["decode"]
                for etype, vals in got["types"].items():
                    res["types"][etype] += vals
                res["events"] = got["events"]
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    names = [Path(c).name for c in checkouts]
    print(f"events per run: {results[checkouts[0]]['events']}; {args.rounds} rounds x {args.repeat} repeats;"
          " µs per event, median / min")
    print(f"{'':24}" + "".join(f"{n:>22}" for n in names))

    def row(label: str, get: Any) -> None:
        cells = []
        for c in checkouts:
            vals = get(results[c])
            cells.append(f"{statistics.median(vals):9.3f} / {min(vals):7.3f}" if vals else "-")
        print(f"{label:24}" + "".join(f"{cell:>22}" for cell in cells))

    row("decode+apply (feed)", lambda r: r["total"])
    row("decode only", lambda r: r["decode"])
    etypes = sorted({t for r in results.values() for t in r["types"]})
    for etype in etypes:
        row(f"apply {etype}", lambda r, t=etype: r["types"].get(t, []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
