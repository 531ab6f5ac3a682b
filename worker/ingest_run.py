"""One ingest micro-batch, from its events to pushes sent or queued (the ingest task's body).

Coalescing windows are entered first (one Redis round trip, no transaction open); then one
transaction records the counts and cuts delivery batches (``worker.fanout``), which are kept in
the outbox; then, after the commit, a small fan-out is sent from this run and a larger one is
queued for the push workers.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.messages import DeliveryBatch
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import coalesce, fanout, metrics, tasks
from worker.tasks import DATA_ERRORS, runs

log = logging.getLogger("pushsync.tasks")


def windows() -> coalesce.Windows | None:
    """The coalescing windows (None when PUSHSYNC_COALESCE_WINDOW is 0)."""
    global _windows
    width = get_settings().coalesce_window
    if width <= 0:
        return None
    if _windows is None or _windows.width_ms != int(width * 1000):
        _windows = coalesce.Windows(tasks.redis_client(), width)
    return _windows


_windows: coalesce.Windows | None = None


def _valid_events(events: list) -> list[dict]:
    out = []
    for e in events:
        try:
            out.append(contract.event(e))
        except ValidationError:
            pass  # the fan-out dead-letters it, with its reason
    return out


def enter_windows(events: list) -> set:
    """Coalescing windows for a micro-batch (one Redis round trip, no transaction open): the
    keys whose events are held."""
    win = windows()
    return win.enter(_valid_events(events)) if win else set()


def fan_out(events: list, enqueued_at: float, max_events: int | None = None, held: set | None = None,
            again: set | None = None) -> fanout.IngestResult:
    """One micro-batch in the store's transaction; then its delivery batches are sent from here
    when there are at most PUSHSYNC_INLINE_DELIVERY_MAX pushes, or queued for the push workers.
    Either way they are in the outbox from that transaction on, so a crash after the commit
    loses none. Held winners are made sure of again after the commit."""
    settings = get_settings()
    max_events = settings.max_events_per_message if max_events is None else max_events
    win = windows()
    held = (enter_windows(events) if len(events) <= max_events else set()) if held is None else held
    batches: list[tuple[str, dict]] = []
    with session_scope() as session:
        result = fanout.ingest(session, events, batch_size=settings.batch_size,
                               enqueue=lambda platform, batch: batches.append((platform, batch)),
                               enqueued_at=enqueued_at, max_events=max_events,
                               redeliver_after=settings.redeliver_after, held=held if win else None,
                               again=again)
    if win and (result.held_events or result.stale_leads):
        try:
            win.stale_leads(result.stale_leads)
            win.again(result.held_events)
        except redis.RedisError as exc:  # written before the transaction already; this is the second net
            log.warning("could not re-arm %d coalescing windows: %s", len(result.held_events), exc)
    if result.devices <= settings.inline_delivery_max:
        batches = _deliver_inline(batches)
    for platform, batch in batches:
        tasks.enqueue(platform, batch)
    return result


def _deliver_inline(batches: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Send the batches from this run, side by side (one thread each: their store work is
    their own, their sends share the process's event loop); returns those that could not be
    sent, for the queues."""
    if not batches:
        return []
    recorders = [metrics.Recorder() for _ in batches]

    def one(i: int):
        platform, raw = batches[i]
        try:
            parsed = DeliveryBatch.from_json(raw)
            return parsed, tasks.deliver_now(parsed, recorders[i], quiet=True)
        except Exception as exc:  # the push workers take it from here (and the outbox behind them)
            log.warning("inline delivery of a %s batch failed (%s: %s); queued instead", platform,
                        type(exc).__name__, exc)
            return None

    if len(batches) == 1:
        done = [one(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(len(batches), 8)) as pool:
            done = list(pool.map(one, range(len(batches))))
    for rec in recorders:
        runs.recorder.merge(rec)
    for outcome in done:
        if outcome is not None:
            tasks.log_delivery(*outcome)  # here, in the run's thread: the line names the ingest task
    return [b for b, outcome in zip(batches, done, strict=True) if outcome is None]


def fan_out_one_by_one(events: list, enqueued_at: float, held: set, again: set | None = None
                       ) -> fanout.IngestResult:
    """After the store refused a micro-batch for its data: each event alone, so that only the
    ones it refuses again are dead-lettered."""
    total = fanout.IngestResult()
    for e in events:
        try:
            one = fan_out([e], enqueued_at, held=held, again=again)
        except DATA_ERRORS as exc:
            one = fanout.IngestResult(received=1, invalid=1, dead_lettered=1)
            with session_scope() as session:
                repo.add_event_dead_letters(session, [e], f"the store refused the event: {type(exc.orig).__name__}: "
                                                          f"{str(exc.orig)[:150]}")
        total.add(one)
    return total


def _looks_like_event(e: object) -> bool:
    return isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("identityPoolId", "identityId",
                                                                            "datasetName")) \
        and isinstance(e.get("syncCount"), int)


def fan_out_all(messages: list, max_events: int) -> fanout.IngestResult:
    """Messages within the limit run as one micro-batch; one over it alone (it is refused whole)."""
    within = [e for m in messages if len(m.events) <= max_events for e in m.events]
    over = [m for m in messages if len(m.events) > max_events]
    enqueued_at = min((m.enqueued_at for m in messages), default=time.time())
    again = {(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"]) for m in messages
             if m.redelivered for e in m.events if _looks_like_event(e)}
    total = fanout.IngestResult()
    parts = [(within, len(within))] if within else []
    parts += [(m.events, max_events) for m in over]
    for events, limit in parts:
        held = enter_windows(events) if len(events) <= limit else set()
        try:
            one = fan_out(events, enqueued_at, max_events=limit, held=held, again=again)
        except DATA_ERRORS as exc:
            log.warning("the store refused a micro-batch of %d events (%s); trying them one by one",
                        len(events), type(exc.orig).__name__)
            one = fan_out_one_by_one(events, enqueued_at, held, again)
        total.add(one)
    return total


