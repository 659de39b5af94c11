"""Everything the exporter knows about RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``,
``librabbitmq://``):

* ``connection.py``: the one AMQP connection builder (vhost, credentials, TLS options), used by both;
* ``stream.py``: the event stream, pika with the exporter's own queue on ``celeryev``;
* ``poller.py``: the management-API poller and the passive-declare poller (the I/O);
* ``classify.py``: what the API's queues, arguments, policies and bindings mean (pure).

``pollers()`` is what ``brokers/registry.py`` calls for polling; the stream class is named there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from exporter.brokers.model import exact_names, is_glob, pinned_queues, rules_for
from exporter.brokers.scheduler import Poller
from exporter.brokers.settings import PollSettings
from exporter.secrets import url_secrets

log = structlog.get_logger("exporter.brokers")


def pollers(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
            monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    from exporter.brokers.rabbitmq.connection import credentials, vhost_of
    from exporter.brokers.rabbitmq.poller import (
        AmqpPoller,
        KeptConnection,
        ManagementApi,
        ManagementPoller,
        amqp_parameters,
    )

    url = settings.broker_url
    rules = rules_for(settings)
    heartbeat = int(max(60, 3 * settings.interval))
    if settings.management_url:
        api = ManagementApi(settings.management_url, credentials(url))
        # Retry queues and DLQs are read live over AMQP: the statistics lag by up to 5 s.
        live = KeptConnection(amqp_parameters(url, settings.timeout, heartbeat))
        return [ManagementPoller(api, vhost_of(url), rules, monotonic, live, settings.live_queues,
                                 url_secrets(url))]
    globs = [g for g in (*settings.queues, *settings.retry_queues) if is_glob(g)]
    if globs:
        log.warning("without --rabbitmq-management-url queue globs only match queues seen in "
                    "events; list exact names to poll them", globs=globs)
    fixed = [*pinned_queues(settings), *exact_names(settings.retry_queues),
             *exact_names(settings.dead_letter_queues)]

    def names() -> list[str]:
        return list(dict.fromkeys([*fixed, *queues_seen()]))[: settings.max_queues * 2]

    return [AmqpPoller(amqp_parameters(url, settings.timeout, heartbeat), names, rules, monotonic,
                       seen=queues_seen)]
