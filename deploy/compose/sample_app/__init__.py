"""Sample Celery application for the Compose demo stack: tasks that succeed, fail, retry and dead-letter."""
