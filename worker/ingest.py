"""``pushsync.ingest``: change events in, pushes out, many messages per run.

Producers publish one event per message or many (``publish`` / ``publish_many``). A run takes the
message Celery handed it and more waiting ingest messages, until it holds about
PUSHSYNC_INGEST_BATCH_MAX events (single-event messages: 199 more in one Redis round trip;
``worker.drain``), and runs all their events as one micro-batch
(``worker.ingest_run``): one transaction, one compare-and-set statement, one resolve, one log
line, one metrics write. The messages it took are acknowledged only after that, as Celery
acknowledges its own; a run that dies leaves them to kombu's restore.

What a message carries is untrusted: its events are checked one by one by the fan-out, a
message that does not parse is dead-lettered as it came, and one of more than
PUSHSYNC_MAX_EVENTS_PER_MESSAGE events is dead-lettered whole. A store or broker out of reach
sends each message back to the queue with a growing countdown (its ``attempt`` kwarg counts),
up to ``TRANSIENT_MAX_RETRIES`` times, then dead-letters its events; when even that cannot be
published, the messages go back to the queue as they are.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import redis
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from pushsync.queues import EVENTS_QUEUE, FLUSH_TASK, INGEST_TASK
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import coalesce, drain, fanout, tasks
from worker.app import app
from worker.ingest_run import fan_out_all, windows
from worker.tasks import TRANSIENT, TRANSIENT_MAX_RETRIES, PushsyncTask

log = logging.getLogger("pushsync.tasks")
RETRY_WAIT_MAX = 30.0  # seconds, at most, between two tries of a message whose store or broker is away


@dataclass
class Message:
    events: list
    enqueued_at: float
    attempt: int
    tag: str | None = None  # a message this run took itself (None: the one Celery handed it)
    redelivered: bool = False  # given back to the queue once already (its worker died, or it was requeued)


def _number(value: object, default: float) -> float:
    """A finite number, or ``default``: JSON from a forged message can carry Infinity, NaN and
    integers too large for a float, on which int() and float() raise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default


def read(args: object, kwargs: object, tag: str | None = None, redelivered: bool = False) -> Message:
    """One message's arguments as the worker takes them: anything a producer could have sent."""
    args = list(args) if isinstance(args, (list, tuple)) else [args]
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    events = args[0] if args else kwargs.get("events", [])
    events = events if isinstance(events, list) else [events]
    now = time.time()
    enqueued_at = _number(kwargs.get("enqueued_at", args[1] if len(args) > 1 else None), now)
    # only feeds the latency histogram: a time that cannot be one is read as now
    enqueued_at = enqueued_at if 0 < enqueued_at <= now + 86400 else now
    return Message(events, enqueued_at,
                   int(min(max(_number(kwargs.get("attempt"), 0), 0), TRANSIENT_MAX_RETRIES)), tag, redelivered)


_drain: drain.Drain | None = None


def _take(have: int, limit: int) -> tuple[list[Message], list[str]]:
    """More waiting messages for this run, until it holds about ``limit`` events (it holds
    ``have``): (readable ones, tags of unreadable ones, dead-lettered). Each round asks for as
    many messages as the events still wanted would fill at the size seen so far, so single-event
    messages come in one round trip and messages of 100 events one or two at a time."""
    messages: list[Message] = []
    bad_tags: list[str] = []
    seen_messages = 1
    while have < limit:
        per_message = max(1, have // seen_messages)
        taken, bad = _take_round(max(1, (limit - have) // per_message))
        if not taken and not bad:
            break
        messages += taken
        bad_tags += bad
        seen_messages += len(taken) + len(bad)
        # a message counts as one event at least: a queue of empty messages cannot make a run
        # take more than ``limit`` messages
        have += sum(max(1, len(m.events)) for m in taken) + len(bad)
    return messages, bad_tags


def _take_round(count: int) -> tuple[list[Message], list[str]]:
    global _drain
    try:
        if _drain is None:
            _drain = drain.Drain(tasks.redis_client())
        taken = _drain.take(count, time.time())
    except redis.RedisError as exc:  # the run goes on with what it has
        log.warning("could not take more messages: %s", exc)
        return [], []
    bad = [t for t in taken if t.error]
    if bad:
        try:
            with session_scope() as session:
                for t in bad:
                    repo.add_dead_letter(session, "message", t.error, {"message": t.raw})
        except TRANSIENT as exc:  # kept for later: back to the queue
            log.warning("could not dead-letter %d messages that do not parse: %s", len(bad), exc)
            _settle([t.tag for t in bad], requeue=True)
            bad = []
    return [read(t.args, t.kwargs, t.tag, t.redelivered) for t in taken if not t.error], [t.tag for t in bad]


def _settle(tags: list[str], requeue: bool) -> None:
    if not tags or _drain is None:
        return
    try:
        (_drain.restore if requeue else _drain.ack)(tags)
    except redis.RedisError as exc:  # they stay unacknowledged: kombu restores them later
        log.warning("could not %s %d taken messages: %s", "requeue" if requeue else "acknowledge", len(tags), exc)


def _try_later(messages: list[Message], exc: Exception) -> dict | None:
    """Each message back to the queue with a countdown, or dead-lettered once out of tries;
    None when neither could be done (the caller requeues the messages as they are)."""
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
        return None
    log.warning("%s: %d messages go again later, %d dead-lettered", type(exc).__name__, len(messages) - len(spent),
                len(spent))
    return {"retried": len(messages) - len(spent), "dead_lettered": len(spent)}


def _dead_letter_all(messages: list[Message], exc: Exception) -> dict | None:
    events = [e for m in messages for e in m.events]
    try:
        with session_scope() as session:
            repo.add_event_dead_letters(session, events, f"{type(exc).__name__} in {INGEST_TASK}: {str(exc)[:150]}")
    except Exception:
        log.exception("could not dead-letter them either: requeued")
        return None
    return {"dead_lettered": len(events)}


class IngestTask(PushsyncTask):
    autoretry_for = ()  # the body deals with transient errors itself, message by message
    typing = False  # whatever the arguments, the body gets them and decides

    def dead_letter_args(self, session, reason, args, kwargs):
        # the body keeps what it reads; this is for a failure before it could (a bug): the
        # message as it came, so that nothing goes without a trace
        repo.add_dead_letter(session, "message", reason, {"message": {"args": list(args), "kwargs": kwargs}})


@app.task(name=INGEST_TASK, base=IngestTask, bind=True)
def ingest(self, *args, **kwargs) -> dict:
    settings = get_settings()
    messages = [read(args, kwargs, redelivered=bool((self.request.delivery_info or {}).get("redelivered")))]
    more, bad_tags = _take(max(1, len(messages[0].events)), settings.ingest_batch_max)
    messages += more
    taken = [m.tag for m in more] + bad_tags
    try:
        result = fan_out_all(messages, settings.max_events_per_message)
    except TRANSIENT as exc:
        out = _try_later(messages, exc)
    except Exception as exc:  # a bug or a value nothing foresaw: keep the events, acknowledge the messages
        log.exception("ingest run failed; dead-lettering its %d messages' events", len(messages))
        out = _dead_letter_all(messages, exc)
    else:
        out = None
        _report(self, result, messages)
        _settle(taken, requeue=False)
        return result.as_dict()
    _settle(taken, requeue=out is None)
    if out is None:
        raise Reject("could not hand the messages on", requeue=True)
    return out


def _report(task, result: fanout.IngestResult, messages: list[Message]) -> None:
    for outcome in ("received", "invalid", "stale", "coalesced", "notified", "held"):
        task.metrics.add("events", outcome, n=getattr(result, outcome))
    task.metrics.add("dead_lettered", "event", n=result.dead_lettered)
    events = [e for m in messages for e in m.events]
    log.info("ingested %d events from %d messages: %d notified (%d held), %d stale, %d dead-lettered, "
             "%d devices in %d batches", result.received, len(messages), result.notified, result.held, result.stale,
             result.dead_lettered, result.devices, result.batches,
             extra={"event_ids": [e.get("eventId") for e in events if isinstance(e, dict) and e.get("eventId")]
                    or None})


@app.task(name=FLUSH_TASK, base=PushsyncTask, bind=True)
def flush_windows(self, entries: list) -> dict:
    """Coalescing windows that ended: push each dataset's last notified count."""
    entries = [{"identityPoolId": e["identityPoolId"], "identityId": e["identityId"], "datasetName": e["datasetName"],
                "originDeviceId": e.get("originDeviceId") if isinstance(e.get("originDeviceId"), str) else None,
                "leadCount": e["leadCount"] if isinstance(e.get("leadCount"), int) else -1}
               # the pump sends at most 500; a hand-built message may not hold more than an ingest one
               for e in (entries if isinstance(entries, list) else [])[:get_settings().max_events_per_message]
               if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in
                                               ("identityPoolId", "identityId", "datasetName"))]
    settings = get_settings()
    win = windows()
    if win is not None:
        # a window opened since, whose leading push already carried the count, needs no flush
        leads = win.current_leads([coalesce.event_key(e) for e in entries])
        for e in entries:
            e["leadCount"] = max(e["leadCount"], leads.get(coalesce.event_key(e), -1))
    with session_scope() as session:
        result = fanout.flush(session, entries, batch_size=settings.batch_size, enqueue=tasks.enqueue,
                              redeliver_after=settings.redeliver_after)
    self.metrics.add("events", "window_flushed", n=result.notified)
    log.info("flushed %d coalescing windows: %d devices in %d batches", result.notified, result.devices,
             result.batches)
    return result.as_dict()


def publish_flush(entries: list[dict]) -> None:
    app.send_task(FLUSH_TASK, args=[entries], queue=EVENTS_QUEUE)


_pump: coalesce.Pump | None = None


@worker_ready.connect
def _start_pump(**_kwargs) -> None:
    """Each worker's main process pumps ended windows (claims are atomic: any number of workers)."""
    global _pump
    win = windows()
    if win is not None and _pump is None:
        _pump = coalesce.Pump(win, publish_flush)
        _pump.start()


@worker_shutdown.connect
def _stop_pump(**_kwargs) -> None:
    if _pump is not None:
        _pump.stop()
