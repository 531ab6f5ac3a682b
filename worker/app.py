"""The workers' Celery app: the shared configuration (``pushsync.queues``) and the tasks."""

from __future__ import annotations

from celery import Celery

from pushsync.queues import celery_config
from pushsync.settings import get_settings


def make_app() -> Celery:
    # scheduler.tasks is named so that workers run the periodic jobs; their code stays there
    app = Celery("pushsync", include=["worker.tasks", "scheduler.tasks"])
    app.conf.update(celery_config(get_settings()))
    return app


app = make_app()

from worker import logs  # noqa: E402 - after the app, whose signals it connects to

logs.install()
