"""``celery-exporter doctor`` against real clusters, each misconfigured the way users do it, one check
each: the doctor names the problem and its fix and exits 1; the same cluster set up right gives every
check ok and exit 0. Redis clusters run on a private redis-server, RabbitMQ ones in a private vhost.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from tests._broker_helpers import MGMT_URL, RedisServer, amqp_url, management_available, mgmt
from tests._doctor_helpers import assert_healthy, assert_problem, checks, run_doctor, worker
from tests._support import wait_for


def redis_case(server: RedisServer, app: dict[str, str], doctor: list[str], events: bool = True,
               names: tuple[str, ...] = ("doctor.add",)) -> tuple[int, dict[str, Any], str]:
    env = {"DOCTOR_BROKER": server.url(0), **app}
    with worker(env, "w1@doctor", events=events):
        return run_doctor(["--broker-url", server.url(0), *doctor], env, task_names=names)


def test_redis_set_up_right_every_check_is_ok(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {}, [])
    assert_healthy(code, report, err)
    assert [w["name"] for w in report["workers"]] == ["w1@doctor"]
    assert {q["name"]: q["why"] for q in report["queues"]}["celery"] == "kombu binding"


def test_worker_without_dash_e_is_named(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {}, [], events=False)
    found = assert_problem(code, report, err, "task_events", "-E")
    assert found["details"]["workers"] == ["w1@doctor"]


def test_producer_without_task_sent_events(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {"DOCTOR_SENT_EVENT": "0"}, [])
    found = assert_problem(code, report, err, "task_sent_events", "task_send_sent_event = True")
    assert "queue wait is measured from task-received" in found["summary"]


def test_exporter_on_another_database(redis_server: RedisServer) -> None:
    env = {"DOCTOR_BROKER": redis_server.url(0)}
    with worker(env, "w1@doctor"):  # the workers use db 0, the exporter is given db 1
        code, report, err = run_doctor(["--broker-url", redis_server.url(1)], env)
    assert_problem(code, report, err, "worker_events", "Redis database (/0)")
    assert_problem(code, report, err, "queue_keys", "redis://host:6379/0")


def test_exporter_without_the_workers_global_keyprefix(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {"DOCTOR_KEYPREFIX": "billing:"}, [])
    assert_problem(code, report, err, "queue_keys", "global_keyprefix")
    # With the same prefix, the same cluster is fine.
    code, report, err = redis_case(
        redis_server, {"DOCTOR_KEYPREFIX": "billing:"},
        ["--broker-transport-options", '{"global_keyprefix": "billing:"}'])
    assert_healthy(code, report, err)


def test_workers_sep_not_given_to_the_exporter(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {"DOCTOR_SEP": ":"}, [])
    found = assert_problem(code, report, err, "transport_options", "--broker-transport-options")
    assert found["details"]["mismatched"] == ["sep"]


def test_worker_clock_shifted(redis_server: RedisServer) -> None:
    # Two minutes ahead: past the point where the exporter stamps a worker's events with their arrival
    # instead, so the skew must be read from what the worker itself wrote.
    code, report, err = redis_case(redis_server, {"DOCTOR_CLOCK_SHIFT": "120"}, [])
    found = assert_problem(code, report, err, "clock_skew", "NTP")
    assert 118 < found["details"]["skew_seconds"]["w1@doctor"] < 122, found
    assert any("w1@doctor: +12" in line for line in found["evidence"]), found


def test_a_cap_set_low(redis_server: RedisServer) -> None:
    code, report, err = redis_case(redis_server, {}, ["--max-task-names", "1"],
                                   names=("doctor.add", "doctor.mul"))
    found = assert_problem(code, report, err, "caps", "--max-task-names")
    assert found["details"]["folded"]["max_task_names"] > 0, found


# ------------------------------------------------------------------------------------------ RabbitMQ
needs_rabbitmq = pytest.mark.skipif(not management_available(), reason="RabbitMQ management API not reachable")


def rabbit_case(vhost: str, doctor: list[str], dlx: str = "") -> tuple[int, dict[str, Any], str]:
    url = amqp_url(vhost)
    env = {"DOCTOR_BROKER": url, "DOCTOR_DLX": dlx}
    quoted = urllib.parse.quote(vhost, safe="")
    with worker(env, "w1@doctor"):
        # The doctor only ever declares Celery's exchange passively: wait for the worker to create it.
        wait_for(lambda: mgmt("GET", f"/exchanges/{quoted}/celeryev"), 30, what="the celeryev exchange")
        return run_doctor(["--broker-url", url, *doctor], env)


@needs_rabbitmq
def test_rabbitmq_set_up_right_every_check_is_ok(vhost: str) -> None:
    code, report, err = rabbit_case(vhost, ["--rabbitmq-management-url", MGMT_URL])
    assert_healthy(code, report, err)
    assert "celery" in {q["name"] for q in report["queues"]}
    # Nothing of the doctor's stays behind: its event queue was exclusive and went with its connection.
    quoted = urllib.parse.quote(vhost, safe="")
    left = [q["name"] for q in mgmt("GET", f"/queues/{quoted}") if q["name"].startswith("celeryev.celery-exp")]
    assert not left, left


@needs_rabbitmq
def test_rabbitmq_without_the_management_api(vhost: str) -> None:
    code, report, err = rabbit_case(vhost, [])
    found = assert_problem(code, report, err, "management_api", "--rabbitmq-management-url")
    assert "dead-letter queues are found only by the names configured" in found["summary"]
    assert checks(report)["dead_letter_routes"]["status"] == "not yet known"


@needs_rabbitmq
def test_rabbitmq_dead_letter_exchange_without_a_queue(vhost: str) -> None:
    code, report, err = rabbit_case(vhost, ["--rabbitmq-management-url", MGMT_URL], dlx="failed")
    found = assert_problem(code, report, err, "dead_letter_routes", "rabbitmqadmin declare binding")
    assert found["details"]["unrouted"] == {"celery": "failed"}, found
