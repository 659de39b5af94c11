"""The queue collector on a private registry: exact exposition from stored poll results, the DLQ age
under a fake clock, the poll self-metrics, and what happens to values after failed polls."""

from __future__ import annotations

from prometheus_client import generate_latest

from exporter.brokers.scheduler import STALE_POLLS, PollStore
from exporter.collectors import all_specs
from exporter.collectors.queues import METRICS, QueueCollector
from exporter.status import PollResult, QueueDepth
from tests._broker_helpers import registry_of
from tests._support import FakeClock

RESULT = PollResult(
    queues={"default": QueueDepth(12.0, 3.0, 2.0), "celery": QueueDepth(0.0)},
    retry={"retry_2s": 4.0},
    dead_letter={"dlq:app.tasks.pay": 2.0, "celery:dead_letter_queue": 0.0},
    dead_letter_oldest={"dlq:app.tasks.pay": 1_700_000_000.0 - 90.0},
    broker_unacked=5.0,
    skipped={"invalid_name": 1},
    mismatched_options=("sep",),
)


def sample_lines(store: PollStore, clock: FakeClock) -> list[str]:
    text = generate_latest(registry_of([QueueCollector(store.views, clock)])).decode()
    return [line for line in text.splitlines() if not line.startswith("#") and "_created" not in line]


def test_the_collector_serves_exactly_the_declared_metrics() -> None:
    clock, mono = FakeClock(), FakeClock(100.0)
    store = PollStore(["redis"], stale_after=60.0, monotonic=mono)
    store.record_success("redis", RESULT, 0.25)
    text = generate_latest(registry_of([QueueCollector(store.views, clock)])).decode()
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert typed == {s.name for s in METRICS}
    assert set(METRICS) <= set(all_specs())
    allowed = {n for s in METRICS for n in s.sample_names}
    served = {line.split("{")[0].split()[0] for line in text.splitlines() if not line.startswith("#")}
    assert served <= allowed
    assert len(served) == len(METRICS)  # every declared metric has a sample here


def test_exposition_after_a_good_poll() -> None:
    clock, mono = FakeClock(), FakeClock(100.0)
    store = PollStore(["redis"], stale_after=60.0, monotonic=mono)
    assert sample_lines(store, clock) == ['celery_exporter_poll_errors_total{source="redis"} 0.0']

    store.record_success("redis", RESULT, 0.25)
    assert sample_lines(store, clock) == [
        'celery_queue_length{queue="celery"} 0.0',
        'celery_queue_length{queue="default"} 12.0',
        'celery_queue_messages_unacked{queue="default"} 3.0',
        'celery_queue_consumers{queue="default"} 2.0',
        'celery_retry_queue_length{queue="retry_2s"} 4.0',
        'celery_dead_letter_queue_length{queue="celery:dead_letter_queue"} 0.0',
        'celery_dead_letter_queue_length{queue="dlq:app.tasks.pay"} 2.0',
        'celery_dead_letter_queue_oldest_message_age_seconds{queue="dlq:app.tasks.pay"} 90.0',
        # First sight of a DLQ adds nothing, however full it is.
        'celery_dead_letter_messages_added_total{queue="celery:dead_letter_queue"} 0.0',
        'celery_dead_letter_messages_added_total{queue="dlq:app.tasks.pay"} 0.0',
        "celery_broker_unacked_messages 5.0",
        'celery_exporter_poll_success{source="redis"} 1.0',
        'celery_exporter_poll_duration_seconds{source="redis"} 0.25',
        'celery_exporter_poll_errors_total{source="redis"} 0.0',
        'celery_exporter_poll_skipped_total{reason="invalid_name",source="redis"} 1.0',
        'celery_exporter_poll_option_mismatch{option="sep",source="redis"} 1.0',
    ]


def test_after_a_failed_poll_the_last_good_values_are_served_until_they_go_stale() -> None:
    clock, mono = FakeClock(), FakeClock(100.0)
    store = PollStore(["redis"], stale_after=STALE_POLLS * 5.0, monotonic=mono)
    store.record_success("redis", RESULT, 0.25)
    clock.now += 30.0
    mono.now += 30.0
    store.record_failure("redis", 4.0)
    lines = sample_lines(store, clock)
    assert 'celery_queue_length{queue="default"} 12.0' in lines
    # The oldest entry keeps ageing between polls: the age is taken at scrape time.
    assert 'celery_dead_letter_queue_oldest_message_age_seconds{queue="dlq:app.tasks.pay"} 120.0' in lines
    assert 'celery_exporter_poll_success{source="redis"} 0.0' in lines
    assert 'celery_exporter_poll_duration_seconds{source="redis"} 4.0' in lines
    assert 'celery_exporter_poll_errors_total{source="redis"} 1.0' in lines

    mono.now = 100.0 + 60.0  # exactly stale_after since the good poll: still served
    assert 'celery_queue_length{queue="default"} 12.0' in sample_lines(store, clock)
    mono.now += 0.001
    store.record_failure("redis", 4.0)
    assert sample_lines(store, clock) == [
        # A counter outlives the stale result it came from: it must not vanish and come back at 0.
        'celery_dead_letter_messages_added_total{queue="celery:dead_letter_queue"} 0.0',
        'celery_dead_letter_messages_added_total{queue="dlq:app.tasks.pay"} 0.0',
        'celery_exporter_poll_success{source="redis"} 0.0',
        'celery_exporter_poll_duration_seconds{source="redis"} 4.0',
        'celery_exporter_poll_errors_total{source="redis"} 2.0',
        'celery_exporter_poll_skipped_total{reason="invalid_name",source="redis"} 1.0',
    ]


def test_sources_are_independent_and_labels_are_valid_utf8() -> None:
    clock, mono = FakeClock(), FakeClock(0.0)
    store = PollStore(["rabbitmq_management", "redis"], stale_after=60.0, monotonic=mono)
    store.record_failure("rabbitmq_management", 2.0)
    undecodable = b"q\xff".decode("utf-8", "surrogateescape")  # a Redis key that is not UTF-8
    store.record_success("redis", PollResult(queues={undecodable: QueueDepth(1.0)}), 0.5)
    assert sample_lines(store, clock) == [
        'celery_queue_length{queue="q\ufffd"} 1.0',
        'celery_exporter_poll_success{source="rabbitmq_management"} 0.0',
        'celery_exporter_poll_success{source="redis"} 1.0',
        'celery_exporter_poll_duration_seconds{source="rabbitmq_management"} 2.0',
        'celery_exporter_poll_duration_seconds{source="redis"} 0.5',
        'celery_exporter_poll_errors_total{source="rabbitmq_management"} 1.0',
        'celery_exporter_poll_errors_total{source="redis"} 0.0',
    ]


def test_two_sources_holding_the_same_dlq_name_are_told_apart() -> None:
    clock, mono = FakeClock(), FakeClock(0.0)
    second = "redis_dlq:localhost:6379/3"
    store = PollStore(["redis", second], stale_after=60.0, monotonic=mono)
    store.record_success("redis", PollResult(dead_letter={"celery:dead_letter_queue": 1.0}), 0.1)
    store.record_success(second, PollResult(dead_letter={"celery:dead_letter_queue": 7.0, "dlq:x": 2.0},
                                            dead_letter_oldest={"celery:dead_letter_queue": clock.now - 60}),
                         0.1)
    lines = [ln for ln in sample_lines(store, clock) if ln.startswith("celery_dead_letter_queue")]
    assert lines == [
        'celery_dead_letter_queue_length{queue="celery:dead_letter_queue"} 1.0',
        f'celery_dead_letter_queue_length{{queue="celery:dead_letter_queue@{second}"}} 7.0',
        'celery_dead_letter_queue_length{queue="dlq:x"} 2.0',
        f'celery_dead_letter_queue_oldest_message_age_seconds{{queue="celery:dead_letter_queue@{second}"}} 60.0',
    ]
