"""Everything the exporter knows about Redis brokers (``redis://``, ``rediss://``, ``redis+socket://``,
``sentinel://``):

* ``connection.py``: the one connection builder (URL, TLS query options, sentinels), used by both;
* ``stream.py``: the event stream, a raw PSUBSCRIBE on kombu's ``celeryev`` channels;
* ``poller.py``: the queue, retry-queue and DLQ poller (the I/O);
* ``keys.py``: kombu's key layout and what the poll replies mean (pure).

``pollers()`` is what ``brokers/registry.py`` calls for polling; the stream class is named there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from exporter.brokers.model import exact_names, is_glob
from exporter.brokers.polling import pinned_queues, rules_for
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
    )
    if settings.management_url:
        log.warning("--rabbitmq-management-url is ignored: the broker is Redis")
    url, timeout = settings.broker_url, settings.timeout
    return [RedisPoller(redis_settings, lambda: make_client(url, options, timeout), queues_seen, monotonic)]
