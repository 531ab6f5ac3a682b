"""Thin Celery tasks: small JSON arguments in, plain functions do the work.

``pushsync.ingest(events)``: a list of change events (CONTRACT section 2), queue ``events``.
``pushsync.deliver(batch)``: {"pool", "platform", "items": [[device_id, identity, dataset,
sync_count], ...], "attempt"}, queue ``push.fcm`` or ``push.apns``. Device tokens and
credentials never travel in a message: deliver reads them from the store.
"""

from __future__ import annotations

import logging

import redis.exceptions
from celery import Task
from celery.signals import worker_process_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError

from pushsync.settings import get_settings
from store.db import session_scope
from worker import delivery, fanout
from worker.app import DELIVER_TASK, INGEST_TASK, app, queue_for

log = logging.getLogger("pushsync.tasks")

# The store or the broker briefly out of reach: the task runs again later instead of failing.
TRANSIENT = (DBAPIError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KombuOperationalError)


class PushsyncTask(Task):
    abstract = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = None  # nothing is dropped because a dependency was down for a while


def _enqueue(platform: str, batch: dict) -> None:
    app.send_task(DELIVER_TASK, args=[batch], queue=queue_for(platform))


@app.task(name=INGEST_TASK, base=PushsyncTask, bind=True)
def ingest(self, events: list) -> dict:
    if not isinstance(events, list):
        events = [events]
    settings = get_settings()
    with session_scope() as session:
        result = fanout.ingest(session, events, batch_size=settings.batch_size, enqueue=_enqueue)
    log.info("ingest %s", result.as_dict(), extra={"task_id": self.request.id})
    return result.as_dict()


@app.task(name=DELIVER_TASK, base=PushsyncTask, bind=True)
def deliver(self, batch: dict) -> dict:
    settings = get_settings()
    with session_scope() as session:
        creds, tokens = delivery.load(session, batch)
    result = delivery.DeliveryResult(skipped_inactive=len(batch["items"]) - len(tokens))
    if creds is None or not creds.has(batch["platform"]):
        with session_scope() as session:
            result.dead_lettered = delivery.dead_letter_batch(
                session, batch, "unknown pool" if creds is None else "pool has no credentials for this platform")
        return result.as_dict()
    outcomes = delivery.send_batch(creds, batch, tokens, settings)
    with session_scope() as session:
        delivery.record(session, batch, outcomes, result)
    if result.retry_batch:
        app.send_task(DELIVER_TASK, args=[result.retry_batch], queue=queue_for(batch["platform"]),
                      countdown=result.retry_in)
    log.info("deliver %s %s %s", batch["pool"], batch["platform"], result.as_dict(),
             extra={"task_id": self.request.id})
    return result.as_dict()


@worker_process_shutdown.connect
def _close_connections(**_kwargs) -> None:
    try:
        delivery.close_senders()
    except Exception:  # the process is going away; nothing to save
        pass
