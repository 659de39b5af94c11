"""Configuration precedence, validation and secrecy."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
import textwrap
from dataclasses import MISSING, fields

import pytest

from exporter.brokers.settings import InventorySettings, PollSettings, StreamSettings
from exporter.config import (
    SLICE_RENAMES,
    Config,
    load_config,
    poll_settings,
    state_settings,
    stream_settings,
)
from exporter.options import GROUPS, OPTIONS, ConfigError, build_parser
from exporter.secrets import redact_url
from exporter.state import StateSettings

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
    assert state_settings(c).task_routes == c.task_routes


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
        ([], {}, "broker_url", "--broker-url"),
        (["--broker-url", URL, "--port", "70000"], {}, "port", "--port"),
        (["--broker-url", URL], {"CELERY_EXPORTER_WORKER_TIMEOUT": "-1"}, "worker_timeout",
         "CELERY_EXPORTER_WORKER_TIMEOUT"),
        (["--broker-url", URL, "--duration-buckets", "1,0.5"], {}, "duration_buckets", "--duration-buckets"),
        (["--broker-url", URL, "--log-level", "loud"], {}, "log_level", "--log-level"),
        (["--broker-url", "no-scheme"], {}, "broker_url", "--broker-url"),
        (["--broker-url", URL, "--log.level", "loud"], {}, "log_level", "--log.level"),
        ([], {"CELERY_EXPORTER_BROKER_URL": "redis://h/abc"}, "broker_url", "CELERY_EXPORTER_BROKER_URL"),
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


# ------------------------------------------------------------------ one declaration per option
def _class_body_defaults(cls: type) -> list[str]:
    """Names given a value in the class body itself (``x: int = 3``): there should be none."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    return [n.target.id for n in body.body
            if isinstance(n, ast.AnnAssign) and n.value is not None and isinstance(n.target, ast.Name)]


def test_options_are_the_only_copy_of_each_default() -> None:
    assert _class_body_defaults(Config) == []
    options = {o.name: o for o in OPTIONS if o.field}
    assert {f.name for f in fields(Config)} == {*options, "config_file"}
    for f in fields(Config):
        opt = options.get(f.name)
        if opt is None or opt.required:
            continue
        got = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        assert got == opt.default, f.name
    assert state_settings() == state_settings(load_config(["--broker-url", URL], {}))
    assert state_settings(max_workers=3).max_workers == 3


def test_every_settings_slice_field_is_an_option_of_the_same_type() -> None:
    """The slices components receive are read from Config in one place: each field is an option (under
    its own name or the one ``SLICE_RENAMES`` gives), with Config's static type, and no default."""
    options = {o.name for o in OPTIONS if o.field}
    config_types = {f.name: f.type for f in fields(Config)}
    assert set(SLICE_RENAMES) == {StateSettings, StreamSettings, PollSettings, InventorySettings}
    for cls, renames in SLICE_RENAMES.items():
        assert _class_body_defaults(cls) == [], cls.__name__
        names = {f.name for f in fields(cls)}
        assert set(renames) <= names, f"{cls.__name__}: a rename names no field"
        for f in fields(cls):
            option = renames.get(f.name, f.name)
            assert option in options, f"{cls.__name__}.{f.name} is no option"
            assert f.type == config_types[option], f"{cls.__name__}.{f.name}"


def test_slices_carry_the_configured_values() -> None:
    c = load_config(["--broker-url", "amqp://h//", "--poll-interval", "7", "--event-prefetch", "9",
                     "--rabbitmq-live-queues", "a,b", "--max-queues", "12"], {})
    poll, stream = poll_settings(c), stream_settings(c)
    assert (poll.interval, poll.live_queues, poll.max_queues, poll.broker_url) == (7.0, ("a", "b"), 12, "amqp://h//")
    assert (stream.prefetch, stream.queue_prefix) == (9, c.event_queue_prefix)
    assert state_settings(c).max_queues == 12


def test_every_default_is_a_value_its_parser_accepts() -> None:
    for opt in OPTIONS:
        if opt.default not in (None, (), {}):
            assert opt.parse(opt.default) == opt.default, opt.name


def test_every_option_has_a_group_and_unique_spellings() -> None:
    spellings = [f for o in OPTIONS for f in o.all_flags]
    assert len(spellings) == len(set(spellings))
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)
    assert {o.group for o in OPTIONS} == set(GROUPS)


# ------------------------------------------------------------------ exporter-toolkit spellings
@pytest.mark.parametrize(
    ("argv", "env", "host", "port"),
    [
        (["--web.listen-address=:9900"], {}, "", 9900),
        (["--web.listen-address", "[::]:9808"], {}, "::", 9808),
        (["--web.listen-address=127.0.0.1:1234"], {}, "127.0.0.1", 1234),
        (["--web.listen-address=[::1]:1234"], {}, "::1", 1234),
        (["--listen-address", "127.0.0.1", "--port", "1235"], {}, "127.0.0.1", 1235),
        (["--listen-address", "::1"], {}, "::1", 9808),
        # a flag beats the environment, part by part; at the same level the new spelling wins
        (["--port", "1"], {"CELERY_EXPORTER_WEB_LISTEN_ADDRESS": "10.0.0.1:2"}, "10.0.0.1", 1),
        (["--web.listen-address=:3"], {"CELERY_EXPORTER_PORT": "4"}, "", 3),
        ([], {"CELERY_EXPORTER_WEB_LISTEN_ADDRESS": ":5", "CELERY_EXPORTER_PORT": "6"}, "", 5),
    ],
)
def test_listen_address_spellings(argv, env, host, port) -> None:
    c = load_config(["--broker-url", URL, *argv], env)
    assert (c.listen_address, c.port) == (host, port)


@pytest.mark.parametrize(
    ("argv", "key", "source", "text"),
    [
        (["--listen-address", "0.0.0.0:9900"], "listen_address", "--listen-address", "without a port"),
        (["--listen-address", "[::]:9900"], "listen_address", "--listen-address", "without a port"),
        (["--web.listen-address", "0.0.0.0"], "web_listen_address", "--web.listen-address", "[HOST]:PORT"),
        (["--web.listen-address", ":99999"], "web_listen_address", "--web.listen-address", "1 to 65535"),
        (["--web.telemetry-path", "metrics"], "web_telemetry_path", "--web.telemetry-path", "/metrics"),
        (["--web.telemetry-path", "/healthz"], "web_telemetry_path", "--web.telemetry-path", "/healthz"),
        (["--log-format", "xml"], "log_format", "--log-format", "logfmt"),
    ],
)
def test_bad_web_and_log_values(argv, key, source, text) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", URL, *argv], {})
    assert (err.value.key, err.value.source) == (key, source) and text in str(err.value)
    assert str(err.value).startswith(next(o.flag for o in OPTIONS if o.name == key) + ": ")


@pytest.mark.parametrize("level", ["warn", "warning", "WARN"])
def test_warn_and_warning_are_one_level(level) -> None:
    assert load_config(["--broker-url", URL, "--log.level", level], {}).log_level == "warning"
    assert load_config(["--broker-url", URL], {"CELERY_EXPORTER_LOG_LEVEL": level}).log_level == "warning"


def test_new_and_old_spellings_reach_the_same_fields(tmp_path) -> None:
    new = load_config(["--broker-url", URL, "--web.config.file", "w.yml", "--log.format", "logfmt",
                       "--web.telemetry-path", "/m"], {})
    old = load_config(["--broker-url", URL, "--web-config-file", "w.yml", "--log-format", "logfmt"], {})
    assert new.web_config_file == old.web_config_file == "w.yml" and new.log_format == old.log_format
    assert new.web_telemetry_path == "/m" and old.web_telemetry_path == "/metrics"
    f = tmp_path / "c.yml"
    f.write_text("broker_url: redis://h/0\nweb_listen_address: '[::1]:7'\nweb_telemetry_path: /x\n"
                 "log_level: warn\n")
    c = load_config(["--config", str(f)], {})
    assert (c.listen_address, c.port, c.web_telemetry_path, c.log_level) == ("::1", 7, "/x", "warning")


# ------------------------------------------------------------------ errors that name their source
def test_raw_python_messages_become_plain_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", URL], {"CELERY_EXPORTER_MAX_WORKERS": "abc"})
    assert str(err.value) == "--max-workers: expected a whole number, got 'abc' (from CELERY_EXPORTER_MAX_WORKERS)"
    for argv, text in ((["--poll-interval", "soon"], "--poll-interval: expected a number, got 'soon'"),
                       (["--broker-transport-options", "{nope"],
                            "expected a JSON object (Expecting property name enclosed in double quotes at "
                            "character 2), got (value not shown)")):
        with pytest.raises(ConfigError) as err:
            load_config(["--broker-url", URL, *argv], {})
        assert text in str(err.value) and "invalid literal" not in str(err.value)


def test_unknown_environment_variable_is_an_error_with_a_hint() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", URL], {"CELERY_EXPORTER_MAX_WORKER": "3"})
    assert str(err.value) == ("CELERY_EXPORTER_MAX_WORKER: unknown environment variable; "
                              "did you mean CELERY_EXPORTER_MAX_WORKERS?")
    # other programs' variables are none of our business; CELERY_EXPORTER_CONFIG is known
    load_config(["--broker-url", URL], {"CELERY_BROKER_URL": "x", "CELERY_EXPORTER_CONFIG": ""})


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("redis://:s3cr3t-pw@127.0.0.1:6379/abc", "database in the URL path must be a number"),
        ("sentinel://h:26379/0;sentinel://h2:26379/x", "database in the URL path must be a number"),
        ("nosuch://h/0", "no broker transport is called 'nosuch'"),
        ("sqs://", "pip install 'kombu[sqs]'"),
        ("zookeeper://h:2181/", "pip install 'kombu[zookeeper]'"),
        ("mongodb://h/db", "pip install 'kombu[mongodb]'"),
    ],
)
def test_broker_url_that_can_never_work(url, text) -> None:
    module = {"sqs": "boto3", "zookeeper": "kazoo", "mongodb": "pymongo"}.get(url.split(":", 1)[0])
    if module and importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", url], {})
    assert text in str(err.value) and "s3cr3t-pw" not in str(err.value)
    assert err.value.source == "--broker-url" and "\n" not in str(err.value)


@pytest.mark.parametrize("url", ["redis://h/", "redis://h", "rediss://h:6380/15", "redis+socket:///tmp/r.sock",
                                 "sentinel://h:26379;sentinel://h2:26379", "amqp://guest:guest@h//",
                                 "pyamqp://h//", "memory://", "filesystem://"])
def test_broker_urls_that_may_work_pass(url) -> None:
    assert load_config(["--broker-url", url], {}).broker_url == url


def test_dead_letter_redis_url_is_repeatable_and_takes_a_list_from_env_and_yaml(tmp_path) -> None:
    argv = ["--broker-url", URL, "--dead-letter-redis-url", "redis://:pw1@h1:6379/3",
            "--dead-letter-redis-url", "redis://h2/4"]
    assert load_config(argv, {}).dead_letter_redis_urls == ("redis://:pw1@h1:6379/3", "redis://h2/4")
    env = {"CELERY_EXPORTER_BROKER_URL": URL,
           "CELERY_EXPORTER_DEAD_LETTER_REDIS_URLS": "redis://h1/3, redis://h2/4 redis://h3/5"}
    assert load_config([], env).dead_letter_redis_urls == ("redis://h1/3", "redis://h2/4", "redis://h3/5")
    f = tmp_path / "c.yaml"
    f.write_text("broker_url: amqp://guest:guest@localhost//\ndead_letter_redis_urls:\n  - redis://h1:6379/3\n")
    assert load_config(["--config", str(f)], {}).dead_letter_redis_urls == ("redis://h1:6379/3",)


@pytest.mark.parametrize("url", ["amqp://guest:s3cr3t-pw@h//", "redis://:s3cr3t-pw@h:port/3",
                                 "redis://:s3cr3t-pw@h/db3"])
def test_a_dead_letter_redis_url_that_cannot_work_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--broker-url", URL, "--dead-letter-redis-url", url], {})
    assert str(err.value).startswith("--dead-letter-redis-url: ")
    assert "s3cr3t-pw" not in str(err.value)
    shown = repr(load_config(["--broker-url", URL, "--dead-letter-redis-url", "redis://:s3cr3t-pw@h/3"], {}))
    assert "s3cr3t-pw" not in shown and "dead_letter_redis_urls=" in shown
