"""A private CA works for the event stream AND the poller: both go through the one Redis connection
builder (``exporter/brokers/redis/connection.py``). A private ``redis-server`` serves TLS with a server
certificate signed by a CA made here, and asks for a client certificate too; the exporter is given the
CA and its client certificate in the ``rediss://`` URL query, as docs/event-streams.md says. Without the
CA, both must fail to verify the server: the test can tell a working CA from a TLS that checks nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from exporter.brokers.redis.stream import RedisEventStream
from exporter.brokers.registry import build_stream
from exporter.config import Config, stream_settings
from tests._broker_helpers import RedisServer, by_queue, poll
from tests._reliability_helpers import make_ca, make_leaf, publisher
from tests._stream_helpers import pipeline, running, total
from tests._support import FakeClock, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pki = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(pki, "exporter-test-ca")
    server = make_leaf(pki, "redis-server", (ca_cert, ca_key))
    client = make_leaf(pki, "exporter-client", (ca_cert, ca_key), client=True)
    tls_port = free_port()
    srv = RedisServer(extra=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
        "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "yes",
    )).start()
    try:
        yield {"server": srv, "tls_port": tls_port, "ca": ca.cert, "client": client}
    finally:
        srv.stop()


def tls_url(tls: dict[str, Any], with_ca: bool = True) -> str:
    query = f"ssl_cert_reqs=CERT_REQUIRED&ssl_certfile={tls['client'].cert}&ssl_keyfile={tls['client'].key}"
    if with_ca:
        query += f"&ssl_ca_certs={tls['ca']}"
    return f"rediss://127.0.0.1:{tls['tls_port']}/0?{query}"


def test_private_ca_works_for_the_event_stream(tls_redis: dict[str, Any]) -> None:
    state, ingest, status = pipeline()
    stream = build_stream(stream_settings(Config(tls_url(tls_redis))), ingest, status)
    assert isinstance(stream, RedisEventStream)
    with running(stream, status), publisher(tls_redis["server"].port, channel_db=0) as sent:
        wait_for(lambda: total(state) > 0 and sent["sent"] > 0, 15, what="events over TLS")
    assert status.reconnects == 0


def test_private_ca_works_for_the_poller(tls_redis: dict[str, Any]) -> None:
    plain = tls_redis["server"].client(db=0)
    plain.delete("tls-queue")
    plain.lpush("tls-queue", "a", "b", "c")
    got = poll(Config(tls_url(tls_redis), queues=("tls-queue",)), FakeClock())
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 1.0
    assert by_queue(got, "celery_queue_length")["tls-queue"] == 3.0


def test_without_the_ca_neither_the_stream_nor_the_poller_trusts_the_server(
    tls_redis: dict[str, Any],
) -> None:
    got = poll(Config(tls_url(tls_redis, with_ca=False), queues=("tls-queue",)), FakeClock())
    assert got[("celery_exporter_poll_success", (("source", "redis"),))] == 0.0
    assert "tls-queue" not in by_queue(got, "celery_queue_length")

    _state, ingest, status = pipeline()
    stream = build_stream(stream_settings(Config(tls_url(tls_redis, with_ca=False))), ingest, status)
    with running(stream, status, connect=False):
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in (status.last_error or ""), 15,
                 what="the TLS handshake to fail on the unknown CA")
        assert not status.connected


def test_the_ca_file_path_is_not_a_secret(tls_redis: dict[str, Any]) -> None:
    # Redaction masks passwords, not the TLS options: an operator must see which CA file was used.
    from exporter.secrets import redact_url

    assert str(tls_redis["ca"]) in redact_url(tls_url(tls_redis))


def test_one_builder_reads_every_redis_url_shape() -> None:
    import redis

    from exporter.brokers.redis.connection import connection_pool

    pool, db = connection_pool("redis://:p%40w@h:6380/3?health_check_interval=5&fanout_prefix=x", {},
                               socket_timeout=1.0)
    kw = pool.connection_kwargs
    assert (db, kw["host"], kw["port"], kw["password"], kw["health_check_interval"], kw["socket_timeout"]) == (
        3, "h", 6380, "p@w", 5, 1.0)
    assert "fanout_prefix" not in kw  # kombu-only: redis-py would refuse it at connect
    pool, db = connection_pool("rediss://h/2?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem", {})
    assert pool.connection_class is redis.SSLConnection and db == 2
    assert (pool.connection_kwargs["ssl_cert_reqs"], pool.connection_kwargs["ssl_ca_certs"]) == ("required", "/ca.pem")
    pool, db = connection_pool("redis://h/1?ssl_cert_reqs=none", {})
    assert "ssl_cert_reqs" not in pool.connection_kwargs and pool.connection_class is redis.Connection
    pool, db = connection_pool("redis+socket:///run/redis.sock?virtual_host=4", {})
    assert pool.connection_class is redis.UnixDomainSocketConnection and db == 4
    assert pool.connection_kwargs["path"] == "/run/redis.sock"


def test_amqp_stream_and_poller_read_the_same_tls_options(tmp_path_factory: pytest.TempPathFactory) -> None:
    # No TLS RabbitMQ here: check that both build their pika parameters from the one builder, so the
    # poller trusts the private CA the stream trusts (before, the poller used the system store only).
    from exporter.brokers.rabbitmq.poller import amqp_parameters
    from exporter.brokers.rabbitmq.stream import AmqpEventStream
    from tests._stream_helpers import settings

    pki = tmp_path_factory.mktemp("amqp-pki")
    ca, _cert, _key = make_ca(pki, "amqp-private-ca")
    url = f"amqps://u:p@rabbit.internal:5671/prod?ssl_ca_certs={ca.cert}"
    _state, ingest, status = pipeline()
    (streamed,) = AmqpEventStream(settings(url), ingest, status).parameters
    (polled,) = amqp_parameters(url, timeout=4.0, heartbeat=60)
    for params in (streamed, polled):
        assert (params.host, params.port, params.virtual_host) == ("rabbit.internal", 5671, "prod")
        assert params.ssl_options.server_hostname == "rabbit.internal"
        subjects = [dict(x[0] for x in c["subject"]) for c in params.ssl_options.context.get_ca_certs()]
        assert subjects == [{"commonName": "amqp-private-ca"}]
