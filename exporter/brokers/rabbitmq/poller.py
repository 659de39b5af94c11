"""The RabbitMQ pollers: the I/O half (``classify.py`` decides what it means).

* With ``--rabbitmq-management-url``: two GETs per poll, ``/api/queues/<vhost>`` (every queue with its
  ready/unacked/consumer counts, arguments and effective policy, trimmed with ``columns=``) and
  ``/api/bindings/<vhost>`` (to see where dead letters go). The management database refreshes counts
  on its statistics interval (5 s by default), so values can lag the broker by that much.
* Without it: a passive ``queue.declare`` over AMQP (pika) per queue known from config and events. A
  queue that does not exist closes the channel with 404; it is reported absent (no series), logged
  once, and the poll goes on with a fresh channel.

The vhost is the broker URL's (kombu's ``amqp://host//`` is ``/``). The management URL's credentials,
or else the broker URL's, authenticate the HTTP calls; neither ever reaches a log line.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
import structlog

from exporter.brokers.model import PollResult, Rules
from exporter.brokers.rabbitmq.classify import amqp_result, management_result
from exporter.brokers.rabbitmq.connection import connection_parameters, credentials, ssl_context

log = structlog.get_logger("exporter.brokers")

QUEUE_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,consumers,arguments,effective_policy_definition,"
    "head_message_timestamp"
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
    source = "rabbitmq_management"

    def __init__(self, api: ManagementApi, vhost: str, rules: Rules,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.api, self.vhost, self.rules, self.monotonic = api, vhost, rules, monotonic

    def poll(self, deadline: float) -> PollResult:
        fetched = fetch_management(self.api, self.vhost, deadline, self.monotonic)
        return management_result(fetched["queues"], fetched["bindings"], self.rules)

    def close(self) -> None:
        pass


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


class AmqpPoller:
    """Passive declares over one AMQP connection, kept between polls and reopened when lost."""

    source = "rabbitmq_amqp"

    def __init__(self, parameters: Sequence[pika.ConnectionParameters], names: Callable[[], list[str]],
                 rules: Rules, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.parameters = list(parameters)
        self.names = names
        self.rules = rules
        self.monotonic = monotonic
        self.absent: set[str] = set()
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.process_data_events(0)  # surfaces a connection the broker has dropped
                return self._conn
            except pika.exceptions.AMQPError:
                self.close()
        self._conn = pika.BlockingConnection(self.parameters)
        return self._conn

    def poll(self, deadline: float) -> PollResult:
        names = [n for n in self.names() if not self.rules.excluded(n)]
        try:
            counts = fetch_amqp(self._connection(), names, deadline, self.monotonic)
        except Exception:
            self.close()
            raise
        for name, got in counts.items():
            if got is None and name not in self.absent:
                log.info("queue not found on the broker; not reported until it exists", queue=name)
                self.absent.add(name)
            elif got is not None:
                self.absent.discard(name)
        return amqp_result(counts, self.rules)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception as exc:  # already broken: nothing left to close
                log.debug("closing the AMQP poll connection failed", error=type(exc).__name__)
