"""The worker's Celery tasks, thin, and its signals: small JSON arguments in, plain functions do
the work on the process's context (``worker.context``).

``pushsync.ingest_run()``: one ingest micro-batch (``worker.ingest.run``); it carries nothing, it
takes its messages from ``events`` itself. ``pushsync.deliver(batch)``: a delivery batch
(``pushsync.messages.DeliveryBatch``) from ``push.fcm`` or ``push.apns``. Device tokens and
credentials never travel in a message: deliver reads them from the store.

A delivery whose store or broker is out of reach runs again with backoff, at most
``TRANSIENT_MAX_RETRIES`` times; what fails for good is dead-lettered with the reason.
"""

from __future__ import annotations

import gc
import logging

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    celeryd_after_setup,
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from pushsync.messages import DeadLetter, DeliveryBatch, MessageError, exception_text
from pushsync.queues import DELIVER_TASK, EVENTS_QUEUE, INGEST_TASK, RUN_TASK, RUNS_QUEUE
from store import repo
from worker import context, delivery, envelope, ingest, metrics
from worker.app import app
from worker.errors import TRANSIENT
from worker.health import stall_seconds

log = logging.getLogger("pushsync.tasks")

# With the 60 s backoff ceiling, about 4 hours of an unreachable store before a message is
# dead-lettered (or, if the store is still away then, logged with its content).
TRANSIENT_MAX_RETRIES = 240


class PushsyncTask(Task):
    """The chores of every task: bounded retries of transient errors, and its arguments kept as
    dead letters when it fails for good (``dead_letter_args``)."""

    abstract = True
    autoretry_for: tuple[type[BaseException], ...] = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = TRANSIENT_MAX_RETRIES

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

    def dead_letter_args(self, session, exc: BaseException, args: tuple, kwargs: dict) -> None:
        """Keep what a failed task carried; tasks that carry something worth replaying override it."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """A task that fails for good (bad data, a bug, retries exhausted) has its message
        acknowledged all the same: keep what it carried so it can be replayed. A task that carries
        nothing worth keeping (an ingest run) touches no store here.

        After the hard time limit Celery runs this in the worker's main process, which must never
        wait on the store (the store is most likely why the task ran out of time, and a main process
        that waits consumes nothing and answers no ping): nothing is written then. A delivery's
        batch stays in the outbox and is sent again by the scheduler; a handed ingest message is
        requeued (``acks_on_timeout``)."""
        if type(self).dead_letter_args is PushsyncTask.dead_letter_args:
            return
        if isinstance(exc, TimeLimitExceeded):
            log.warning("%s[%s] ran past its hard time limit; left to come back (outbox or queue), "
                        "nothing written from the main process", self.name, task_id)
            return
        try:
            with context.current(app).session_scope() as session:
                self.dead_letter_args(session, exc, args, kwargs)
        except Exception:
            log.exception("could not dead-letter the arguments of failed task %s: %.2000r", task_id, args)


class DeliverTask(PushsyncTask):
    # the soft time limit in a delivery is a slow dependency, not the batch's fault: retried (with
    # backoff, bounded like the rest) instead of dead-lettered
    autoretry_for = (*TRANSIENT, SoftTimeLimitExceeded)

    def dead_letter_args(self, session, exc, args, kwargs):
        raw = args[0] if args else None
        detail = f"{exception_text(exc)} in {self.name}"
        try:
            batch = DeliveryBatch.from_json(raw)
        except MessageError:
            repo.add_dead_letters(session, [DeadLetter.message(raw, "failed", detail)])
            return
        delivery.dead_letter_batch(session, batch, "failed", detail)
        repo.settle_outbox(session, batch.id)


@app.task(name=RUN_TASK, base=PushsyncTask, bind=True, autoretry_for=(), typing=False)
def ingest_run(self, *_args, **_kwargs) -> dict:
    """One ingest micro-batch. Its arguments are ignored: it carries nothing worth trusting."""
    ctx = context.current(app)
    rec = metrics.Recorder()
    try:
        return ingest.run(ctx, rec).as_dict()
    finally:
        ctx.flush_metrics(rec)


class IngestHandedTask(PushsyncTask):
    acks_on_timeout = False  # its events live only in the message: back to the queue, not acknowledged

    def dead_letter_args(self, session, exc, args, kwargs):
        events = envelope.from_arguments("handed", args, kwargs, 0).events
        repo.add_dead_letters(session, [DeadLetter.event(e, "failed", f"{exception_text(exc)} in {self.name}")
                                        for e in events])


@app.task(name=INGEST_TASK, base=IngestHandedTask, bind=True, typing=False)
def ingest_handed(self, *args, **kwargs) -> dict:
    """Only a worker made to consume ``events`` with Celery's consumer runs this (see
    ``worker.ingest.run_handed``); pushsync's workers take those messages in their runs."""
    ctx = context.current(app)
    rec = metrics.Recorder()
    try:
        return ingest.run_handed(ctx, args, kwargs, rec).as_dict()
    finally:
        ctx.flush_metrics(rec)


@app.task(name=DELIVER_TASK, base=DeliverTask, bind=True)
def deliver(self, batch) -> dict:
    ctx = context.current(app)
    rec = metrics.Recorder()
    try:
        return delivery.deliver_message(ctx, batch, rec).as_dict()
    finally:
        ctx.flush_metrics(rec)


@celeryd_after_setup.connect
def _consume_runs_for_events(sender=None, instance=None, **_kwargs) -> None:
    """A worker told to consume ``events`` consumes the run triggers instead (its runs take the
    messages from ``events`` themselves) and starts the dispatcher that publishes them."""
    queues = instance.app.amqp.queues
    if EVENTS_QUEUE in queues.consume_from:
        queues.deselect([EVENTS_QUEUE])
        queues.select_add(RUNS_QUEUE)


@worker_process_init.connect
def _build_pool_context(**_kwargs) -> None:
    context.current(app)
    # What the process holds once it is built (modules, Celery, SQLAlchemy, the context) lives as
    # long as the process: out of the collector's sight, a full collection walks only what runs
    # made since. Measured (bench.fairness, 2 pool processes): a full collection about every
    # 0.7 s in each, 50 to 140 ms before, about 5 ms after, each pausing whatever run was going.
    gc.collect()
    gc.freeze()


@worker_ready.connect
def _start_main(sender=None, **_kwargs) -> None:
    ctx = context.current(app)
    consumed = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", []) or []}
    # the health check watches the queues an operator named: events for the run triggers
    queues = sorted({EVENTS_QUEUE if q == RUNS_QUEUE else q for q in consumed})
    ctx.start_main(getattr(sender, "hostname", None) or "celery@unknown", queues, RUNS_QUEUE in consumed,
                   stall_seconds(ctx.settings))


@worker_shutdown.connect
def _stop_main(**_kwargs) -> None:
    context.current(app).stop_main()


@worker_process_shutdown.connect
def _close(**_kwargs) -> None:
    context.current(app).close()


@task_postrun.connect
def _progress(sender=None, **_kwargs) -> None:
    """In the pool process that ran the task: the health check's sign of progress."""
    progress = context.current(app).progress
    assert progress is not None  # Context.__post_init__ sets it
    progress.finished(getattr(getattr(sender, "request", None), "hostname", None))
