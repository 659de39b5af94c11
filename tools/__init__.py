"""Generators of the repository's derived files (docs tables, alert rules, PrometheusRule, dashboards).

They are development tools, not part of the installed exporter: ``python -m tools.generate`` rewrites
everything, ``python -m tools.generate --check`` (run by scripts/test.sh and the tests) fails on drift.
"""
