"""celery-exporter: a Prometheus exporter for Celery clusters."""

__version__ = "0.1.0"
