"""One ingest micro-batch's whole life, in one place: take, read, window, commit, send or queue,
ack. ``run(ctx, recorder)`` is the only entry point (the ``pushsync.ingest_run`` task's body).

1. take: up to PUSHSYNC_INGEST_BATCH_MAX messages off ``events`` and the due flushes, atomically,
   under a lease (``worker.intake``); work left behind starts another run at once.
2. read: every message and flush member is untrusted bytes; each event is typed once
   (``contract.event``). What cannot be used becomes a dead letter of its own; its neighbours go on.
3. window: the events' keys enter their coalescing windows (``worker.coalesce``): held or leading.
4. commit: one transaction (``worker.plan``): the dead letters, the accepted counts, the planned
   pushes in the outbox.
5. send or queue: a small fan-out is sent from this run, a larger one goes to the push queues.
6. ack: the messages and flushes leave their in-flight records; held keys' flushes are scheduled
   again (a transaction slower than its window must not miss its flush).

Each failure has one answer, here: the store or Redis out of reach -> the messages are deferred
(due again after a jittered backoff, the try counted; after PUSHSYNC_INGEST_TRIES their events are
dead-lettered); the store refusing the data -> the events one by one, only the refused ones
dead-lettered; anything else (a bug) -> the events dead-lettered with the error, never lost.
"""

from __future__ import annotations

import logging
import random
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from pushsync.contract import ChangeEvent, Key
from pushsync.messages import DeadLetter, DeliveryBatch, exception_text
from pushsync.queues import EVENTS_QUEUE, RUNS_QUEUE
from store import repo
from worker import delivery, envelope, lanes, metrics, plan, trail
from worker.context import Context
from worker.envelope import Batch
from worker.errors import DATA_ERRORS, TRANSIENT
from worker.intake import InFlight, Taken
from worker.plan import IngestResult
from worker.stages import stage

log = logging.getLogger("pushsync.tasks")

FLUSHES_PER_RUN = 500
# Redis may be away for a moment when a run is done: it tries this long (seconds between tries)
# to hand its messages back or let them go before their lease decides (a run that cannot reach
# Redis looks, from Redis, like one that died).
REDIS_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0)
# What a run may meet that is not the data's fault: it defers, it does not dead-letter.
PASSING = (*TRANSIENT, redis.RedisError, SoftTimeLimitExceeded)


def run(ctx: Context, rec: metrics.Recorder) -> IngestResult:
    room = ctx.settings.ingest_batch_max
    try:
        with stage("take"):
            taken = ctx.intake.take(room, FLUSHES_PER_RUN, *lanes.lookahead(room))
    except redis.RedisError as exc:  # nothing was taken: the dispatcher starts a run again later
        log.warning("could not take ingest messages: %s", exc)
        return IngestResult()
    with stage("take"):
        taken = lanes.share(ctx, taken, room)
    if taken.more:
        with stage("queue"):
            ctx.publish.trigger()  # more waits: another process may take it while this one works
    if not taken.messages and not taken.flushes:
        return IngestResult()
    s = ctx.settings
    with stage("read"):
        batch = envelope.read_batch(taken, max_events=s.max_events_per_message, batch_max=s.ingest_batch_max,
                                    now=ctx.now())
    seen: dict = {}
    try:
        with stage("window"):
            held = _windows(ctx, batch)
        with stage("commit"):
            batches = _commit(ctx, batch, set(held), seen)
        _trail(ctx, rec.trail, batch.events, held, seen, batches)
        _send(ctx, batches, batch.res, rec)
    except PASSING as exc:  # the store or Redis away, or the run out of time: nothing lost, all later
        _defer(ctx, batch, exc, rec.trail)
        return batch.res
    with stage("ack"):
        _with_redis(lambda: ctx.intake.ack(batch.ids, taken.lease, taken.flushes,
                                           again={k.text().encode(): end for k, end in held.items()}),
                    f"acknowledge {len(batch.ids)} ingest messages")
        if batch.put_back:
            _with_redis(lambda: ctx.intake.defer(dict.fromkeys(batch.put_back, 0.0), taken.lease, count=False),
                        f"put back {len(batch.put_back)} messages")
    with stage("metrics"):
        _report(batch, rec)
    return batch.res


def run_handed(ctx: Context, args: object, kwargs: object, rec: metrics.Recorder) -> IngestResult:
    """An ingest message that Celery's own consumer handed over: a worker made to consume
    ``events`` itself (`add_consumer events`, or `celery worker -Q events` without pushsync's
    start-up), which takes messages with BRPOP and can lose one when Redis dies. Run here rather
    than discarded as an unregistered task; a failure on the way raises, for Celery's retry."""
    log.warning("Celery's consumer handed this worker an ingest message: consume %s instead of %s "
                "(pushsync worker -Q does that)", RUNS_QUEUE, EVENTS_QUEUE)
    message = envelope.from_arguments("handed", args, kwargs, ctx.now())
    taken = Taken([InFlight("handed", b"", 0, 0)])
    batch = Batch(taken)
    envelope.add_message(batch, taken.messages[0], message, ctx.settings.max_events_per_message)
    held = _windows(ctx, batch)
    seen: dict = {}
    batches = _commit(ctx, batch, set(held), seen)
    _trail(ctx, rec.trail, batch.events, held, seen, batches)
    _send(ctx, batches, batch.res, rec)
    ctx.intake.ack([], 0, again={k.text().encode(): end for k, end in held.items()})
    _report(batch, rec)
    return batch.res


def _with_redis(call, what: str) -> bool:
    """``call`` tried again over a few seconds while Redis is away."""
    for wait in (*REDIS_WAITS, None):
        try:
            call()
            return True
        except redis.RedisError as exc:
            if wait is None:
                log.warning("could not %s (%s): their leases will decide", what, exc)
                return False
            time.sleep(wait)
    return False


def _windows(ctx: Context, batch: Batch) -> dict[Key, int]:
    width = ctx.settings.coalesce_window
    return ctx.windows.enter({e.key: width for e in batch.events}) if width > 0 and batch.events else {}


def _commit(ctx: Context, batch: Batch, held: set[Key], seen: dict) -> list[DeliveryBatch]:
    """The transaction; when the store refuses the data, the events again one by one. ``seen``
    gets what the trail needs: the keys that moved, those planned, the dead letters written."""
    enqueued = min((m.enqueued_at for m in batch.messages), default=None)
    try:
        with ctx.session_scope() as session:
            out = _plan(ctx, session, batch.events, held, batch.flushes, enqueued, batch.res, batch.letters,
                        batch.again, seen)
            repo.add_dead_letters(session, batch.letters)
        seen["letters"] = batch.letters
        return out
    except PASSING:  # not the data's fault: the caller defers
        raise
    except DATA_ERRORS as exc:
        log.warning("the store refused a micro-batch of %d events (%s); trying them one by one",
                    len(batch.events), type(getattr(exc, "orig", exc)).__name__)
        seen.clear()
        return _one_by_one(ctx, batch, held, enqueued, seen)
    except Exception as exc:  # a bug or a value nothing foresaw: keep the events, acknowledge the messages
        log.exception("ingest run failed; dead-lettering its %d events", len(batch.events))
        _replace_result(batch)
        letters = batch.letters + [DeadLetter.event(e, "failed", f"{exception_text(exc)} in an ingest run")
                                   for e in batch.events]
        with ctx.session_scope() as session:
            repo.add_dead_letters(session, letters)
        seen.clear()
        seen["letters"] = letters
        batch.res.dead_lettered += len(batch.events)
        return []


def _replace_result(batch: Batch) -> None:
    """A failed attempt's counts are void: start again from what reading the messages found."""
    res = batch.res
    kept = IngestResult(received=res.received, invalid=res.invalid, dead_lettered=res.invalid)
    batch.res = kept


def _plan(ctx: Context, session, events, held, flushes, enqueued, res, letters, again=frozenset(), seen=None
          ) -> list[DeliveryBatch]:
    s = ctx.settings
    return plan.micro_batch(session, events, held=held, flushes=flushes, credentials=ctx.pools.credentials,
                            batch_size=s.batch_size, redeliver_after=s.redeliver_after, enqueued_at=enqueued,
                            res=res, letters=letters, again=again, seen=seen)


def _one_by_one(ctx: Context, batch: Batch, held: set[Key], enqueued, seen: dict) -> list[DeliveryBatch]:
    _replace_result(batch)
    with ctx.session_scope() as session:
        repo.add_dead_letters(session, batch.letters)
    written = seen.setdefault("letters", [])
    written += batch.letters
    out: list[DeliveryBatch] = []
    parts: list[tuple[list[ChangeEvent], set[Key]]] = [([e], set()) for e in batch.events]
    if batch.flushes:
        parts.append(([], batch.flushes))
    for events, flushes in parts:
        letters: list[DeadLetter] = []
        one = IngestResult()
        part: dict = {}
        try:
            with ctx.session_scope() as session:
                out += _plan(ctx, session, events, held, flushes, enqueued, one, letters, batch.again, part)
                repo.add_dead_letters(session, letters)
            for name in ("moved", "planned"):
                seen.setdefault(name, {}).update(part.get(name, {}))
            written += letters
        except DATA_ERRORS as exc:
            orig = getattr(exc, "orig", exc)
            one = IngestResult(dead_lettered=len(events), invalid=len(events))
            refused = [DeadLetter.event(e, "refused by the store", exception_text(orig)) for e in events]
            with ctx.session_scope() as session:
                repo.add_dead_letters(session, refused)
            written += refused
            if flushes:
                log.error("the store refused the flush of %d keys (%s); the sweep will try them again",
                          len(flushes), exception_text(orig))
        batch.res.add(one)
    return out


def _defer(ctx: Context, batch: Batch, exc: BaseException, tr: trail.Trail) -> None:
    """The store or Redis out of reach, or the run out of time: every message due again after a
    jittered backoff, its try counted, or, out of tries, its events dead-lettered; flushes due again
    in a second. When even the dead letters cannot be written, those messages wait the longest
    backoff and try again."""
    tries, cap = ctx.settings.ingest_tries, ctx.settings.ingest_retry_cap
    waits = {t.id: random.uniform(0, min(cap, 2 ** t.attempts)) for t in batch.taken.messages}
    spent = [m for m in batch.messages if m.attempts + 1 >= tries]
    if spent and not isinstance(exc, SoftTimeLimitExceeded):
        why = f"{tries} tries: {exception_text(exc)}"
        try:
            letters = [DeadLetter.event(e, "out of tries", why, attempts=tries) for m in spent for e in m.events]
            with ctx.session_scope() as session:
                repo.add_dead_letters(session, letters)
            if tr.on(ctx.settings):
                trail.letters(tr, letters)
            for m in spent:
                waits.pop(m.id)
            ctx.intake.ack([m.id for m in spent], batch.taken.lease)
        except PASSING as again:
            log.warning("could not dead-letter %d messages out of tries (%s): they wait and try again",
                        len(spent), again)
            waits.update({m.id: cap for m in spent})
    _with_redis(lambda: ctx.intake.defer(waits, batch.taken.lease, dict.fromkeys(batch.taken.flushes, 1.0)),
                f"defer {len(waits)} ingest messages")
    log.warning("%s: %d ingest messages and %d flushes go again later, %d dead-lettered", exception_text(exc),
                len(waits), len(batch.taken.flushes), len(batch.taken.messages) - len(waits))


def _trail(ctx: Context, tr: trail.Trail, events, held: dict[Key, int], seen: dict,
           batches: list[DeliveryBatch]) -> None:
    """What became of the run's events, on the identities' trails (``worker.trail``)."""
    if not tr.on(ctx.settings):
        return
    with stage("commit"):  # the trail's share of the CPU counts as the commit's
        lines = trail.Trail()
        try:
            trail.letters(lines, seen.get("letters", ()))
            trail.ingest(lines, events, held, seen, batches, lambda keys: _accepted(ctx, keys))
        except Exception:  # the trail is worth less than the run: a bug in it costs the trail's lines only
            log.exception("could not write the trail of %d events", len(events))
            return
        tr.merge(lines)


def _accepted(ctx: Context, keys: list[Key]) -> dict[Key, int]:
    """The store's accepted counts of ``keys`` (duplicate or stale?); none when it cannot say."""
    try:
        with ctx.session_scope() as session:
            return repo.accepted_counts(session, keys)
    except Exception as exc:  # the trail is worth less than the run: it says "stale" and goes on
        log.warning("could not read %d accepted counts for the trail: %s", len(keys), exception_text(exc))
        return {}


def _send(ctx: Context, batches: list[DeliveryBatch], res: IngestResult, rec: metrics.Recorder) -> None:
    """A fan-out of at most PUSHSYNC_INLINE_DELIVERY_MAX pushes is sent from here, its batches
    side by side (their sends share the process's event loop); a larger one, and any batch whose
    inline send failed, goes to the push queues. Either way each batch is in the outbox already."""
    if res.devices <= ctx.settings.inline_delivery_max and batches:
        batches = delivery.deliver_side_by_side(ctx, batches, rec)
    for b in batches:
        try:
            with stage("queue"):
                ctx.publish.deliver(b)
        except TRANSIENT as exc:  # the outbox sends it again once it is overdue
            log.warning("could not queue a delivery batch (%s); the outbox has it", exc)


def _report(batch: Batch, rec: metrics.Recorder) -> None:
    res = batch.res
    for outcome, n in res.as_dict().items():
        if outcome not in ("dead_lettered", "devices", "batches"):
            rec.add("events", outcome, n=n)
    rec.add("dead_lettered", "event", n=res.dead_lettered)
    rec.add("dead_lettered", "message", n=sum(1 for d in batch.letters if d.kind == "message"))
    rec.add("skipped", "old_task", n=batch.skipped)
    log.info("ingested %d events from %d messages and %d flushes: %d notified (%d held), %d stale, "
             "%d dead-lettered, %d devices in %d batches", res.received, len(batch.taken.messages),
             len(batch.taken.flushes), res.notified, res.held, res.stale, res.dead_lettered, res.devices,
             res.batches, extra={"event_ids": [e.event_id for e in batch.events if e.event_id] or None})
