"""Celery app, tasks, fan-out and delivery."""
