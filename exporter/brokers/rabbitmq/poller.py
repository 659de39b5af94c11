"""The RabbitMQ pollers: the I/O half (``classify.py`` decides what it means).

* With ``--rabbitmq-management-url``: two GETs per poll, ``/api/queues/<vhost>`` (every queue with its
  ready/unacked/consumer counts, publish count, arguments and effective policy, trimmed with
  ``columns=``) and ``/api/bindings/<vhost>`` (to see where dead letters go). The management database
  refreshes counts on its statistics interval (5 s by default), too slow for a 2 s retry queue: the
  queues classified as retry queues or DLQs, and those ``--rabbitmq-live-queues`` names, are then read
  live with a passive declare over one kept AMQP connection (the stream's connection builder, so TLS
  applies). If that fails, the poll serves the statistics and logs why (once a minute).
* Without it: a passive ``queue.declare`` over AMQP (pika) per queue known from config and events. A
  queue that does not exist closes the channel with 404: it is reported absent (no series), logged once
  at INFO, and declared again only every ``ABSENT_RECHECK`` seconds (each 404 is an error line in
  RabbitMQ's own log); pika's WARNING for these expected closes is dropped. A name the broker cannot
  take (over 255 bytes, not UTF-8, a NUL: names come from events) is never sent; it is skipped and
  counted (``PollResult.skipped["invalid_name"]``).

The vhost is the broker URL's (kombu's ``amqp://host//`` is ``/``). The management URL's credentials,
or else the broker URL's, authenticate the HTTP calls; neither ever reaches a log line.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
import structlog

from exporter.brokers.model import Rules, matches, name_problem
from exporter.brokers.rabbitmq.classify import amqp_result, classify, management_result
from exporter.brokers.rabbitmq.connection import (
    connection_parameters,
    credentials,
    expecting_channel_close,
    ssl_context,
)
from exporter.logs import RateLimitedLog
from exporter.secrets import describe_error
from exporter.status import PollResult

log = structlog.get_logger("exporter.brokers")
ABSENT_RECHECK = 600.0  # seconds between passive declares of a queue found not to exist
_REMEMBERED_NAMES = 1000  # invalid names kept for "log once"; they come from events, so bounded

QUEUE_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,consumers,arguments,effective_policy_definition,"
    "head_message_timestamp,message_stats.publish"
)
BINDING_COLUMNS = "source,destination,destination_type,routing_key"


class ManagementApi:
    """A minimal client of the RabbitMQ HTTP API (stdlib only; GET and JSON)."""

    def __init__(self, base_url: str, fallback: tuple[str, str] | None = None) -> None:
        split = urlsplit(base_url)
        user, password = credentials(base_url) or fallback or ("guest", "guest")
        netloc = split.hostname or "localhost"
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if split.port:
            netloc += f":{split.port}"
        self.base = urlunsplit((split.scheme, netloc, split.path.rstrip("/"), "", ""))
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.secrets = (password,)
        # A private CA for the management API is named like the broker's: ?ssl_ca_certs=/path/ca.pem
        self._ssl = ssl_context(dict(parse_qsl(split.query))) if split.scheme == "https" else None

    def request(self, method: str, path: str, params: Mapping[str, str] | None = None,
                body: Any = None, timeout: float = 10.0) -> Any:
        url = self.base + path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": self._auth, "Accept": "application/json", "Content-Type": "application/json",
        })
        with urllib.request.urlopen(req, timeout=max(0.05, timeout), context=self._ssl) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10.0) -> Any:
        return self.request("GET", path, params, timeout=timeout)


def fetch_management(api: ManagementApi, vhost: str, deadline: float,
                     monotonic: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Every queue of the vhost (one call) and its bindings (one call)."""
    v = quote(vhost, safe="")
    queues = api.get(f"/api/queues/{v}", {"columns": QUEUE_COLUMNS}, timeout=deadline - monotonic())
    bindings = api.get(f"/api/bindings/{v}", {"columns": BINDING_COLUMNS}, timeout=deadline - monotonic())
    if not isinstance(queues, list) or not isinstance(bindings, list):
        raise ValueError("the management API returned something other than a list")
    return {"queues": queues, "bindings": bindings}


class ManagementPoller:
    """The management API's statistics, with retry queues, DLQs and ``live`` globs read live over AMQP
    (``amqp``; None reads nothing live)."""

    source = "rabbitmq_management"

    def __init__(self, api: ManagementApi, vhost: str, rules: Rules,
                 monotonic: Callable[[], float] = time.monotonic, amqp: KeptConnection | None = None,
                 live: Sequence[str] = (), secrets: Sequence[str] = ()) -> None:
        self.api, self.vhost, self.rules, self.monotonic = api, vhost, rules, monotonic
        self.amqp, self.live = amqp, tuple(live)
        self.secrets = (*api.secrets, *secrets)
        self.log = RateLimitedLog(log, interval=60.0, monotonic=monotonic)

    def poll(self, deadline: float) -> PollResult:
        fetched = fetch_management(self.api, self.vhost, deadline, self.monotonic)
        kinds = classify(fetched["queues"], fetched["bindings"], self.rules)
        names = [n for n, k in kinds.items() if k != "task" or matches(n, self.live)]
        counts: dict[str, tuple[int, int] | None] = {}
        if self.amqp is not None and names:
            try:
                counts = fetch_amqp(self.amqp.get(), names, deadline, self.monotonic)
            except Exception as exc:  # the statistics are still worth serving, a few seconds late
                self.amqp.close()
                self.log.warning("live", "reading retry queues and DLQs live failed; serving the "
                                 "management statistics", error=describe_error(exc, self.secrets))
            else:
                self.log.reset("live")
        return management_result(fetched["queues"], fetched["bindings"], self.rules, counts)

    def close(self) -> None:
        if self.amqp is not None:
            self.amqp.close()


# ------------------------------------------------------------------------------------------------ AMQP
def amqp_parameters(broker_url: str, timeout: float, heartbeat: int) -> list[pika.ConnectionParameters]:
    """pika parameters for polling: the stream's connection builder, with the poll's deadline."""
    return connection_parameters(broker_url, client_name="celery-exporter poller", heartbeat=heartbeat,
                                 socket_timeout=timeout, stack_timeout=timeout, blocked_timeout=timeout)


def fetch_amqp(connection: Any, names: Iterable[str], deadline: float,
               monotonic: Callable[[], float] = time.monotonic) -> dict[str, tuple[int, int] | None]:
    """Passive-declare each queue: ``name -> (ready, consumers)``, or None when it does not exist (or
    this user may not see it). A 404/403 closes only the channel: open a new one and go on."""
    out: dict[str, tuple[int, int] | None] = {}
    with expecting_channel_close():
        channel = connection.channel()
        try:
            for name in names:
                if monotonic() > deadline:
                    raise TimeoutError("the poll deadline passed during passive declares")
                try:
                    ok = channel.queue_declare(queue=name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code not in (403, 404, 405):
                        raise
                    out[name] = None
                    channel = connection.channel()
                    continue
                out[name] = (int(ok.method.message_count), int(ok.method.consumer_count))
        finally:
            if channel.is_open:
                channel.close()
    return out


class KeptConnection:
    """One AMQP connection for polling, kept between polls and reopened when lost."""

    def __init__(self, parameters: Sequence[pika.ConnectionParameters]) -> None:
        self.parameters = list(parameters)
        self._conn: Any = None

    def get(self) -> Any:
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.process_data_events(0)  # surfaces a connection the broker has dropped
                return self._conn
            except pika.exceptions.AMQPError:
                self.close()
        self._conn = pika.BlockingConnection(self.parameters)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception as exc:  # already broken: nothing left to close
                log.debug("closing the AMQP poll connection failed", error=type(exc).__name__)


class AmqpPoller:
    """Passive declares over one kept AMQP connection (no management API)."""

    source = "rabbitmq_amqp"

    def __init__(self, parameters: Sequence[pika.ConnectionParameters], names: Callable[[], list[str]],
                 rules: Rules, monotonic: Callable[[], float] = time.monotonic,
                 absent_recheck: float = ABSENT_RECHECK,
                 seen: Callable[[], Iterable[str]] = tuple) -> None:
        self.amqp = KeptConnection(parameters)
        self.names = names
        self.rules = rules
        self.monotonic = monotonic
        self.absent_recheck = absent_recheck
        # The queue names task-sent events named: a producer routing to a queue found missing is news
        # that it exists now (the exporter usually starts before the workers that declare the queues), so
        # such a name is declared again at the next poll, once, instead of after ``absent_recheck``.
        self.seen = seen
        self.absent: dict[str, tuple[float, bool]] = {}  # name -> (when found missing, named by events then)
        self._invalid: set[str] = set()

    def _pollable(self) -> tuple[list[str], int]:
        """The names to declare this poll, and how many were refused as invalid."""
        now, out, invalid = self.monotonic(), [], 0
        names = self.names()
        current = set(names)
        self.absent = {n: t for n, t in self.absent.items() if n in current}  # bounded like names()
        named = set(self.seen()) if self.absent else set()
        for name in names:
            problem = name_problem(name)
            if problem is not None:
                invalid += 1
                if name not in self._invalid and len(self._invalid) < _REMEMBERED_NAMES:
                    self._invalid.add(name)
                    log.info("queue name skipped: the broker cannot take it", problem=problem,
                             queue=ascii(name[:64]))
                continue
            if self.rules.excluded(name):
                continue
            missing = self.absent.get(name)
            if (missing is None or now - missing[0] >= self.absent_recheck
                    or (not missing[1] and name in named)):
                out.append(name)
        return out, invalid

    def poll(self, deadline: float) -> PollResult:
        names, invalid = self._pollable()
        try:
            counts = fetch_amqp(self.amqp.get(), names, deadline, self.monotonic)
        except Exception:
            self.amqp.close()
            raise
        now = self.monotonic()
        named = set(self.seen()) if any(got is None for got in counts.values()) else set()
        for name, got in counts.items():
            if got is None:
                if name not in self.absent:
                    log.info("queue not found on the broker; not reported until it exists (checked again "
                             f"every {self.absent_recheck:g}s, or as soon as a task is sent to it)",
                             queue=name)
                self.absent[name] = (now, name in named)
            elif self.absent.pop(name, None) is not None:
                log.info("queue found on the broker", queue=name)
        result = amqp_result(counts, self.rules)
        return replace(result, skipped={"invalid_name": invalid}) if invalid else result

    def close(self) -> None:
        self.amqp.close()
