"""``celery-exporter demo``: a broker, a Celery worker, a producer and the exporter, all in one process.

Start order: broker, exporter (so it sees the worker come online), worker (a ``WorkController`` with a
thread pool, in a thread: Celery's ``Worker`` subclass would install signal handlers, which only the main
thread may do), then the producer. Stopping is the reverse (worker and exporter side by side), each step
bounded, so Ctrl-C or SIGTERM ends the process with status 0 within a few seconds. Status 1 when
something cannot start (the port is taken, the worker never gets ready), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
from celery.worker import WorkController

from exporter.config import load_config
from exporter.demo import tasks as demo_tasks
from exporter.demo.broker import BrokerError, MemoryLists, PrivateRedis, memory_polling
from exporter.logs import configure_logging
from exporter.options import ConfigError

log = structlog.get_logger("exporter.demo")

READY_TIMEOUT = 20.0
STOP_BUDGET = 4.0  # seconds for the whole shutdown; the brief is "exit 0 within 5 s"
SUMMARY_EVERY = 30.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="celery-exporter demo",
        description="Run a self-contained demo: a broker, a Celery worker with sample tasks that succeed, "
        "fail, retry with backoff and dead-letter, a producer, and the exporter serving /metrics.",
    )
    parser.add_argument("--port", type=int, default=9808, help="HTTP port of the exporter (default 9808).")
    parser.add_argument("--listen-address", default="127.0.0.1",
                        help="Address the exporter binds to (default 127.0.0.1; 0.0.0.0 for all).")
    parser.add_argument("--broker", choices=("auto", "redis", "memory"), default="auto",
                        help="auto (default): a private redis-server if one is on PATH, else kombu's "
                        "in-memory transport; redis or memory to choose.")
    parser.add_argument("--rate", type=float, default=4.0, help="Tasks sent per second (default 4).")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    ns = parser.parse_args(list(argv))
    if not 0 < ns.port < 65536 or ns.rate <= 0:
        parser.error("--port must be 1-65535 and --rate positive")
    return ns


class DemoWorker(WorkController):
    """Celery's worker core without the ``celery worker`` front end (no signal handlers, no banner);
    it says when its consumer is ready, which only that front end signals otherwise."""

    def __init__(self, *args: Any, ready: threading.Event, **kwargs: Any) -> None:
        self.ready = ready
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        super().on_consumer_ready(consumer)
        self.ready.set()


class Demo:
    """Owns every component of the demo; stops the producer, then worker and exporter together, then
    the broker."""

    def __init__(self, ns: argparse.Namespace, stop: threading.Event) -> None:
        self.ns = ns
        self.stop_event = stop
        self.redis: PrivateRedis | None = None
        self.memory_lists: MemoryLists | None = None
        self.broker_url = "memory://"
        self.broker_note = ""
        self.exporter: Any = None
        self.worker: Any = None
        self.worker_thread: threading.Thread | None = None
        self.producer_thread: threading.Thread | None = None
        self.demo: demo_tasks.DemoApp | None = None
        self.sent = 0

    # ------------------------------------------------------------------ start
    def start_broker(self) -> None:
        binary = PrivateRedis.available()
        if self.ns.broker in ("auto", "redis") and binary:
            self.redis = PrivateRedis(binary)
            try:
                self.redis.start()
            except BrokerError as exc:
                self.redis = None
                if self.ns.broker == "redis":
                    raise
                log.warning("falling back to the in-memory broker", reason=str(exc))
            else:
                self.broker_url = self.redis.url
                self.broker_note = (f"a private redis-server on 127.0.0.1:{self.redis.port} (temporary, no "
                                    "persistence): the exporter's Redis fast path and Redis poller")
                return
        elif self.ns.broker == "redis":
            raise BrokerError("no redis-server on PATH")
        self.memory_lists = MemoryLists()
        self.broker_note = ("kombu's in-memory transport (memory://, in-process only): events through the "
                            "generic kombu path; queue depths and the DLQ from the demo's in-process poller"
                            + ("" if self.ns.broker == "memory" else "; install redis-server for the "
                               "Redis fast path"))

    def start_exporter(self) -> None:
        from exporter.app import App

        argv = ["--broker-url", self.broker_url, "--port", str(self.ns.port),
                "--listen-address", self.ns.listen_address, "--log-level", self.ns.log_level,
                "--log-format", self.ns.log_format, "--poll-interval", "2",
                "--queues", ",".join(demo_tasks.QUEUES), "--default-queue", "default"]
        if self.memory_lists is not None:
            argv += ["--broker-transport-options", '{"polling_interval": 0.1}']
        config = load_config(argv, environ={})  # the demo ignores CELERY_EXPORTER_* meant for real use
        self.exporter = App(config)
        if self.memory_lists is not None:
            self._use_memory_polling(config)
        self.exporter.start()

    def _use_memory_polling(self, config: Any) -> None:
        # build_polling has no poller for memory://; swap in the demo's before anything runs.
        app, lists = self.exporter, self.memory_lists
        assert lists is not None
        app.polling = memory_polling(config, lists, lambda: (*demo_tasks.QUEUES, *app.state.queues_seen()))

    def start_worker(self) -> None:
        if self.redis is not None:
            import redis

            store: Any = redis.Redis.from_url(self.broker_url)
            options: dict[str, Any] = {}
        else:
            store, options = self.memory_lists, {"polling_interval": 0.1}
        self.demo = demo_tasks.build_app(self.broker_url, store, options)
        app = self.demo.app
        # A retry publishes through the *current* app; in a worker thread that is the default app, whose
        # broker is amqp://localhost. Make ours the default, or retries would go to the wrong broker.
        app.set_default()
        app.set_current()
        ready = threading.Event()
        self.worker = DemoWorker(
            app=app, ready=ready, hostname=f"demo-worker@{socket.gethostname()}", pool="threads",
            concurrency=4, queues=list(demo_tasks.QUEUES), without_mingle=True, without_gossip=True,
            loglevel=self.ns.log_level.upper(),
        )
        self.worker_thread = threading.Thread(target=self.worker.start, name="celery-worker", daemon=True)
        self.worker_thread.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.wait(0.2):
            if self.stop_event.is_set() or not self.worker_thread.is_alive() or time.monotonic() > deadline:
                raise BrokerError("the Celery worker did not become ready")

    def start_producer(self) -> None:
        demo = self.demo
        assert demo is not None

        def produce() -> None:
            try:
                demo_tasks.send_first_round(demo)
                self.sent += len(demo_tasks.TASK_NAMES)
            except Exception as exc:
                log.warning("cannot send tasks", error=str(exc))
            interval = 1.0 / self.ns.rate
            next_burst = time.monotonic() + demo_tasks.BURST_FIRST
            while not self.stop_event.wait(interval):
                try:
                    if time.monotonic() >= next_burst:
                        next_burst = time.monotonic() + demo_tasks.BURST_EVERY
                        self.sent += demo_tasks.send_burst(demo, self.sent)
                    demo_tasks.send_one(demo, self.sent)
                    self.sent += 1
                except Exception as exc:  # the broker may be going away during shutdown
                    if not self.stop_event.is_set():
                        log.warning("cannot send a task", error=str(exc))

        self.producer_thread = threading.Thread(target=produce, name="demo-producer", daemon=True)
        self.producer_thread.start()

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + STOP_BUDGET

        def left(share: float) -> float:
            return max(0.1, min(share, deadline - time.monotonic()))

        if self.producer_thread is not None:
            self.producer_thread.join(left(1.0))
        # The worker (a warm shutdown: running tasks finish, they are short) and the exporter stop
        # side by side; the broker goes last, once nothing talks to it.
        stoppers = []
        if self.worker is not None and self.worker_thread is not None:
            stoppers.append(threading.Thread(target=self.worker.stop, kwargs={"in_sighandler": False},
                                             name="celery-worker-stop", daemon=True))
        if self.exporter is not None:
            stoppers.append(threading.Thread(target=self.exporter.stop, kwargs={"timeout": left(2.0)},
                                             name="exporter-stop", daemon=True))
        for stopper in stoppers:
            stopper.start()
        waits = [*stoppers, *([self.worker_thread] if self.worker_thread is not None else [])]
        for thread in waits:
            if thread.is_alive():
                thread.join(left(2.5))
        if self.redis is not None:
            self.redis.stop(timeout=left(1.0))


def quiet_celery(level: str) -> None:
    """The sample tasks fail on purpose several times a second; the metrics show it, the log need not."""
    if level == "debug":
        return
    logging.getLogger("celery").setLevel(logging.WARNING)
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)  # "No hostname was supplied" (memory)


def banner(demo: Demo) -> str:
    host = "localhost" if demo.ns.listen_address in ("127.0.0.1", "0.0.0.0", "::", "::1") \
        else demo.ns.listen_address
    base = f"http://{host}:{demo.exporter.port}"
    return f"""
celery-exporter demo is running.
  broker    {demo.broker_note}
  worker    {demo.worker.hostname}: thread pool, queues {', '.join(demo_tasks.QUEUES)}, events on
  producer  {demo.ns.rate:g} tasks/s: {demo_tasks.SEND_EMAIL} (succeeds), {demo_tasks.PARSE_INVOICE} (fails
            on bad input), {demo_tasks.CALL_API} (autoretry, exponential backoff + jitter),
            {demo_tasks.IMPORTANT} (exhausts its retries, then {demo_tasks.DLQ_KEY});
            and every {demo_tasks.BURST_EVERY:g} s a newsletter: {demo_tasks.BURST_SIZE} emails at once
            back up queue email (watch celery_queue_length rise and drain)
  exporter  {base}/metrics   {base}/readyz   {base}/

Try, in another terminal:
  curl -s {base}/metrics | grep celery_task_
  curl -s {base}/metrics | grep -E '^celery_(queue_length|dead_letter_queue|worker_up)'
  watch -n1 "curl -s {base}/metrics | grep '^celery_queue_length'"   (the newsletter backlog)
  curl -s {base}/metrics | grep celery_task_retries_exhausted_total

Dashboards and alerts: the repository's dashboards/ and alerts/ folders; point a Prometheus at
{base}/metrics (deploy/compose runs Prometheus, Grafana and Alertmanager with this exporter).
Next, your own broker (enable events first: worker_send_task_events and task_send_sent_event):
  celery-exporter --broker-url redis://HOST:6379/0
  celery-exporter --broker-url amqp://USER:PASSWORD@HOST:5672//
Task failures are intentional and not logged. Stop with Ctrl-C.
""".strip("\n")


def main(argv: Sequence[str] = ()) -> int:
    ns = parse_args(argv)
    configure_logging(ns.log_level, ns.log_format)
    quiet_celery(ns.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping the demo", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    demo = Demo(ns, stop)
    try:
        demo.start_broker()
        demo.start_exporter()
        demo.start_worker()
        demo.start_producer()
    except (BrokerError, ConfigError, OSError) as exc:
        hint = " (is the port taken? try --port)" if isinstance(exc, OSError) else ""
        log.error("the demo cannot start", error=str(exc) + hint)
        demo.stop()
        return 1
    except BaseException:
        demo.stop()
        raise
    print(banner(demo), flush=True)
    last = time.monotonic()
    while not stop.wait(1.0):
        if time.monotonic() - last >= SUMMARY_EVERY:
            last = time.monotonic()
            log.info("demo running", tasks_sent=demo.sent, metrics=f"http://localhost:{demo.exporter.port}/metrics")
    demo.stop()
    log.info("demo stopped")
    return 0
