"""Builds the components from a Config, runs each in its own thread, and stops them together.

    event stream thread ──► Ingest ──► ClusterState ◄── (snapshot) ── collectors ──► /metrics
    polling thread ──► queue results ──────────────────────────────► collectors ──► /metrics

``App`` is what ``python -m exporter`` and ``celery-exporter demo`` run, and what integration tests start
in-process. It holds no metric logic of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.brokers.inventory import InventoryRunner
from exporter.brokers.polling import build_polling
from exporter.brokers.registry import build_stream
from exporter.collectors import Sources, build_collectors
from exporter.config import (
    Config,
    diagnosis_settings,
    inventory_settings,
    poll_settings,
    state_settings,
    stream_settings,
)
from exporter.config_values import join_host_port
from exporter.diagnosis import Diagnoser
from exporter.events.ingest import Ingest
from exporter.http import Health, MetricsServer
from exporter.secrets import broker_location
from exporter.state import ClusterState, Snapshot
from exporter.status import StreamStatus
from exporter.webconfig import web_security

log = structlog.get_logger("exporter")

STALL_AFTER = 30.0  # /healthz fails when the event loop has not turned for this long
SNAPSHOT_MAX_AGE = 0.1  # collectors of one scrape share one snapshot


class SnapshotSource:
    """One ClusterState snapshot shared by the collectors of a scrape (and of scrapes that overlap)."""

    def __init__(self, state: ClusterState, max_age: float = SNAPSHOT_MAX_AGE) -> None:
        self.state = state
        self.max_age = max_age
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._taken = 0.0

    def __call__(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snap is None or now - self._taken > self.max_age:
                self._snap = self.state.take_snapshot()
                self._taken = now
            return self._snap


class App:
    """The running exporter: state, event stream, pollers and HTTP server."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time, serve: bool = True) -> None:
        self.config = config
        self.clock = clock
        self.stop_event = threading.Event()
        self.state = ClusterState(state_settings(config), clock)
        self.status = StreamStatus(clock)
        self.ingest = Ingest(self.state, clock)
        snapshots = SnapshotSource(self.state)
        self.stream = build_stream(stream_settings(config), self.ingest, self.status)
        self.inventory: InventoryRunner | None = None
        inventory = inventory_settings(config)
        if inventory.timeout > 0:  # asked on every stream connect; runs in its own thread
            self.inventory = InventoryRunner(inventory, self.ingest.offer_inventory, clock)
            self.ingest.on_connect = self.inventory.request
        self.polling = build_polling(poll_settings(config), self.state.queues_seen)
        # Read through self.polling at scrape time: the demo swaps in its own polling after this.
        self.diagnoser = Diagnoser(snapshots, lambda: self.polling.views(), self.status,
                                   diagnosis_settings(config, clock()))
        sources = Sources(snapshots, self.status, lambda: self.polling.views(), clock, self.diagnoser.results)
        self.registry = CollectorRegistry(auto_describe=False)
        # register() reads each collector's describe(): a name declared twice stops start-up here.
        for collector in (*build_collectors(sources), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self._threads: list[threading.Thread] = []
        # doctor runs the same components without a server (serve=False).
        self.http: MetricsServer | None = None
        if not serve:
            return
        ssl_context, authorize, headers = web_security(config.web_config_file)
        self.http = MetricsServer(
            config.listen_address,
            config.port,
            self.registry,
            Health(self._alive, self._ready, self._index_info, self._status_page),
            ssl_context=ssl_context,
            authorize=authorize,
            headers=headers,
            metrics_path=config.web_telemetry_path,
        )

    # ------------------------------------------------------------------ probes
    def _alive(self) -> tuple[bool, str]:
        threads_ok = all(t.is_alive() for t in self._threads) or self.stop_event.is_set()
        stalled = self.clock() - self.status.heartbeat
        if not threads_ok:
            return False, "a component thread has died"
        if stalled > STALL_AFTER:
            return False, f"event loop has not turned for {stalled:.0f}s"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        if self.status.connected:
            return True, "connected to the broker"
        if self.status.waiting:
            return False, self.status.waiting
        error = self.status.last_error or "not connected yet"
        return False, f"not connected to the broker: {error}"

    def _index_info(self) -> dict[str, str]:
        return {
            "version": __version__,
            # Every URL of a failover list, host and port only (urlsplit of the whole list raised).
            "broker": broker_location(self.config.broker_url),
            "broker connected": "yes" if self.status.connected else "no",
            "reconnects": str(self.status.reconnects),
        }

    def _status_page(self) -> str:
        from exporter.statuspage import page_for

        return page_for(self.config, *self.diagnoser.check())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.http is not None:
            self.http.start()
        components = [("event-stream", self.stream.run), ("polling", self.polling.run)]
        if self.inventory is not None:
            components.append(("inventory", self.inventory.run))
        for name, target in components:
            thread = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "celery-exporter started",
            version=__version__,
            listen=join_host_port(self.config.listen_address, self.port),
            metrics_path=self.config.web_telemetry_path,
            broker=self._index_info()["broker"],
        )

    def _guard(self, name: str, target: Callable[[threading.Event], None]) -> Callable[[], None]:
        def run() -> None:
            # Streams and pollers handle broker errors themselves; this is the last line for a bug, so
            # the component restarts instead of silently dying.
            while not self.stop_event.is_set():
                try:
                    target(self.stop_event)
                except Exception:
                    log.exception("component crashed; restarting it", component=name)
                    self.stop_event.wait(1.0)
                else:
                    return

        return run

    def stop(self, timeout: float = 4.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.http is not None:
            self.http.stop()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("components did not stop in time", components=alive)
        # What this process applied, so a restart's gap (or its absence) can be checked against a publisher.
        events = sum(self.state.take_snapshot().events_by_type.values())
        log.info("celery-exporter stopped", events=events)

    @property
    def port(self) -> int:
        return self.http.port if self.http is not None else 0
