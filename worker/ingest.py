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
from dataclasses import dataclass, field

import redis

from pushsync import contract
from pushsync.contract import ChangeEvent, Key, ValidationError
from pushsync.messages import DeadLetter, DeliveryBatch, exception_text
from pushsync.queues import EVENTS_QUEUE, RUNS_QUEUE
from store import repo
from worker import delivery, envelope, metrics, plan
from worker.context import Context
from worker.envelope import Message, Unreadable, read
from worker.errors import DATA_ERRORS, TRANSIENT
from worker.intake import MAX_ABANDONS, InFlight, Taken
from worker.plan import IngestResult

log = logging.getLogger("pushsync.tasks")

FLUSHES_PER_RUN = 500
# Tasks an older pushsync sent to ``events``; skipped (counted) rather than dead-lettered.
OLD_TASKS = ("pushsync.flush_windows", "pushsync.prune_devices", "pushsync.trim_dead_letters",
             "pushsync.record_queue_depths")
RAW_PARSE_MAX = 1 << 20  # a message whose runs keep dying is read for its events only below this size


@dataclass
class Batch:
    """What a take turned into: the events (typed), which message each came from, the flushes,
    and the dead letters so far."""

    taken: Taken
    messages: list[Message] = field(default_factory=list)
    events: list[ChangeEvent] = field(default_factory=list)
    flushes: set[Key] = field(default_factory=set)
    letters: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0
    res: IngestResult = field(default_factory=IngestResult)
    again: set[ChangeEvent] = field(default_factory=set)  # events of messages whose run died

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.taken.messages]


def run(ctx: Context, rec: metrics.Recorder) -> IngestResult:
    try:
        taken, readings = _take(ctx)
    except redis.RedisError as exc:  # nothing was taken: the dispatcher starts a run again later
        log.warning("could not take ingest messages: %s", exc)
        return IngestResult()
    if taken.more:
        ctx.publish.trigger()  # more waits: another process may take it while this one works
    if not taken.messages and not taken.flushes:
        return IngestResult()
    batch = _read(ctx, taken, readings)
    try:
        held = _windows(ctx, batch)
        batches = _commit(ctx, batch, set(held))
    except TRANSIENT as exc:
        _defer(ctx, batch, exc)
        return batch.res
    _send(ctx, batches, batch.res, rec)
    try:
        ctx.intake.ack(batch.ids, taken.lease, taken.flushes,
                       again={k.text().encode(): end for k, end in held.items()})
    except redis.RedisError as exc:  # their leases run out and they are taken again: duplicates, no loss
        log.warning("could not acknowledge %d ingest messages: %s", len(batch.ids), exc)
    _report(batch, rec)
    return batch.res


def run_handed(ctx: Context, args: object, kwargs: object, rec: metrics.Recorder) -> IngestResult:
    """An ingest message that Celery's own consumer handed over: a worker made to consume
    ``events`` itself (`add_consumer events`, or `celery worker -Q events` without pushsync's
    start-up), which takes messages with BRPOP and can lose one when Redis dies. Run here rather
    than discarded as an unregistered task; a transient failure raises, for Celery's retry."""
    log.warning("Celery's consumer handed this worker an ingest message: consume %s instead of %s "
                "(pushsync worker -Q does that)", RUNS_QUEUE, EVENTS_QUEUE)
    taken = Taken([InFlight("handed", b"", 0, 0)])
    batch = _read(ctx, taken, {"handed": envelope.from_arguments("handed", args, kwargs, ctx.clock())})
    held = _windows(ctx, batch)
    _send(ctx, _commit(ctx, batch, set(held)), batch.res, rec)
    _report(batch, rec)
    return batch.res


def _windows(ctx: Context, batch: Batch) -> dict[Key, int]:
    width = ctx.settings.coalesce_window
    return ctx.windows.enter({e.key: width for e in batch.events}, ctx.clock()) if width > 0 and batch.events else {}


def _take(ctx: Context) -> tuple[Taken, dict[str, Message | Unreadable | None]]:
    """Messages until the run holds about PUSHSYNC_INGEST_BATCH_MAX events, and the due flushes;
    each message read once."""
    taken = ctx.intake.take(ctx.settings.ingest_batch_max, FLUSHES_PER_RUN)
    return taken, {t.id: _reading(ctx, t) for t in taken.messages}


def _reading(ctx: Context, t) -> Message | Unreadable | None:
    """The message read; None for one whose runs kept dying and that is too large to read again."""
    if t.abandons >= MAX_ABANDONS and len(t.raw) > RAW_PARSE_MAX:
        return None
    return read(t, ctx.clock())


def _read(ctx: Context, taken: Taken, readings: dict) -> Batch:
    batch = Batch(taken)
    limit = ctx.settings.max_events_per_message
    for t in taken.messages:
        m = readings[t.id]
        if m is None:
            batch.letters.append(DeadLetter.message(t.raw, "run never finished", _abandoned(t.abandons)))
            continue
        if isinstance(m, Unreadable):
            if m.task in OLD_TASKS:
                batch.skipped += 1
            else:
                batch.letters.append(DeadLetter.message(m.raw, m.cause, m.why))
            continue
        batch.res.received += len(m.events)
        if t.abandons >= MAX_ABANDONS:
            batch.letters += [DeadLetter.event(e, "run never finished", _abandoned(t.abandons)) for e in m.events]
            batch.res.dead_lettered += len(m.events)
        elif len(m.events) > limit:
            # refused whole, each event kept: replayed one by one, none is lost
            batch.letters += [DeadLetter.event(e, "too many events", f"the message holds {len(m.events)} events; "
                                                  f"the limit is {limit} (PUSHSYNC_MAX_EVENTS_PER_MESSAGE)")
                              for e in m.events]
            batch.res.invalid += len(m.events)
            batch.res.dead_lettered += len(m.events)
        else:
            batch.messages.append(m)
            for raw in m.events:
                try:
                    batch.events.append(contract.event(raw))
                    if t.abandons:
                        batch.again.add(batch.events[-1])
                except ValidationError as exc:
                    batch.letters.append(DeadLetter.event(raw, "invalid event", str(exc)))
                    batch.res.invalid += 1
                    batch.res.dead_lettered += 1
    for member in taken.flushes:
        try:
            batch.flushes.add(Key.from_text(member))
        except ValueError as exc:  # not a member pushsync writes: kept to be read, and gone from the set
            batch.letters.append(DeadLetter.message(member, "unreadable message", f"flush set: {exc}",
                                                    field="flush_member"))
    return batch


def _abandoned(n: int) -> str:
    return f"taken by {n} runs that never finished (killed: out of memory, or past the time limit)"


def _commit(ctx: Context, batch: Batch, held: set[Key]) -> list[DeliveryBatch]:
    """The transaction; when the store refuses the data, the events again one by one."""
    enqueued = min((m.enqueued_at for m in batch.messages), default=None)
    try:
        with ctx.session_scope() as session:
            out = _plan(ctx, session, batch.events, held, batch.flushes, enqueued, batch.res, batch.letters,
                        batch.again)
            repo.add_dead_letters(session, batch.letters)
        return out
    except TRANSIENT:
        raise
    except DATA_ERRORS as exc:
        log.warning("the store refused a micro-batch of %d events (%s); trying them one by one",
                    len(batch.events), type(getattr(exc, "orig", exc)).__name__)
        return _one_by_one(ctx, batch, held, enqueued)
    except Exception as exc:  # a bug or a value nothing foresaw: keep the events, acknowledge the messages
        log.exception("ingest run failed; dead-lettering its %d events", len(batch.events))
        _replace_result(batch)
        letters = batch.letters + [DeadLetter.event(e, "failed", f"{exception_text(exc)} in an ingest run")
                                   for e in batch.events]
        with ctx.session_scope() as session:
            repo.add_dead_letters(session, letters)
        batch.res.dead_lettered += len(batch.events)
        return []


def _replace_result(batch: Batch) -> None:
    """A failed attempt's counts are void: start again from what reading the messages found."""
    res = batch.res
    kept = IngestResult(received=res.received, invalid=res.invalid, dead_lettered=res.invalid)
    batch.res = kept


def _plan(ctx: Context, session, events, held, flushes, enqueued, res, letters, again=frozenset()
          ) -> list[DeliveryBatch]:
    s = ctx.settings
    return plan.micro_batch(session, events, held=held, flushes=flushes, credentials=ctx.pools.credentials,
                            batch_size=s.batch_size, redeliver_after=s.redeliver_after, enqueued_at=enqueued,
                            res=res, letters=letters, again=again)


def _one_by_one(ctx: Context, batch: Batch, held: set[Key], enqueued) -> list[DeliveryBatch]:
    _replace_result(batch)
    with ctx.session_scope() as session:
        repo.add_dead_letters(session, batch.letters)
    out: list[DeliveryBatch] = []
    parts = [([e], set()) for e in batch.events] + ([([], batch.flushes)] if batch.flushes else [])
    for events, flushes in parts:
        letters: list[DeadLetter] = []
        one = IngestResult()
        try:
            with ctx.session_scope() as session:
                out += _plan(ctx, session, events, held, flushes, enqueued, one, letters, batch.again)
                repo.add_dead_letters(session, letters)
        except DATA_ERRORS as exc:
            orig = getattr(exc, "orig", exc)
            one = IngestResult(dead_lettered=len(events), invalid=len(events))
            with ctx.session_scope() as session:
                repo.add_dead_letters(session, [DeadLetter.event(e, "refused by the store", exception_text(orig))
                                                for e in events])
            if flushes:
                log.error("the store refused the flush of %d keys (%s); the sweep will try them again",
                          len(flushes), exception_text(orig))
        batch.res.add(one)
    return out


def _defer(ctx: Context, batch: Batch, exc: Exception) -> None:
    """The store or Redis out of reach: every message due again after a jittered backoff, or, out
    of tries, its events dead-lettered; flushes due again in a second. When even the dead letters
    cannot be written, those messages wait the longest backoff and try again."""
    tries, cap = ctx.settings.ingest_tries, ctx.settings.ingest_retry_cap
    waits = {m.id: random.uniform(0, min(cap, 2 ** m.attempts)) for m in batch.taken.messages}
    spent = [m for m in batch.messages if m.attempts + 1 >= tries]
    if spent:
        why = f"{tries} tries: {exception_text(exc)}"
        try:
            with ctx.session_scope() as session:
                repo.add_dead_letters(session, [DeadLetter.event(e, "out of tries", why, attempts=tries)
                                                for m in spent for e in m.events])
            for m in spent:
                waits.pop(m.id)
            ctx.intake.ack([m.id for m in spent])
        except (*TRANSIENT, redis.RedisError) as again:
            log.warning("could not dead-letter %d messages out of tries (%s): they wait and try again",
                        len(spent), again)
            waits.update({m.id: cap for m in spent})
    try:
        ctx.intake.defer(waits, batch.taken.lease, {f: 1.0 for f in batch.taken.flushes})
    except redis.RedisError as again:  # their leases run out and they come back then
        log.warning("could not defer %d ingest messages (%s)", len(waits), again)
    log.warning("%s: %d ingest messages and %d flushes go again later, %d dead-lettered", exception_text(exc),
                len(waits), len(batch.taken.flushes), len(batch.taken.messages) - len(waits))


def _send(ctx: Context, batches: list[DeliveryBatch], res: IngestResult, rec: metrics.Recorder) -> None:
    """A fan-out of at most PUSHSYNC_INLINE_DELIVERY_MAX pushes is sent from here, its batches
    side by side (their sends share the process's event loop); a larger one, and any batch whose
    inline send failed, goes to the push queues. Either way each batch is in the outbox already."""
    if res.devices <= ctx.settings.inline_delivery_max and batches:
        batches = delivery.deliver_side_by_side(ctx, batches, rec)
    for b in batches:
        try:
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
