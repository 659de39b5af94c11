"""The monitoring mixin of celery-exporter, shipped in the package so that an installed user renders the
alerting and recording rules, the Prometheus Operator PrometheusRule and the Grafana dashboards from their
own rules config (``celery-exporter generate``), with the same code that renders the repository's files
(tools/ delegates here).

config (defaults, overrides, template values) -> slo (SLOs, burn-rate alerts, schedules: validated) ->
rules + slo_rules (the rule file), dashboards + health + slo_dashboard (Grafana JSON, from grafana) ->
cli (the ``generate`` subcommand).
"""
