"""The workers' Celery app: the shared configuration (``pushsync.queues``) and the tasks."""

from __future__ import annotations

from celery import Celery

from pushsync.queues import (  # noqa: F401 - re-exported for the worker's modules
    APNS_QUEUE,
    DELIVER_TASK,
    EVENTS_QUEUE,
    FCM_QUEUE,
    INGEST_TASK,
    QUEUES,
    celery_config,
    queue_for,
)
from pushsync.settings import get_settings


def make_app() -> Celery:
    # scheduler.tasks is named so that workers run the periodic jobs; their code stays there
    app = Celery("pushsync", include=["worker.tasks", "scheduler.tasks"])
    app.conf.update(celery_config(get_settings()))
    return app


app = make_app()

from worker import logs  # noqa: E402 - after the app, whose signals it connects to

logs.install()
