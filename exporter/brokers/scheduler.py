"""Runs the broker pollers in the background, each poll under a hard deadline, and keeps what the
collector serves: per source the last good ``PollResult`` and the poll self-metrics.

A poll runs in a short-lived daemon thread; the scheduler waits for it at most ``poll_timeout``. A poll
that overruns is counted as failed and the scheduler does not start another for that source until it has
finished (a broker client is never used from two threads at once). A failed poll leaves the last good
result in place: it is served for up to ``stale_after`` seconds (12 poll intervals by default, one minute
at the default interval) so a blip does not make the HPA's series vanish, then dropped, so an outage
shows as absent series (and ``celery_exporter_poll_success 0``) rather than as a frozen, plausible value.
The scrape path only copies references under a lock; it never touches a broker.

The store also keeps what outlives one result: the dead letters added per DLQ (``growth.py``), the
entries each source skipped (counted, each reason logged once) and the options a source found not to match
the broker. When two sources hold a DLQ of the same name, the first source in order (the broker's own
pollers, then the ``--dead-letter-redis-url`` databases in the order given) reports it as ``queue="<name>"``
and each later one as ``queue="<name>@<source>"``, so no series is duplicated and none is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import structlog

from exporter.brokers.growth import DeadLetterAdded
from exporter.logs import RateLimitedLog
from exporter.secrets import describe_error
from exporter.status import PollResult, SourceView

log = structlog.get_logger("exporter.brokers")

STALE_POLLS = 12


class Poller(Protocol):
    """One source of queue metrics. ``poll`` does the I/O and returns a result or raises."""

    source: str

    def poll(self, deadline: float) -> PollResult: ...

    def close(self) -> None: ...


class PollStore:
    """Per-source poll outcomes. The scheduler thread writes, scrapes read ``views()``."""

    def __init__(self, sources: Sequence[str], stale_after: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._success: dict[str, bool | None] = dict.fromkeys(sources)
        self._duration: dict[str, float] = dict.fromkeys(sources, 0.0)
        self._errors: dict[str, int] = dict.fromkeys(sources, 0)
        self._results: dict[str, tuple[float, PollResult]] = {}
        self._added: dict[str, DeadLetterAdded] = {s: DeadLetterAdded() for s in sources}
        self._skipped: dict[str, dict[str, int]] = {s: {} for s in sources}

    def record_success(self, source: str, result: PollResult, duration: float) -> None:
        with self._lock:
            self._success[source] = True
            self._duration[source] = duration
            self._results[source] = (self.monotonic(), result)
            self._added[source].observe(result)
            skipped = self._skipped[source]
            for reason, n in result.skipped.items():
                if reason not in skipped:
                    log.warning("broker poll skipped what it could not read; the rest of the poll is "
                                "served (counted in celery_exporter_poll_skipped_total)",
                                source=source, reason=reason)
                skipped[reason] = skipped.get(reason, 0) + n

    def record_failure(self, source: str, duration: float) -> None:
        with self._lock:
            self._success[source] = False
            self._duration[source] = duration
            self._errors[source] += 1

    def views(self) -> list[SourceView]:
        now = self.monotonic()
        with self._lock:
            out = []
            claimed: set[str] = set()  # DLQ names an earlier source reports
            for source, success in self._success.items():
                held = self._results.get(source)
                result = held[1] if held and now - held[0] <= self.stale_after else None
                added = self._added[source].totals()
                taken = {n for n in (*added, *(result.dead_letter if result else ())) if n in claimed}
                claimed.update(n for n in (*added, *(result.dead_letter if result else ())) if n not in taken)
                if taken:
                    result, added = _rename(result, added, taken, source)
                out.append(SourceView(source, success, self._duration[source], self._errors[source], result,
                                      added, dict(self._skipped[source])))
            return out


def _rename(result: PollResult | None, added: Mapping[str, float], taken: set[str],
            source: str) -> tuple[PollResult | None, dict[str, float]]:
    """Report the DLQs another source already reports as ``<name>@<source>``."""

    def named(values: Mapping[str, Any]) -> dict[str, Any]:
        return {(f"{n}@{source}" if n in taken else n): v for n, v in values.items()}

    if result is not None:
        result = replace(result, dead_letter=named(result.dead_letter),
                         dead_letter_oldest=named(result.dead_letter_oldest),
                         dead_letter_depth=named(result.dead_letter_depth))
    return result, named(added)


class SourceRunner:
    """Runs one poller's polls under a deadline and records each outcome in the store."""

    def __init__(self, poller: Poller, store: PollStore, timeout: float, secrets: Sequence[str] = (),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.poller = poller
        self.store = store
        self.timeout = timeout
        self.secrets = tuple(secrets)
        self.monotonic = monotonic
        self.log = RateLimitedLog(log, interval=60.0, monotonic=monotonic)
        self._inflight: threading.Thread | None = None
        self._inflight_since = 0.0
        self._failing = False

    def tick(self) -> bool:
        """Poll once (or account for an overrunning poll); True when the poll succeeded."""
        source = self.poller.source
        if self._inflight is not None:
            if self._inflight.is_alive():
                self._fail(self.monotonic() - self._inflight_since,
                           f"the previous poll is still running after {self.timeout:g}s")
                return False
            self._inflight = None
        box: dict[str, Any] = {}
        done = threading.Event()
        started = self.monotonic()
        deadline = started + self.timeout

        def target() -> None:
            try:
                box["result"] = self.poller.poll(deadline)
            except BaseException as exc:  # reported by the scheduler thread, never raised into it
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"poll-{source}", daemon=True)
        thread.start()
        finished = done.wait(self.timeout)
        duration = self.monotonic() - started
        if not finished:
            self._inflight, self._inflight_since = thread, started
            self._fail(duration, f"poll timed out after {self.timeout:g}s")
            return False
        if "error" in box:
            self._fail(duration, describe_error(box["error"], self.secrets))
            return False
        self.store.record_success(source, box["result"], duration)
        if self._failing:
            self._failing = False
            self.log.reset(source)
            log.info("broker poll recovered", source=source)
        return True

    def _fail(self, duration: float, error: str) -> None:
        self._failing = True
        self.store.record_failure(self.poller.source, duration)
        self.log.warning(self.poller.source, "broker poll failed", source=self.poller.source, error=error)


class Polling:
    """The background polling loop; ``views`` reads its last results (``QueueCollector`` serves them)."""

    def __init__(self, runners: Sequence[SourceRunner], interval: float,
                 views: Callable[[], Sequence[SourceView]]) -> None:
        self.runners = list(runners)
        self.interval = interval
        self.views = views

    def poll_once(self) -> None:
        for runner in self.runners:
            runner.tick()

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; never raises for a broker error."""
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.poll_once()
                stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        for runner in self.runners:
            if runner._inflight is not None and runner._inflight.is_alive():
                continue  # its thread still uses the client; the daemon thread dies with the process
            try:
                runner.poller.close()
            except Exception as exc:  # closing a dead connection may fail; nothing to do about it
                log.debug("closing a poller failed", source=runner.poller.source, error=repr(exc))
