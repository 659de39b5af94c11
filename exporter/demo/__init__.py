"""``celery-exporter demo``: live Celery metrics with nothing to install beyond the package.

``run`` wires the parts together (``main`` is what ``python -m exporter demo`` calls), ``tasks`` is the
sample Celery application and its producer mix, ``broker`` starts the private Redis or provides the
in-memory transport's poller.
"""

from exporter.demo.run import main

__all__ = ["main"]
