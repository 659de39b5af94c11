#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (pip, apt), starts Redis and
# RabbitMQ (with its management API) if they are not running, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages: real Prometheus, promtool and Alertmanager for the rule and end-to-end tests
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
# the status page is opened in a real headless browser (tests/test_statuspage_browser.py)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -q
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}"
fi

# --- services
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached || true
  for _ in $(seq 120); do rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break; sleep 1; done
fi
if ! rabbitmq-plugins is_enabled rabbitmq_management >/dev/null 2>&1; then
  log "enabling rabbitmq_management"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
for _ in $(seq 60); do
  curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && break; sleep 1
done

# --- the project, installed as a user would, into its own virtualenv
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dev]'

log "generated files are current: python -m tools.generate --check"
.venv/bin/python -m tools.generate --check

log "lint: ruff and mypy"
.venv/bin/ruff check exporter tests benchmarks dashboards deploy tools
.venv/bin/mypy exporter

log "running the test suite"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then log "pytest collected no tests"; exit 1; fi
exit "$rc"
