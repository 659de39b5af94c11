"""Development tools, not part of the installed exporter: the generators of the repository's derived files
(docs tables, alert rules, PrometheusRule, Compose rules, dashboards) behind ``python -m tools.generate``
(``--check`` fails on drift; scripts/test.sh runs it), and ``tools.capture_events`` for test data.
"""
