"""Workers and the tasks they run: a ``WorkerRecord`` per node (liveness, reported active count,
version), the running map (hostname -> the tasks it started, oldest first), and the three ways a started
task is lost: its worker falls silent past ``worker_timeout``, goes offline while still running it, or
reports fewer active tasks in two heartbeats running than we hold for it (``reconcile``). A lost task
stops counting as active and counts in ``celery_task_lost_total``; its record stays, so a later event for
it still counts normally. Departed workers are purged past ``worker_purge_after``.

Missed events: every heartbeat's ``processed`` (tasks the worker accepted, i.e. started, since it
started) is compared with the task-started events received from it (``WorkerRecord.task_events``,
counted by the core's handlers). Heartbeats are sent at once while task events wait a moment in the
worker's buffer, so like is compared with like: the ``processed`` of one heartbeat against the starts
received by the time the next one arrives. Counted from the first heartbeat seen (and again from a
worker's restart, when ``processed`` drops), so the exporter's own restart counts nothing. The
shortfall, never taken back, is ``celery_exporter_task_events_missed_total``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from itertools import islice
from typing import Any

from exporter.labels import label_value
from exporter.state.entries import ATTEMPTS, HELD, RETRIES, STARTS, TOUCHED, WORKER, K, TaskEntry
from exporter.state.settings import SENT_AT, StateSettings
from exporter.state.snapshot import WorkerRecord
from exporter.state.stalls import Stalls

SKEW_SAMPLES = 5  # heartbeats (10 s at Celery's default 2 s) behind WorkerRecord.clock_skew

_Key = tuple[str, str]
_MAX_PROCESSED = 2**53  # a count past this is not one a worker could have reached


class Workers:
    """Worker records, the running map, and lost-task accounting."""

    def __init__(self, s: StateSettings, tasks: OrderedDict[str, TaskEntry], active: dict[_Key, int],
                 lost: dict[_Key, int], overflow: dict[str, int], stalls: Stalls) -> None:
        self.settings = s
        self.workers: dict[str, WorkerRecord] = {}
        # hostname -> {uuid: start timestamp} of the tasks each worker is running, oldest first.
        self.running: dict[str, dict[str, float]] = {}
        self.purged = 0
        self.missed = 0  # celery_exporter_task_events_missed_total: survives the purge of its workers
        self._tasks = tasks
        self._active = active
        self._lost = lost
        self._overflow = overflow
        self._stalls = stalls

    def unrun(self, hostname: str, uuid: str | None) -> None:
        running = self.running.get(hostname)
        if running is not None and uuid is not None:
            running.pop(uuid, None)
            if not running:
                del self.running[hostname]

    def check(self, now: float) -> None:
        """Lose the tasks of workers silent past ``worker_timeout``; purge departed workers."""
        timeout = self.settings.worker_timeout
        for hostname in list(self.running):
            worker = self.workers.get(hostname)
            # A worker never heard from (its worker-online came before the exporter started) gets the
            # same grace, counted from the newest event of the tasks it runs.
            last = worker.heartbeat_seen if worker is not None else self._newest_touch(hostname)
            if now - last > timeout:
                self.lose_worker(hostname)
        purge = self.settings.worker_purge_after
        gone = [h for h, w in self.workers.items() if now - w.seen > purge]
        for hostname in gone:
            del self.workers[hostname]
        self.purged += len(gone)

    def _newest_touch(self, hostname: str) -> float:
        tasks = self._tasks
        return max((tasks[u][TOUCHED] for u in self.running.get(hostname, ()) if u in tasks), default=0.0)

    def lose(self, uuid: str) -> None:
        """A started task whose worker is gone (or no longer runs it): not active any more, counted in
        celery_task_lost_total. Its record stays, so a later event for it still counts normally."""
        self._stalls.unrun(uuid)
        rec = self._tasks.get(uuid)
        if rec is None or rec[HELD] is not None or not rec[STARTS]:
            return
        key = rec[K]
        self._active[key] -= len(rec[STARTS])
        self._lost[key] += 1
        if rec[WORKER] is not None:
            self.unrun(rec[WORKER], uuid)
        self._tasks[uuid] = (key, rec[ATTEMPTS], (), rec[RETRIES], None, rec[TOUCHED], None)

    def lose_worker(self, hostname: str) -> None:
        for uuid in self._stalls.orphans_of(hostname):
            self._stalls.unrun(uuid)  # evicted from the table, so not in running: found here
        for uuid in list(self.running.get(hostname, ())):
            self.lose(uuid)
        self.running.pop(hostname, None)

    def _reconcile(self, hostname: str, rec: WorkerRecord, ts: float) -> None:
        """The worker's heartbeat says how many tasks it runs. Fewer than we hold for it means tasks
        ended without an event (``Ignore``, a crashed child whose message went back): the excess,
        oldest first and started before the heartbeat, is suspect; still in excess at the next
        heartbeat (its final event may merely be in flight: Celery buffers task events but not
        heartbeats), it is lost."""
        running = self.running.get(hostname)
        if not running:
            rec.suspects = ()
            return
        excess = len(running) - int(rec.active)
        if excess <= 0:
            rec.suspects = ()
            return
        # The first ``excess`` only: the scan stops there instead of walking all the worker runs.
        candidates = list(islice((u for u, started_at in running.items() if started_at < ts), excess))
        suspects = rec.suspects
        for uuid in candidates:
            if uuid in suspects:
                self.lose(uuid)
        rec.suspects = tuple(u for u in candidates if u not in suspects)

    def _worker(self, ev: Mapping[str, Any], now: float, ts: float) -> tuple[str, WorkerRecord] | None:
        hostname = ev.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return None
        hostname = label_value(hostname)
        if not hostname:  # nothing left once made safe ("\x00")
            return None
        rec = self.workers.get(hostname)
        if rec is None:
            if len(self.workers) >= self.settings.max_workers:
                self._overflow["worker"] += 1
                return None
            rec = self.workers[hostname] = WorkerRecord(seen=now, heartbeat_seen=now, heartbeat_ts=ts)
        return hostname, rec

    def alive(self, ev: Mapping[str, Any], ts: float, now: float) -> None:
        """worker-online, worker-heartbeat."""
        found = self._worker(ev, now, ts)
        if found is None:
            return
        hostname, rec = found
        rec.seen = rec.heartbeat_seen = now
        rec.heartbeat_ts = ts
        rec.online = True
        sent = ev.get(SENT_AT)  # a clamped heartbeat (far ahead): its own timestamp tells the skew
        sent_at = sent if sent.__class__ is float and sent > ts else ts
        skew, samples, largest = sent_at - now, rec.skew_samples, rec.clock_skew
        rec.skew_samples = (*samples[1 - SKEW_SAMPLES:], skew)
        # The largest of the window without a max() per heartbeat: rescanned only when the sample that
        # left the window was the largest.
        if largest is None or skew >= largest:
            rec.clock_skew = skew
        elif len(samples) >= SKEW_SAMPLES and samples[0] == largest:
            rec.clock_skew = max(rec.skew_samples)
        active = ev.get("active")
        # Bounded: Inf (JSON 1e999) or 1e300 would otherwise be served until the worker's next heartbeat.
        if isinstance(active, (int, float)) and not isinstance(active, bool) and 0 <= active <= 1e6:
            rec.active = float(active)
            if ev["type"] == "worker-heartbeat":
                self._reconcile(hostname, rec, ts)
        processed = ev.get("processed")
        if processed.__class__ is int and 0 <= processed < _MAX_PROCESSED:
            self._account(rec, processed, ev["type"] == "worker-online")
        if ev["type"] == "worker-online" or not rec.version:
            ver, system = ev.get("sw_ver"), ev.get("sw_sys")
            rec.version = label_value(ver, 64) if isinstance(ver, str) else ""
            rec.system = label_value(system, 64) if isinstance(system, str) else ""

    def _account(self, rec: WorkerRecord, processed: int, online: bool) -> None:
        """One heartbeat's ``processed``: starts the previous heartbeat reported that have still not
        arrived as task-started events add to the missed count (see the module docstring)."""
        if rec.base_processed < 0 or online or processed < rec.processed:  # first seen, or restarted
            rec.base_processed, rec.base_events, rec.deficit = processed, rec.task_events, 0
        else:
            deficit = (rec.processed - rec.base_processed) - (rec.task_events - rec.base_events)
            if deficit > rec.deficit:
                rec.missed += deficit - rec.deficit
                self.missed += deficit - rec.deficit
                rec.deficit = deficit
        rec.processed = processed

    def count_starts(self, hostname: Any, n: int) -> None:
        """``n`` task-started events of ``hostname`` received (held for their name: the core counts the
        others itself) or, negative, handed back to be counted again on their replay."""
        rec = self.workers.get(hostname) if hostname.__class__ is str else None
        if rec is not None:
            rec.task_events += n

    def offline(self, ev: Mapping[str, Any], ts: float, now: float) -> None:
        found = self._worker(ev, now, ts)
        if found is not None:
            hostname, rec = found
            rec.seen = now
            rec.online = False
            rec.active = 0.0
            rec.suspects = ()
            # A warm shutdown waits for its tasks and sends their events first: whatever it still runs
            # now is lost (a cold shutdown, or a child killed on the way out).
            self.lose_worker(hostname)

    def snapshot(self, now: float) -> dict[str, WorkerRecord]:
        """Copies of the workers not past the purge age (they vanish from the scrape as soon as they
        pass it, even if the event loop has not run its housekeeping yet)."""
        purge = self.settings.worker_purge_after
        return {h: WorkerRecord(**vars(w)) for h, w in self.workers.items() if now - w.seen <= purge}
