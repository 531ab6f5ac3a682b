"""Delivery: one batch of devices of one pool and platform, sent concurrently.

At send time one query reads the tokens of the batch's devices that still belong to the
batch's pool, identity and platform, are active and are subscribed to the item's dataset,
together with the dataset's newest planned sync count. Everything else in the batch is skipped
and counted: a phone that changed user, a device of another pool named by a forged batch, a
count that a newer one has overtaken while this one waited for a retry.

Senders are kept per process (``Senders``, in the worker's context and its event loop), keyed by
pool and platform and rebuilt when the pool's credentials change, so connections and tokens are
reused across tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from pushsync import contract
from pushsync.messages import DeadLetter, DeliveryBatch, Item, MessageError, exception_text
from pushsync.settings import Settings
from store import repo
from store.models import utcnow
from store.repo import PoolCredentials, Target
from worker import budget, metrics, pacing, retry, trail
from worker.context import Context
from worker.errors import TRANSIENT
from worker.pools import PoolCache
from worker.senders.apns import POOL_CONFIG_ERRORS
from worker.senders.base import Kind, Outcome, PushRequest
from worker.stages import stage

log = logging.getLogger("pushsync.tasks")


@dataclass
class DeliveryResult:
    sent: int = 0
    skipped: int = 0  # not (or no longer) the batch's: moved, unregistered, inactive, unsubscribed
    stale: int = 0  # a newer sync count of the dataset was notified since
    deactivated: int = 0
    retried: int = 0
    dead_lettered: int = 0
    held: int = 0  # waiting in the retry set for their FCM budget slots (worker.budget)
    paced: int = 0  # waiting in the retry set for the end of their pool's window (worker.pacing)
    retry_batch: DeliveryBatch | None = None
    retry_in: float = 0.0
    # the held pushes: (batch, seconds until its slots), each in an outbox row of its own
    later: list[tuple[DeliveryBatch, float]] = dataclasses.field(default_factory=list)
    # pushes their pool's window dropped (counted in stale): (device, dataset) -> the count it sent
    covered: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        for kept in ("retry_batch", "later", "covered"):
            out.pop(kept)
        return out


def load(session: Session, batch: DeliveryBatch, pools: PoolCache
          ) -> tuple[PoolCredentials | None, dict[tuple[str, str], Target]]:
    creds = pools.credentials(session, [batch.pool])[batch.pool]
    targets = repo.delivery_targets(session, batch.pool, batch.platform, [i.key for i in batch.items])
    return creds, targets


def plan(batch: DeliveryBatch, targets: dict[tuple[str, str], Target],
         result: DeliveryResult) -> list[PushRequest]:
    """The pushes to send now: items whose device is still the batch identity's and whose count
    is not below the dataset's newest planned one. Counts the rest as skipped or stale."""
    requests = []
    for item in batch.items:
        target = targets.get(item.key)
        if target is None or target.identity_id != item.identity_id:
            result.skipped += 1
            continue
        if target.planned_count is not None and item.sync_count < target.planned_count:
            result.stale += 1
            continue
        requests.append(PushRequest(device_id=item.device_id, token=target.token, dataset=item.dataset,
                                    identity_id=item.identity_id,
                                    data=contract.push_data(batch.pool, item.identity_id, item.dataset,
                                                            item.sync_count)))
    return requests


def record(session: Session, batch: DeliveryBatch, outcomes: list[Outcome], result: DeliveryResult,
           settings: Settings) -> DeliveryResult:
    """Write what happened to each push: deactivations, dead letters, the retry batch.

    Outcomes are matched to items by (device, dataset). Only the pushes that failed with a
    temporary error are retried, in one batch that waits for the longest Retry-After among
    them and at least a jittered exponential backoff."""
    items = {item.key: item for item in batch.items}
    invalid: dict[tuple[str, datetime | None], list[str]] = defaultdict(list)
    again: list[Item] = []
    letters: list[DeadLetter] = []
    wait = 0.0
    for o in outcomes:
        item = items.get(o.key)
        if item is None:
            continue
        if o.kind is Kind.OK:
            result.sent += 1
        elif o.kind is Kind.TOKEN_INVALID:
            invalid[(o.reason, o.invalid_since)].append(o.device_id)
        elif o.kind is Kind.RETRY and batch.attempt < settings.max_attempts:
            again.append(item)
            wait = max(wait, o.retry_after or 0.0)
        else:
            hint = POOL_CONFIG_ERRORS.get(o.reason)
            letters.append(DeadLetter.delivery(
                batch.pool, batch.platform, item, "retries exhausted" if o.kind is Kind.RETRY else "permanent error",
                o.reason + (f" ({hint})" if hint else ""), attempts=batch.attempt,
                last_error=f"HTTP {o.status}" if o.status else o.reason))
    result.dead_lettered += repo.add_dead_letters(session, letters)
    for (reason, since), device_ids in invalid.items():
        result.deactivated += repo.deactivate_devices(session, device_ids, reason, not_registered_after=since)
    if again:
        result.retried = len(again)
        result.retry_batch = batch.again(again)
        result.retry_in = retry.backoff(batch.attempt, base=settings.retry_base, cap=settings.retry_cap,
                                        retry_after=wait)
    return result


def deliver(ctx: Context, batch: DeliveryBatch, rec: metrics.Recorder) -> DeliveryResult:
    """The whole of one delivery: read (one transaction), send (none open), record (one)."""
    settings = ctx.settings
    result = DeliveryResult()
    with stage("load"), ctx.session_scope() as session:
        result.dead_lettered += repo.add_dead_letters(session, [
            DeadLetter.message(bad.raw, "unreadable message", bad.reason, field="item", pool=batch.pool,
                               platform=batch.platform, attempts=batch.attempt) for bad in batch.rejected])
        creds, targets = load(session, batch, ctx.pools)
    with stage("payload"):
        requests = plan(batch, targets, result)
    outcomes: list[Outcome] = []
    unsendable = _unsendable(batch, creds, settings.max_attempts) if requests else None
    token = ""
    if requests and not unsendable:
        checked, token = pacing.within(ctx, batch, creds, requests, result)
        requests = budget.within(ctx, batch, creds, checked, result)
        going = {r.key for r in requests}  # the send order forgets those held for their budget now, the rest once sent
        pacing.over(ctx, batch, [r for r in checked if r.key not in going], token)
    if unsendable:
        why, detail = unsendable
        sending = {r.key for r in requests}
        with ctx.session_scope() as session:
            result.dead_lettered += repo.add_dead_letters(session, [
                DeadLetter.delivery(batch.pool, batch.platform, item, why, detail, attempts=batch.attempt)
                for item in batch.items if item.key in sending])
            repo.settle_outbox(session, batch.id)
        next_at = 0.0
    else:
        if requests:
            assert creds is not None  # _unsendable answered for a batch without credentials
            # inside the soft time limit: a stalled send ends as Stalled (transient), cancelled
            with stage("send_wait"):  # this thread waits; the sending loop's thread does the work
                outcomes = ctx.loop.run(ctx.senders.send(creds, batch.platform, requests),
                                        timeout=settings.send_bound)
            # (a send that stalled or raised may still be writing: its keys forget it by themselves)
            pacing.over(ctx, batch, requests, token)
            budget.lower_on_quota(ctx, batch, creds, outcomes)
        with stage("record"):
            result = _record(ctx, batch, outcomes, result)
        next_at = ctx.now() + result.retry_in
    if rec.trail.on(settings):
        with stage("record"):
            _trail(rec.trail, batch, targets, outcomes, result, next_at, unsendable, ctx.now())
    with stage("metrics"):
        metrics.record_delivery(rec, batch, result, outcomes, accepted_at=ctx.now())
    return result


def _trail(tr: trail.Trail, batch: DeliveryBatch, targets, outcomes, result, next_at, unsendable, now) -> None:
    lines = trail.Trail()
    try:
        trail.delivery(lines, batch, targets, outcomes, result, next_at, unsendable, now)
    except Exception:  # the trail is worth less than the outcomes, which are recorded already
        log.exception("could not write the trail of %d pushes", len(batch.items))
        return
    tr.merge(lines)


# The pushes are sent: their outcomes are worth waiting for the store a little (a batch whose
# outcomes are lost is sent again, every push a duplicate). Seconds between the tries.
RECORD_WAITS = (0.5, 1.0, 2.0, 4.0)


def _record(ctx: Context, batch: DeliveryBatch, outcomes: list[Outcome], before: DeliveryResult) -> DeliveryResult:
    settings = ctx.settings
    retry_published = False
    for wait in (*RECORD_WAITS, None):
        result = dataclasses.replace(before)
        try:
            with ctx.session_scope() as session:
                record(session, batch, outcomes, result, settings)
                budget.hold(ctx, session, result.later, schedule=not retry_published)
                if result.retry_batch is None:
                    repo.settle_outbox(session, batch.id)
                else:
                    # the outbox row follows the retry, due only well after the retry's own time
                    repo.reschedule_outbox(session, batch.id, result.retry_batch.to_json(), utcnow() + timedelta(
                        seconds=result.retry_in + settings.redeliver_after))
                    # queued before the outcomes commit: a failure in between re-sends, never loses
                    if not retry_published:
                        ctx.publish.retry(result.retry_batch, result.retry_in)
                retry_published = True
            return result
        except TRANSIENT as exc:
            if wait is None:
                raise
            log.warning("could not record the outcomes of %d pushes (%s); trying again in %.1f s",
                        len(outcomes), exception_text(exc), wait)
            time.sleep(wait)
    return before  # not reached: the last try returns or raises


def deliver_side_by_side(ctx: Context, batches: list[DeliveryBatch], rec: metrics.Recorder) -> list[DeliveryBatch]:
    """Batches sent from this process, side by side (one thread each: their store work is their
    own, their sends share the process's event loop); returns those that failed, for the queues."""
    recorders = [metrics.Recorder() for _ in batches]

    def one(i: int):
        try:
            return deliver(ctx, batches[i], recorders[i])
        except Exception as exc:  # the push workers take it from here (and the outbox behind them)
            log.warning("inline delivery of a %s batch failed (%s); queued instead", batches[i].platform,
                        exception_text(exc))
            return None

    if len(batches) == 1:
        done = [one(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(len(batches), 8)) as pool:
            done = list(pool.map(one, range(len(batches))))
    with stage("metrics"):
        for r in recorders:
            rec.merge(r)
        for b, result in zip(batches, done, strict=True):
            if result is not None:
                log_delivery(b, result)  # here, in the run's thread: the line names the run's task
    return [b for b, result in zip(batches, done, strict=True) if result is None]


def deliver_message(ctx: Context, raw: Any, rec: metrics.Recorder) -> DeliveryResult:
    """A delivery message as it came off its queue (untrusted): parsed, then delivered; one that
    does not parse is dead-lettered as it came."""
    try:
        with stage("read"):
            batch = DeliveryBatch.from_json(raw)
    except MessageError as exc:
        with ctx.session_scope() as session:
            repo.add_dead_letters(session, [DeadLetter.message(raw, "unreadable message", str(exc))])
        rec.add("dead_lettered", "message")
        log.warning("dead-lettered a delivery message that does not parse: %s", exc)
        return DeliveryResult(dead_lettered=1)
    result = deliver(ctx, batch, rec)
    with stage("metrics"):
        log_delivery(batch, result)
    return result


def dead_letter_batch(session: Session, batch: DeliveryBatch, cause: str, detail: str) -> int:
    """Every push of a batch that failed for good, at the counts it carried."""
    return repo.add_dead_letters(session, [DeadLetter.delivery(batch.pool, batch.platform, item, cause, detail,
                                                               attempts=batch.attempt) for item in batch.items])


def log_delivery(batch: DeliveryBatch, result: DeliveryResult) -> None:
    log.info("delivered %d of %d (attempt %d): %d retried, %d tokens invalid, %d dead-lettered, %d skipped, %d stale",
             result.sent, len(batch.items), batch.attempt, result.retried, result.deactivated,
             result.dead_lettered, result.skipped, result.stale,
             extra={"pool": batch.pool, "platform": batch.platform})


def _unsendable(batch: DeliveryBatch, creds, max_attempts: int) -> tuple[str, str] | None:
    """Why this batch's pushes (already checked at send time) are dead-lettered instead of sent."""
    if creds is None:
        return "unknown pool", batch.pool
    if not creds.has(batch.platform):
        return "no credentials", creds.error or f"the pool has no {_service(batch.platform)} credentials"
    if batch.attempt > max_attempts:  # sent again by the outbox past its tries: no run of it finished
        return "retries exhausted", f"no run of it finished in {batch.attempt - 1} attempts"
    return None


def _service(platform: str) -> str:
    return "FCM" if platform == "GCM" else "APNs"
