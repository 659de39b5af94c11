"""Broker pollers: queue depth, unacked messages, consumers, retry queues and dead-letter queues.

``build_polling(config, queues_seen)`` picks the pollers for the broker URL (Redis; RabbitMQ through the
management API when ``--rabbitmq-management-url`` is set, else passive declares over AMQP) and returns a
``Polling``: ``run(stop)`` polls in the background every ``poll_interval`` seconds, each poll under a
``poll_timeout`` deadline, and ``views`` reads the last good results (``QueueCollector`` serves them).
Brokers without a poller (SQS, ...) get an idle ``Polling`` with only the self-metrics' HELP lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import structlog

from exporter.brokers.model import PollResult, Rules, cap_queues, exact_names, is_glob
from exporter.brokers.scheduler import STALE_POLLS, Poller, Polling, PollStore, SourceRunner, SourceView
from exporter.config import Config
from exporter.events.streams import url_secrets
from exporter.state import OVERFLOW_LABEL

__all__ = ["PollResult", "Polling", "SourceView", "build_pollers", "build_polling"]

log = structlog.get_logger("exporter.brokers")

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "socket", "sentinel")


class Capped:
    """A poller whose results keep at most ``max_queues`` queue names (see ``cap_queues``)."""

    def __init__(self, inner: Poller, max_queues: int, pinned: tuple[str, ...]) -> None:
        self.inner, self.max_queues, self.pinned = inner, max_queues, pinned
        self.source = inner.source

    def poll(self, deadline: float) -> PollResult:
        return cap_queues(self.inner.poll(deadline), self.max_queues, self.pinned)

    def close(self) -> None:
        self.inner.close()


def rules_for(config: Config, internal_names: Iterable[str] = ()) -> Rules:
    return Rules(
        retry_globs=tuple(config.retry_queues),
        dlq_globs=tuple(config.dead_letter_queues),
        exclude_globs=(*config.exclude_queues, config.event_queue_prefix + "*"),
        internal_names=frozenset((*internal_names, OVERFLOW_LABEL)),
    )


def build_pollers(config: Config, queues_seen: Callable[[], Iterable[str]],
                  monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    """The pollers for ``config.broker_url`` (none for a broker we cannot poll)."""
    url = config.broker_url
    scheme = config.broker_scheme
    options = dict(config.broker_transport_options)
    pinned = (config.default_queue, *exact_names(config.queues))
    pollers: list[Poller] = []
    if scheme in REDIS_SCHEMES:
        from exporter.brokers.redis import RedisPoller, make_client
        from exporter.brokers.redis_keys import RedisLayout, RedisSettings

        layout = RedisLayout.from_options(options)
        settings = RedisSettings(
            layout=layout,
            rules=rules_for(config, layout.internal_keys),
            queue_names=pinned,
            queue_globs=tuple(q for q in config.queues if is_glob(q)),
            retry_names=tuple(exact_names(config.retry_queues)),
            dlq_names=tuple(exact_names(config.dead_letter_queues)),
            timestamp_field=config.dlq_timestamp_field,
            max_scan_keys=config.max_scan_keys,
        )
        pollers.append(RedisPoller(
            settings, lambda: make_client(url, options, config.poll_timeout), queues_seen, monotonic
        ))
        if config.rabbitmq_management_url:
            log.warning("--rabbitmq-management-url is ignored: the broker is Redis")
    else:
        from exporter.brokers.rabbitmq import (
            AmqpPoller,
            ManagementApi,
            ManagementPoller,
            amqp_parameters,
            is_amqp,
            vhost_of,
        )

        if not is_amqp(url):
            log.info("queue polling is not available for this broker transport", scheme=scheme)
            return []
        rules = rules_for(config)
        if config.rabbitmq_management_url:
            first = url.split(";")[0].strip()
            split = urlsplit(first)
            fallback = (split.username, split.password or "") if split.username else None
            api = ManagementApi(config.rabbitmq_management_url, fallback)
            pollers.append(ManagementPoller(api, vhost_of(url), rules, monotonic))
        else:
            globs = [g for g in (*config.queues, *config.retry_queues) if is_glob(g)]
            if globs:
                log.warning("without --rabbitmq-management-url queue globs only match queues seen in "
                            "events; list exact names to poll them", globs=globs)
            fixed = [*pinned, *exact_names(config.retry_queues), *exact_names(config.dead_letter_queues)]

            def names() -> list[str]:
                return list(dict.fromkeys([*fixed, *queues_seen()]))[: config.max_queues * 2]

            heartbeat = int(max(60, 3 * config.poll_interval))
            params = amqp_parameters(url, config.poll_timeout, heartbeat)
            pollers.append(AmqpPoller(params, names, rules, monotonic))
    return [Capped(p, config.max_queues, pinned) for p in pollers]


def _secrets(config: Config) -> list[str]:
    # The same rule as the event stream: every password, as written and percent-decoded.
    return [*url_secrets(config.broker_url), *url_secrets(config.rabbitmq_management_url or "")]


def build_polling(config: Config, queues_seen: Callable[[], Iterable[str]],
                  monotonic: Callable[[], float] = time.monotonic) -> Polling:
    """The background polling for ``config``: run ``polling.run``; ``polling.views`` reads its results."""

    def seen() -> list[str]:
        return [q for q in queues_seen() if q and q != OVERFLOW_LABEL]

    pollers = build_pollers(config, seen, monotonic)
    store = PollStore([p.source for p in pollers], STALE_POLLS * config.poll_interval, monotonic)
    runners = [SourceRunner(p, store, config.poll_timeout, _secrets(config), monotonic) for p in pollers]
    return Polling(runners, config.poll_interval, store.views)
