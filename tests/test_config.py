"""Configuration precedence, validation and secrecy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.config import OPTIONS, ConfigError, build_parser, load_config, redact_url

URL = "redis://:s3cr3t-pw@127.0.0.1:6379/0"


def test_defaults() -> None:
    c = load_config(["--broker-url", URL], {})
    assert c.port == 9808 and c.listen_address == "0.0.0.0" and c.default_queue == "celery"
    assert c.max_tracked_tasks == 100_000 and c.log_format == "auto"


def test_precedence_cli_over_env_over_yaml(tmp_path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("broker_url: redis://yaml/0\nport: 1111\nworker_timeout: 5\ndefault_queue: fromyaml\n")
    env = {"CELERY_EXPORTER_PORT": "2222", "CELERY_EXPORTER_WORKER_TIMEOUT": "7"}
    c = load_config(["--config", str(f), "--port", "3333"], env)
    assert c.port == 3333 and c.worker_timeout == 7.0 and c.default_queue == "fromyaml"
    assert c.broker_url == "redis://yaml/0" and c.config_file == str(f)


def test_yaml_routes_buckets_and_transport_options(tmp_path) -> None:
    f = tmp_path / "c.yml"
    f.write_text(
        "broker_url: redis://h/0\n"
        "task_routes:\n  'proj.email.*': {queue: email}\n  'proj.reports.*': reports\n"
        "duration_buckets: [0.1, 1, 10]\n"
        "broker_transport_options: {global_keyprefix: 'pfx:', priority_steps: [0, 5, 9]}\n"
        "queues: [default, 'high_*']\n"
    )
    c = load_config(["--config", str(f)], {})
    assert c.task_routes == (("proj.email.*", "email"), ("proj.reports.*", "reports"))
    assert c.duration_buckets == (0.1, 1.0, 10.0)
    assert c.broker_transport_options["global_keyprefix"] == "pfx:"
    assert c.queues == ("default", "high_*")
    assert c.state_settings().task_routes == c.task_routes


def test_env_list_and_map_forms() -> None:
    env = {"CELERY_EXPORTER_BROKER_URL": URL, "CELERY_EXPORTER_TASK_ROUTES": "a.*=qa, b.*=qb",
           "CELERY_EXPORTER_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "x:"}',
           "CELERY_EXPORTER_DEAD_LETTER_QUEUES": "dlq:*,dead"}
    c = load_config([], env)
    assert c.task_routes == (("a.*", "qa"), ("b.*", "qb"))
    assert c.dead_letter_queues == ("dlq:*", "dead")


@pytest.mark.parametrize(
    ("argv", "env", "key", "source"),
    [
        ([], {}, "broker_url", "flags, environment and config file"),
        (["--broker-url", URL, "--port", "70000"], {}, "port", "--port"),
        (["--broker-url", URL], {"CELERY_EXPORTER_WORKER_TIMEOUT": "-1"}, "worker_timeout",
         "CELERY_EXPORTER_WORKER_TIMEOUT"),
        (["--broker-url", URL, "--duration-buckets", "1,0.5"], {}, "duration_buckets", "--duration-buckets"),
        (["--broker-url", URL, "--log-level", "loud"], {}, "log_level", "--log-level"),
        (["--broker-url", "no-scheme"], {}, "broker_url", "configuration"),
    ],
)
def test_bad_values_name_key_and_source(argv, env, key, source) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(argv, env)
    assert err.value.key == key and err.value.source == source


def test_unknown_yaml_key_names_key_and_file(tmp_path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("broker_url: redis://h/0\nworker_timout: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(["--config", str(f)], {})
    assert err.value.key == "worker_timout" and err.value.source == str(f)
    assert "did you mean 'worker_timeout'" in str(err.value)


def test_password_never_in_errors_or_repr() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", URL, "--rabbitmq-management-url", "nourl-s3cr3t-pw"], {})
    assert "s3cr3t-pw" not in str(err.value)
    c = load_config(["--broker-url", URL], {})
    assert "s3cr3t-pw" not in repr(c) and ":***@" in repr(c)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@h:5672//", "amqp://guest:***@h:5672//"),
        ("sentinel://:a@h1:26379;sentinel://:b@h2:26379", "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        ("redis://h/0", "redis://h/0"),
    ],
)
def test_redact_url(url, shown) -> None:
    assert redact_url(url) == shown


def test_every_option_has_flag_env_and_help() -> None:
    help_text = build_parser().format_help()
    for opt in OPTIONS:
        assert opt.flag in help_text and opt.env in help_text


def test_cli_exits_2_with_one_clear_message(tmp_path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("broker_url: redis://:s3cr3t-pw@h/0\nbogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "--config", str(f)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and str(f) in proc.stderr and "s3cr3t-pw" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "exporter"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "broker_url" in proc.stderr
