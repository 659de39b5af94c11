"""Everything the exporter knows about Redis brokers (``redis://``, ``rediss://``, ``redis+socket://``,
``sentinel://``):

* ``connection.py``: the one connection builder (URL, TLS query options, sentinels), used by both;
* ``stream.py``: the event stream, a raw PSUBSCRIBE on kombu's ``celeryev`` channels;
* ``poller.py``: the queue, retry-queue and DLQ poller (the I/O);
* ``keys.py``: kombu's key layout and what the poll replies mean (pure).

``pollers()`` is what ``brokers/registry.py`` calls for polling; the stream class is named there.
``dead_letter_pollers()`` is what it calls for the ``--dead-letter-redis-url`` databases (beside any
broker): DLQs only, each database its own source named by ``dlq_source``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog

from exporter.brokers.model import exact_names, is_glob, pinned_queues, rules_for
from exporter.brokers.scheduler import Poller
from exporter.brokers.settings import PollSettings

log = structlog.get_logger("exporter.brokers")


def pollers(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
            monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    from exporter.brokers.redis.keys import RedisLayout, RedisSettings
    from exporter.brokers.redis.poller import RedisPoller, make_client

    options = dict(settings.transport_options)
    layout = RedisLayout.from_options(options)
    redis_settings = RedisSettings(
        layout=layout,
        rules=rules_for(settings, layout.internal_keys),
        queue_names=pinned_queues(settings),
        queue_globs=tuple(q for q in settings.queues if is_glob(q)),
        retry_names=tuple(exact_names(settings.retry_queues)),
        dlq_names=tuple(exact_names(settings.dead_letter_queues)),
        timestamp_field=settings.dlq_timestamp_field,
        max_scan_keys=settings.max_scan_keys,
        peek_heads=True,
    )
    if settings.management_url:
        log.warning("--rabbitmq-management-url is ignored: the broker is Redis")
    url, timeout = settings.broker_url, settings.timeout
    return [RedisPoller(redis_settings, lambda: make_client(url, options, timeout), queues_seen, monotonic)]


def dlq_source(url: str) -> str:
    """The ``source`` label of a DLQ database: ``redis_dlq:<host>:<port>/<db>`` (a socket path in place of
    host and port); never the user or password. Bounded: one per configured URL."""
    first = urlsplit(url.split(";", 1)[0].strip())
    query = dict(parse_qsl(first.query))
    if first.scheme.lower() in ("redis+socket", "socket"):
        return f"redis_dlq:{first.path}/{query.get('virtual_host') or query.get('db') or 0}"
    host = first.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    default_port = 26379 if first.scheme.lower() == "sentinel" else 6379
    db = first.path.strip("/") or query.get("db") or "0"
    return f"redis_dlq:{host}:{first.port or default_port}/{db}"


def dead_letter_pollers(settings: PollSettings, urls: Iterable[str],
                        monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    """One DLQ-only poller per URL of ``urls`` (``settings.dead_letter_redis_urls``): the ``dlq:*`` lists, the
    ``celery:dead_letter_queue`` zset and the ``--dead-letter-queues`` globs, no task queues. Keys there
    are the application's own, so kombu's ``global_keyprefix`` does not apply."""
    from exporter.brokers.redis.keys import RedisLayout, RedisSettings
    from exporter.brokers.redis.poller import RedisPoller, make_client

    options = dict(settings.transport_options)
    layout = RedisLayout()
    dlq_settings = RedisSettings(
        layout=layout,
        rules=rules_for(settings, layout.internal_keys),
        dlq_names=tuple(exact_names(settings.dead_letter_queues)),
        timestamp_field=settings.dlq_timestamp_field,
        max_scan_keys=settings.max_scan_keys,
        dead_letters_only=True,
    )
    out: list[Poller] = []
    used: set[str] = set()
    for url in urls:
        source = base = dlq_source(url)
        n = 2
        while source in used:  # the same database twice (say with two users): keep the sources apart
            source, n = f"{base}#{n}", n + 1
        used.add(source)

        def factory(url: str = url) -> Any:
            return make_client(url, options, settings.timeout)

        out.append(RedisPoller(dlq_settings, factory, tuple, monotonic, source=source))
    return out
