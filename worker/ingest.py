"""``pushsync.ingest``: change events in, delivery batches out, many messages per run.

Producers publish one event per message or many (``publish`` / ``publish_many``); either way
the worker gathers up to PUSHSYNC_INGEST_BATCH_MAX messages, or what arrived within
PUSHSYNC_INGEST_BATCH_WAIT seconds, and runs them as one micro-batch: one transaction, one
compare-and-set statement, one resolve, one log line, one metrics write (``worker.batching``).

What each message carries is untrusted: its events are checked one by one by the fan-out
(``worker.fanout``), and a message of more than PUSHSYNC_MAX_EVENTS_PER_MESSAGE events is
dead-lettered whole, as before. A store or broker out of reach sends each message of the run
back to the queue with a growing countdown (its ``attempt`` kwarg counts), up to
``TRANSIENT_MAX_RETRIES`` times, then dead-letters its events; when even that cannot be
published, the run's messages are requeued as they are.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded

from pushsync.queues import EVENTS_QUEUE, INGEST_TASK
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import fanout, metrics
from worker.app import app
from worker.batching import REQUEUE, MicroBatches, batch_id
from worker.tasks import DATA_ERRORS, TRANSIENT, TRANSIENT_MAX_RETRIES, fan_out, fan_out_one_by_one, flush_metrics, runs

log = logging.getLogger("pushsync.tasks")
_SETTINGS = get_settings()
RETRY_WAIT_MAX = 30.0  # seconds between two tries of a message whose store or broker is away


@dataclass
class Message:
    events: list
    enqueued_at: float
    attempt: int


def _number(value: object, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok else default


def read(request) -> Message:
    """One message's arguments as the worker takes them: anything a producer could have sent."""
    args = request.args if isinstance(request.args, (list, tuple)) else [request.args]
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    events = args[0] if args else kwargs.get("events", [])
    events = events if isinstance(events, list) else [events]
    return Message(events, _number(kwargs.get("enqueued_at", args[1] if len(args) > 1 else None), time.time()),
                   int(_number(kwargs.get("attempt"), 0)))


class IngestBatches(MicroBatches):
    abstract = True
    flush_every = _SETTINGS.ingest_batch_max
    flush_interval = _SETTINGS.ingest_batch_wait

    @property
    def metrics(self) -> metrics.Recorder:
        return runs.recorder  # per thread, as PushsyncTask's

    def __call__(self, requests):
        runs.recorder = metrics.Recorder()
        self.request.update(id=batch_id(requests) if requests else None)
        try:
            return super().__call__(requests)
        finally:
            flush_metrics(runs.recorder)


def _fan_out_all(messages: list[Message], max_events: int) -> fanout.IngestResult:
    """Messages within the limit run as one micro-batch; one over it alone (it is refused whole)."""
    within = [e for m in messages if len(m.events) <= max_events for e in m.events]
    over = [m for m in messages if len(m.events) > max_events]
    enqueued_at = min((m.enqueued_at for m in messages), default=time.time())
    total = fanout.IngestResult()
    parts = [(within, len(within))] if within else []
    parts += [(m.events, max_events) for m in over]
    for events, limit in parts:
        try:
            one = fan_out(events, enqueued_at, max_events=limit)
        except DATA_ERRORS as exc:
            log.warning("the store refused a micro-batch of %d events (%s); trying them one by one",
                        len(events), type(exc.orig).__name__)
            one = fan_out_one_by_one(events, enqueued_at)
        total.add(one)
    return total


def _try_later(messages: list[Message], exc: Exception) -> dict:
    """Each message back to the queue with a countdown, or dead-lettered once out of tries."""
    spent = [m for m in messages if m.attempt >= TRANSIENT_MAX_RETRIES]
    try:
        for m in messages:
            if m.attempt < TRANSIENT_MAX_RETRIES:
                wait = random.uniform(0, min(RETRY_WAIT_MAX, 2 ** m.attempt))
                app.send_task(INGEST_TASK, args=[m.events], kwargs={"enqueued_at": m.enqueued_at,
                                                                      "attempt": m.attempt + 1},
                              queue=EVENTS_QUEUE, countdown=wait)
        if spent:
            with session_scope() as session:
                repo.add_event_dead_letters(session, [e for m in spent for e in m.events],
                                            f"gave up after {TRANSIENT_MAX_RETRIES} tries: {type(exc).__name__}: "
                                            f"{str(exc)[:150]}")
    except TRANSIENT as again:
        log.warning("could not hand %d messages on (%s): requeued", len(messages), again)
        return {REQUEUE: True}
    log.warning("%s: %d messages go again later, %d dead-lettered", type(exc).__name__, len(messages) - len(spent),
                len(spent))
    return {"retried": len(messages) - len(spent), "dead_lettered": len(spent)}


def _dead_letter_all(messages: list[Message], exc: Exception) -> dict:
    events = [e for m in messages for e in m.events]
    try:
        with session_scope() as session:
            repo.add_event_dead_letters(session, events, f"{type(exc).__name__} in {INGEST_TASK}: {str(exc)[:150]}")
    except Exception:
        log.exception("could not dead-letter them either: requeued")
        return {REQUEUE: True}
    return {"dead_lettered": len(events)}


@app.task(name=INGEST_TASK, base=IngestBatches, bind=True)
def ingest(self, requests) -> dict:
    messages = [read(r) for r in requests]
    try:
        result = _fan_out_all(messages, get_settings().max_events_per_message)
    except SoftTimeLimitExceeded:
        return {REQUEUE: True}
    except TRANSIENT as exc:
        return _try_later(messages, exc)
    except Exception as exc:  # a bug or a value nothing foresaw: keep the events, acknowledge the messages
        log.exception("ingest run failed; dead-lettering its %d messages' events", len(messages))
        return _dead_letter_all(messages, exc)
    for outcome in ("received", "invalid", "stale", "coalesced", "notified"):
        self.metrics.add("events", outcome, n=getattr(result, outcome))
    self.metrics.add("dead_lettered", "event", n=result.dead_lettered)
    events = [e for m in messages for e in m.events]
    log.info("ingested %d events from %d messages: %d notified, %d stale, %d dead-lettered, %d devices in %d batches",
             result.received, len(messages), result.notified, result.stale, result.dead_lettered, result.devices,
             result.batches,
             extra={"event_ids": [e.get("eventId") for e in events if isinstance(e, dict) and e.get("eventId")]
                    or None})
    return result.as_dict()
