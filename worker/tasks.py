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
from worker import delivery, fanout, metrics, retry
from worker.app import DELIVER_TASK, INGEST_TASK, app, queue_for
from worker.senders.base import Kind

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
def ingest(self, events: list, enqueued_at: float | None = None) -> dict:
    if not isinstance(events, list):
        events = [events]
    settings = get_settings()
    started = time.time()
    with session_scope() as session:
        result = fanout.ingest(session, events, batch_size=settings.batch_size, enqueue=_enqueue,
                               enqueued_at=enqueued_at if isinstance(enqueued_at, (int, float)) else started)
    rec = metrics.Recorder()
    for outcome in ("received", "invalid", "stale", "coalesced", "notified"):
        rec.add("events", outcome, n=getattr(result, outcome))
    rec.add("dead_lettered", "event", n=result.dead_lettered)
    _flush(rec)
    log.info("ingested %d events: %d notified, %d stale, %d dead-lettered, %d devices in %d batches",
             result.received, result.notified, result.stale, result.dead_lettered, result.devices, result.batches,
             extra={"event_ids": [e.get("eventId") for e in events if isinstance(e, dict) and e.get("eventId")]
                    or None})
    return result.as_dict()


def _flush(rec: metrics.Recorder) -> None:
    try:
        rec.flush(_redis())
    except redis.RedisError as exc:  # figures are worth less than the pushes: never fail a task on them
        log.warning("could not record metrics: %s", exc)


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
        rec = metrics.Recorder()
        rec.add("dead_lettered", "delivery", n=result.dead_lettered)
        _flush(rec)
        return result.as_dict()
    outcomes = delivery.send_batch(creds, batch, tokens, settings)
    accepted_at = time.time()
    with session_scope() as session:
        delivery.record(session, batch, outcomes, result, settings)
        if result.retry_batch:
            # queued before the outcomes commit: a failure in between re-sends, never loses
            _schedule_retry(result.retry_batch, result.retry_in, settings)
    rec = metrics.Recorder()
    platform = batch["platform"]
    rec.add("sent", platform, n=result.sent)
    for o in outcomes:
        if o.kind is not Kind.OK:
            rec.add("failed", platform, o.reason or o.kind.value)
    rec.add("invalidated", platform, n=result.deactivated)
    rec.add("dead_lettered", "delivery", n=result.dead_lettered)
    if isinstance(batch.get("enqueued_at"), (int, float)):
        rec.observe(platform, accepted_at - batch["enqueued_at"], n=result.sent)
    _flush(rec)
    log.info("delivered %d of %d (attempt %d): %d retried, %d tokens invalid, %d dead-lettered",
             result.sent, len(batch["items"]), batch.get("attempt", 1), result.retried, result.deactivated,
             result.dead_lettered, extra={"pool": batch["pool"], "platform": platform})
    return result.as_dict()


@worker_process_shutdown.connect
def _close_connections(**_kwargs) -> None:
    try:
        delivery.close_senders()
    except Exception:  # the process is going away; nothing to save
        pass
