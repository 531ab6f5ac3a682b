"""Thin Celery tasks: small JSON arguments in, plain functions do the work.

``pushsync.ingest(events)``: a list of change events (CONTRACT section 2), queue ``events``.
``pushsync.deliver(batch)``: a delivery batch (``pushsync.messages.DeliveryBatch``), queue
``push.fcm`` or ``push.apns``. Device tokens and credentials never travel in a message:
deliver reads them from the store.

Errors are of two kinds. A dependency out of reach (the store's connection, Redis) is
transient: the task runs again with backoff, at most ``TRANSIENT_MAX_RETRIES`` times. Bad data
(a message that does not parse, a value the store refuses) is dead-lettered at once, item by
item where the items can be told apart, and the rest of the message goes on.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError

from pushsync import broker
from pushsync.messages import DeliveryBatch, MessageError
from pushsync.queues import DELIVER_TASK, queue_for
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import delivery, metrics, retry
from worker.app import app

log = logging.getLogger("pushsync.tasks")

# The store or the broker briefly out of reach: the task runs again later instead of failing.
# (OperationalError covers a lost connection, a refused one and SQLite's "database is locked".)
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
             redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KombuOperationalError)
# What the store refuses because of the data itself: retrying cannot help.
DATA_ERRORS = (sqlalchemy.exc.DataError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
# With the 60 s backoff ceiling, about 4 hours of an unreachable store before a message is
# dead-lettered (or, if the store is still away then, logged with its content).
TRANSIENT_MAX_RETRIES = 240


runs = threading.local()


class PushsyncTask(Task):
    """The chores of every task: its figures (``self.metrics``, flushed to Redis in one round
    trip when the task ends, whatever the outcome), bounded retries of transient errors, and
    its arguments kept as dead letters when it fails for good (``dead_letter_args``)."""

    abstract = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = TRANSIENT_MAX_RETRIES

    @property
    def metrics(self) -> metrics.Recorder:
        """This run's figures. Kept per thread: a task object is shared by every run in a process,
        and with `-P threads` runs overlap."""
        return runs.recorder

    def __call__(self, *args, **kwargs):
        runs.recorder = metrics.Recorder()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            flush_metrics(runs.recorder)

    def retry(self, *args, **kwargs):
        # Celery publishes a retry as a new message; when it cannot (the broker is the thing
        # that is down) it raises Reject(requeue=False), which drops the message. Requeue it
        # instead: kombu moves it back to its queue in one Redis transaction, or, if Redis is
        # still away, it stays among the unacknowledged and returns after the visibility timeout.
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            log.warning("could not publish the retry of %s (%s): message requeued", self.name, exc.reason)
            raise Reject(exc.reason, requeue=True) from None

    def dead_letter_args(self, session, reason: str, args: tuple, kwargs: dict) -> None:
        """Keep what a failed task carried; tasks that carry something worth replaying override it."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """A task that fails for good (bad data, a bug, a time limit, retries exhausted) has its
        message acknowledged all the same: keep what it carried so it can be replayed."""
        reason = f"{type(exc).__name__} in {self.name}: {str(exc)[:150]}"
        try:
            with session_scope() as session:
                self.dead_letter_args(session, reason, args, kwargs)
        except Exception:
            log.exception("could not dead-letter the arguments of failed task %s: %.2000r", task_id, args)


class DeliverTask(PushsyncTask):
    def dead_letter_args(self, session, reason, args, kwargs):
        raw = args[0] if args else None
        try:
            batch = DeliveryBatch.from_json(raw)
            delivery.dead_letter_batch(session, batch, reason)
            repo.settle_outbox(session, batch.id)
        except MessageError:
            repo.add_dead_letter(session, "message", reason, {"message": raw})


def redis_client() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = broker.redis_client()
    return _redis_client


_redis_client: redis.Redis | None = None


def schedule_retry(batch: DeliveryBatch, wait: float) -> None:
    """A short wait rides on a Celery countdown; a longer one waits in the retry set, which
    the scheduler pumps, because Redis re-delivers countdown messages held past the
    visibility timeout."""
    if wait <= get_settings().countdown_max:
        app.send_task(DELIVER_TASK, args=[batch.to_json()], queue=queue_for(batch.platform), countdown=wait)
    else:
        retry.schedule(redis_client(), "deliver", batch.to_json(), time.time() + wait)


def enqueue(platform: str, batch: dict) -> None:
    app.send_task(DELIVER_TASK, args=[batch], queue=queue_for(platform))


def flush_metrics(rec: metrics.Recorder) -> None:
    try:
        rec.flush(redis_client())
    except redis.RedisError as exc:  # figures are worth less than the pushes: never fail a task on them
        log.warning("could not record metrics: %s", exc)


@app.task(name=DELIVER_TASK, base=DeliverTask, bind=True)
def deliver(self, batch: dict) -> dict:
    try:
        parsed = DeliveryBatch.from_json(batch)
    except MessageError as exc:
        with session_scope() as session:
            repo.add_dead_letter(session, "message", str(exc), {"message": batch})
        self.metrics.add("dead_lettered", "message")
        log.warning("dead-lettered a delivery message that does not parse: %s", exc)
        return {"dead_lettered": 1}
    return deliver_now(parsed, self.metrics).as_dict()


def deliver_now(parsed: DeliveryBatch, recorder: metrics.Recorder, quiet: bool = False) -> delivery.DeliveryResult:
    """One batch sent and its outcomes recorded, in this process (the deliver task, or an
    ingest run delivering its own small fan-out; that one logs from its own thread, where
    the task's name and id are)."""
    result, outcomes = delivery.deliver(parsed, get_settings(), session_scope=session_scope,
                                        schedule_retry=schedule_retry)
    metrics.record_delivery(recorder, parsed, result, outcomes, accepted_at=time.time())
    if not quiet:
        log_delivery(parsed, result)
    return result


def log_delivery(parsed: DeliveryBatch, result: delivery.DeliveryResult) -> None:
    log.info("delivered %d of %d (attempt %d): %d retried, %d tokens invalid, %d dead-lettered, %d skipped, %d stale",
             result.sent, len(parsed.items), parsed.attempt, result.retried, result.deactivated,
             result.dead_lettered, result.skipped, result.stale,
             extra={"pool": parsed.pool, "platform": parsed.platform})


@worker_process_shutdown.connect
def _close_connections(**_kwargs) -> None:
    try:
        delivery.close_senders()
    except Exception:  # the process is going away; nothing to save
        pass
