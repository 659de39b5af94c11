"""The one AMQP connection builder, used by the event stream and the passive-declare poller alike.

``connection_parameters(url, ...)`` reads an ``amqp(s)://`` / ``pyamqp://`` / ``librabbitmq://`` URL (or a
``;`` failover list) the way kombu does: ``/`` or ``//`` or ``/%2F`` is the vhost ``/``, ``/name`` is
``name``, guest/guest when no credentials are given, and ``amqps://`` or ``?ssl=true`` is TLS on 5671 with
the system CA store, or ``?ssl_ca_certs=``, ``?ssl_certfile=``, ``?ssl_keyfile=`` and
``?ssl_cert_reqs=CERT_NONE`` as in kombu. Callers choose only their timeouts, heartbeat and connection
name, so a private CA that works for the events works for the polls.

``expecting_channel_close()`` marks passive declares whose 404 is an expected answer, so pika's own
WARNING for it is dropped (RabbitMQ closes the channel; the caller logs what it means, once).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
from kombu.utils.url import url_to_parts

SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
_TRUE = frozenset({"1", "true", "yes", "on"})


def _urls(url: str) -> list[str]:
    return [u.strip() for u in url.split(";") if u.strip()]


def vhost_of(broker_url: str) -> str:
    """The vhost of a kombu AMQP URL: ``amqp://h//`` and ``amqp://h`` -> ``/``, ``amqp://h/x`` -> ``x``."""
    path = urlsplit(broker_url.split(";")[0].strip()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def credentials(url: str) -> tuple[str, str] | None:
    """The user and password of the first URL, percent-decoded, or None when it names no user."""
    split = urlsplit(_urls(url)[0] if _urls(url) else url)
    if split.username is None:
        return None
    return unquote(split.username), unquote(split.password or "")


def ssl_context(query: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context kombu's query options describe (system CAs unless ``ssl_ca_certs`` names a file)."""
    ctx = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    if query.get("ssl_certfile"):
        ctx.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    if str(query.get("ssl_cert_reqs", "")).lower() in {"cert_none", "none"}:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connection_parameters(url: str, *, client_name: str, heartbeat: int, socket_timeout: float,
                          stack_timeout: float, blocked_timeout: float | None
                          ) -> list[pika.ConnectionParameters]:
    """pika parameters for each URL of ``url``; see the module docstring."""
    out = []
    for one in _urls(url):
        scheme, host, port, user, password, path, query = url_to_parts(one)
        use_tls = scheme == "amqps" or str(query.get("ssl", "")).lower() in _TRUE
        host = host or "localhost"
        out.append(pika.ConnectionParameters(
            host=host,
            port=port or (5671 if use_tls else 5672),
            virtual_host=path or "/",
            credentials=pika.PlainCredentials(user or "guest", password or "guest"),
            heartbeat=heartbeat,
            ssl_options=pika.SSLOptions(ssl_context(query), server_hostname=host) if use_tls else None,
            connection_attempts=1,  # the caller retries, with its own backoff or poll schedule
            socket_timeout=socket_timeout,
            stack_timeout=stack_timeout,
            blocked_connection_timeout=blocked_timeout,
            tcp_options={"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3},
            client_properties={"connection_name": client_name, "product": "celery-exporter"},
        ))
    return out


class _ExpectedClose(logging.Filter):
    """Drops pika's WARNING "Received remote Channel.Close (404)" (and 403/405) while this thread is
    inside ``expecting_channel_close()``: that is how a passive declare of something missing answers,
    and the caller reports it itself (once)."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self.local, "declaring", False)
                    and str(record.msg).startswith("Received remote Channel.Close")
                    and isinstance(record.args, tuple) and record.args[:1] in ((403,), (404,), (405,)))


_EXPECTED_CLOSE = _ExpectedClose()
logging.getLogger("pika.channel").addFilter(_EXPECTED_CLOSE)  # idempotent: a filter is added once


@contextmanager
def expecting_channel_close() -> Iterator[None]:
    """Passive declares in this block may close their channel with 404/403/405 without pika warning."""
    _EXPECTED_CLOSE.local.declaring = True
    try:
        yield
    finally:
        _EXPECTED_CLOSE.local.declaring = False
