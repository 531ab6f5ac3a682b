"""Thin Celery tasks: small JSON arguments in, plain functions do the work.

``pushsync.ingest(events)``: a list of change events (CONTRACT section 2), queue ``events``.
``pushsync.deliver(batch)``: {"pool", "platform", "items": [[device_id, identity, dataset,
sync_count], ...], "attempt"}, queue ``push.fcm`` or ``push.apns``. Device tokens and
credentials never travel in a message: deliver reads them from the store.
"""

from __future__ import annotations

import logging
import time

import redis
import redis.exceptions
from celery import Task
from celery.signals import worker_process_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError

from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import delivery, fanout, retry
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

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """A task that fails for good (a bug, a time limit) has its message acknowledged all
        the same: keep what it carried in the dead-letter store so it can be replayed."""
        reason = f"internal error in {self.name}: {type(exc).__name__}: {str(exc)[:150]}"
        try:
            with session_scope() as session:
                if self.name == INGEST_TASK and args:
                    events = args[0] if isinstance(args[0], list) else [args[0]]
                    for e in events:
                        repo.add_dead_letter(session, "event", reason, e if isinstance(e, dict) else {"event": e},
                                             last_error=str(exc)[:1000])
                elif self.name == DELIVER_TASK and args and isinstance(args[0], dict):
                    delivery.dead_letter_batch(session, args[0], reason)
        except Exception:
            log.exception("could not dead-letter the arguments of failed task %s", task_id)


def _redis() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(get_settings().broker_url)
    return _redis_client


_redis_client: redis.Redis | None = None


def _schedule_retry(batch: dict, wait: float, settings) -> None:
    """A short wait rides on a Celery countdown; a longer one waits in the retry set, which
    the scheduler pumps, because Redis re-delivers countdown messages held past the
    visibility timeout."""
    if wait <= settings.countdown_max:
        app.send_task(DELIVER_TASK, args=[batch], queue=queue_for(batch["platform"]), countdown=wait)
    else:
        retry.schedule(_redis(), "deliver", batch, time.time() + wait)


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
        delivery.record(session, batch, outcomes, result, settings)
        if result.retry_batch:
            # queued before the outcomes commit: a failure in between re-sends, never loses
            _schedule_retry(result.retry_batch, result.retry_in, settings)
    log.info("deliver %s %s %s", batch["pool"], batch["platform"], result.as_dict(),
             extra={"task_id": self.request.id})
    return result.as_dict()


@worker_process_shutdown.connect
def _close_connections(**_kwargs) -> None:
    try:
        delivery.close_senders()
    except Exception:  # the process is going away; nothing to save
        pass
