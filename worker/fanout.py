"""Ingest: change events in, delivery batches out.

validate -> coalesce per (pool, identity, dataset) -> compare-and-set the sync count (stale and
duplicate counts stop here) -> resolve subscribed devices for the whole micro-batch in one
query -> leave out each event's origin device -> group by (pool, platform) -> batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.messages import DeliveryBatch, Item, dead_letter_payload
from store import repo
from store.models import utcnow
from worker import pools

Enqueue = Callable[[str, dict], None]  # (platform, batch) -> puts the batch on its queue


@dataclass
class IngestResult:
    received: int = 0
    invalid: int = 0
    stale: int = 0
    coalesced: int = 0
    notified: int = 0
    dead_lettered: int = 0
    devices: int = 0
    batches: int = 0
    held: int = 0  # winners inside an open coalescing window: pushed when it ends
    held_events: list = field(default_factory=list)
    stale_leads: dict = field(default_factory=dict)  # key -> the store's count, for windows a stale event opened

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out.pop("held_events")
        out.pop("stale_leads")
        return out

    def add(self, other: IngestResult) -> None:
        for name, value in other.__dict__.items():
            if isinstance(value, dict):
                getattr(self, name).update(value)
            else:
                setattr(self, name, getattr(self, name) + value)


def coalesce(events: Iterable[dict]) -> tuple[list[dict], int]:
    """Keep the newest event per (pool, identity, dataset); returns (kept, number dropped)."""
    newest: dict[tuple[str, str, str], dict] = {}
    dropped = 0
    for e in events:
        key = (e["identityPoolId"], e["identityId"], e["datasetName"])
        old = newest.get(key)
        if old is None or e["syncCount"] > old["syncCount"]:
            if old is not None:
                dropped += 1
            newest[key] = e
        else:
            dropped += 1
    return list(newest.values()), dropped


def ingest(session: Session, raw_events: list, *, batch_size: int, enqueue: Enqueue,
           enqueued_at: float | None = None, max_events: int = 1000,
           redeliver_after: float | None = None, held: set | None = None,
           again: set | None = None) -> IngestResult:
    """Run one micro-batch of events inside the caller's transaction.

    Batches are enqueued before the transaction commits: if the commit then fails, the task
    runs again and the devices may get the same sync count twice, which they ignore; the
    other order could record a count as notified whose pushes were never queued. With
    ``redeliver_after``, each batch is also kept in the outbox, in this transaction, until
    deliver settles it: a batch lost on its way to a worker is sent again by the scheduler.
    Winners whose (pool, identity, dataset) is in ``held`` (an open coalescing window) have
    their counts recorded but are not pushed: they are in ``held_events``, for the window's end.
    ``again`` names (pool, identity, dataset, count) of events from redelivered messages: those
    whose count is still the last notified one are pushed again (see ``_advance``).
    """
    res = IngestResult(received=len(raw_events))
    if len(raw_events) > max_events:
        # refused whole, each event kept (in one statement): replayed one by one, none is lost
        res.invalid = res.dead_lettered = repo.add_event_dead_letters(
            session, raw_events, f"message holds {len(raw_events)} events; the limit is {max_events} per message "
                                 "(PUSHSYNC_MAX_EVENTS_PER_MESSAGE)")
        return res
    events, res.coalesced = coalesce(_valid(session, raw_events, res))
    creds = pools.credentials(session, (e["identityPoolId"] for e in events))
    winners = _advance(session, events, creds, res, again)
    res.held_events = [e for e in winners if _key(e) in (held or ())]
    if held is not None:
        # a stale event that opened a window pushed nothing: the window's flush must compare
        # with the count the devices already have, not with the stale one
        won = {_key(e) for e in winners}
        stale_leads = {_key(e) for e in events if _key(e) not in won and _key(e) not in held}
        res.stale_leads = {k: n for k, n in repo.sync_counts(session, list(stale_leads)).items() if n is not None} \
            if stale_leads else {}
    res.held = len(res.held_events)
    push(session, [e for e in winners if _key(e) not in (held or ())], creds, res, batch_size=batch_size,
         enqueue=enqueue,
         enqueued_at=enqueued_at, redeliver_after=redeliver_after)
    return res


def flush(session: Session, entries: list[dict], *, batch_size: int, enqueue: Enqueue,
          redeliver_after: float | None = None) -> IngestResult:
    """The end of coalescing windows: push each dataset's last notified count, as the store
    has it now, to its subscribed devices (less the held event's origin device)."""
    res = IngestResult()
    wanted = {_key(e): e for e in entries}
    counts = repo.sync_counts(session, list(wanted))
    # only a count above the one the window's leading push carried: nothing newer, nothing sent
    events = [{"originDeviceId": None, **e, "syncCount": counts[k]} for k, e in wanted.items()
              if counts.get(k) is not None and counts[k] > e.get("leadCount", -1)]
    res.received = res.notified = len(events)
    creds = pools.credentials(session, (e["identityPoolId"] for e in events))
    events = [e for e in events if creds[e["identityPoolId"]] is not None]
    push(session, events, creds, res, batch_size=batch_size, enqueue=enqueue, enqueued_at=None,
         redeliver_after=redeliver_after)
    return res


def _key(e: dict) -> tuple[str, str, str]:
    return (e["identityPoolId"], e["identityId"], e["datasetName"])


def push(session: Session, winners: list[dict], creds: dict, res: IngestResult, *, batch_size: int,
         enqueue: Enqueue, enqueued_at: float | None, redeliver_after: float | None) -> None:
    """Resolve the winners' devices, cut delivery batches, keep them in the outbox, queue them."""
    batches = []
    for (pool_id, platform), items in (_targets(session, winners, creds, res).items() if winners else ()):
        res.devices += len(items)
        batches.extend(DeliveryBatch(pool_id, platform, tuple(items[start:start + batch_size]), 1, enqueued_at,
                                     id=str(uuid.uuid4()) if redeliver_after is not None else None)
                       for start in range(0, len(items), batch_size))
    if redeliver_after is not None:
        repo.add_outbox(session, [(b.id, b.platform, b.to_json()) for b in batches],
                        due_at=utcnow() + timedelta(seconds=redeliver_after))
    for batch in batches:
        enqueue(batch.platform, batch.to_json())
    res.batches += len(batches)


def _valid(session: Session, raw_events: list, res: IngestResult) -> list[dict]:
    valid = []
    for raw in raw_events:
        try:
            valid.append(contract.event(raw))
        except ValidationError as exc:
            res.invalid += 1
            res.dead_lettered += 1
            repo.add_event_dead_letters(session, [raw], f"invalid event: {exc}")
    return valid


def _advance(session: Session, events: list[dict], creds: dict, res: IngestResult,
             again: set | None = None) -> list[dict]:
    """The events whose count is newer than the last notified one (one compare-and-set for the
    micro-batch); events of unknown pools or pools without credentials are dead-lettered before
    anything moves."""
    eligible = []
    for e in events:
        pool = creds[e["identityPoolId"]]
        if pool is None or not (pool.has("GCM") or pool.has("APNS")):
            res.dead_lettered += 1
            why = (f"unknown pool {e['identityPoolId']}" if pool is None
                   else pool.error or "pool has no push credentials")
            repo.add_dead_letter(session, "event", why, e, pool_id=e["identityPoolId"])
        else:
            eligible.append(e)
    won = repo.advance_sync_counts(session, [(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"])
                                             for e in eligible]) if eligible else set()
    winners = [e for e in eligible if _key(e) in won]
    if again:
        # a message given back after its worker died may have committed its counts and died
        # before its pushes went out: its counts that are still the last notified go again
        lost = [e for e in eligible if _key(e) not in won and (*_key(e), e["syncCount"]) in again]
        counts = repo.sync_counts(session, [_key(e) for e in lost]) if lost else {}
        winners += [e for e in lost if counts.get(_key(e)) == e["syncCount"]]
    res.stale += len(eligible) - len(winners)
    res.notified = len(winners)
    return winners


def _targets(session: Session, winners: list[dict], creds: dict,
             res: IngestResult) -> dict[tuple[str, str], list[Item]]:
    """(pool, platform) -> the pushes to make: one resolve for the micro-batch, less each
    event's origin device; a platform the pool has no credentials for is dead-lettered per
    device, at the count just notified, so that `dlq replay` delivers it once `pool create`
    adds them (a replay is stale only below that count)."""
    by_key = {(e["identityPoolId"], e["identityId"], e["datasetName"]): e for e in winners}
    groups: dict[tuple[str, str], list[Item]] = {}
    for pool_id, identity, dataset, device_id, platform in repo.resolve_many(session, list(by_key)):
        e = by_key[(pool_id, identity, dataset)]
        if device_id == e["originDeviceId"]:
            continue
        item = Item(device_id, identity, dataset, e["syncCount"])
        if not creds[pool_id].has(platform):
            res.dead_lettered += 1
            why = creds[pool_id].error or (f"pool has no {'FCM' if platform == 'GCM' else 'APNs'} "
                                           f"credentials for {platform} devices")
            repo.add_dead_letter(session, "delivery", why, dead_letter_payload(pool_id, platform, item),
                                 pool_id=pool_id, platform=platform)
            continue
        groups.setdefault((pool_id, platform), []).append(item)
    return groups
