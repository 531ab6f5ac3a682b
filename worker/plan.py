"""The store's part of a micro-batch, in the caller's transaction: events and due flushes in,
delivery batches (kept in the outbox) out.

events of unknown pools or pools without credentials -> dead letters; the newest event per key
-> ``accept`` (stale and duplicate counts stop here: they change nothing) -> ``plan`` the leading
edges and the flushes (whatever is accepted and not yet planned) -> resolve the subscribed devices
of the planned keys in one query, less each count's origin device -> batches per (pool, platform)
-> the outbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, fields
from datetime import timedelta

from sqlalchemy.orm import Session

from pushsync.contract import ChangeEvent, Key
from pushsync.messages import DeadLetter, DeliveryBatch, Item
from store import repo
from store.models import utcnow
from store.repo import PoolCredentials

Credentials = Callable[[Session, Iterable[str]], dict[str, PoolCredentials | None]]


@dataclass
class IngestResult:
    """What became of a micro-batch's events; each name is an ``outcome`` of pushsync_events_total."""

    received: int = 0
    invalid: int = 0  # failed validation: dead-lettered
    coalesced: int = 0  # a newer event of the same key in the same micro-batch won
    stale: int = 0  # not above the count accepted already (a duplicate, a late arrival)
    notified: int = 0  # accepted: the key's newest count now
    held: int = 0  # accepted inside an open window: its flush pushes it
    window_flushed: int = 0  # keys whose flush planned a count
    dead_lettered: int = 0  # events dead-lettered (invalid included)
    devices: int = 0
    batches: int = 0

    def add(self, other: IngestResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _newest(events: list[ChangeEvent], res: IngestResult) -> list[ChangeEvent]:
    """The newest event per key (the first of equal counts: its origin goes with the count)."""
    newest: dict[Key, ChangeEvent] = {}
    for e in events:
        old = newest.get(e.key)
        if old is None or e.sync_count > old.sync_count:
            newest[e.key] = e
    res.coalesced += len(events) - len(newest)
    return list(newest.values())


def _eligible(events: list[ChangeEvent], creds: dict, letters: list[DeadLetter],
              res: IngestResult) -> list[ChangeEvent]:
    out = []
    for e in events:
        pool = creds.get(e.pool)
        if pool is None:
            letters.append(DeadLetter.event(e, "unknown pool", e.pool))
        elif not (pool.has("GCM") or pool.has("APNS")):
            letters.append(DeadLetter.event(e, "no credentials", pool.error or "the pool has no push credentials"))
        else:
            out.append(e)
    res.dead_lettered += len(events) - len(out)
    return out


def micro_batch(session: Session, events: list[ChangeEvent], *, held: set[Key], flushes: set[Key],
                credentials: Credentials, batch_size: int, redeliver_after: float, enqueued_at: float | None,
                res: IngestResult, letters: list[DeadLetter], again: Set[ChangeEvent] = frozenset(),
                seen: dict | None = None) -> list[DeliveryBatch]:
    """One micro-batch: the events' keys not in ``held`` are leading edges, ``flushes`` the keys
    whose window ended. ``again`` are events of messages whose run died: one whose count is still
    the key's planned one is pushed again (that run may have died between its commit and its
    sends; a device ignores a count it has). Dead letters for the events refused go to
    ``letters`` (the caller writes them in this transaction). Returns the delivery batches, already
    in the outbox. ``seen`` (for ``worker.trail``) gets the keys that moved and those planned."""
    creds = credentials(session, {e.pool for e in events} | {k.pool for k in flushes})
    eligible = _newest(_eligible(events, creds, letters, res), res)
    flushes = {k for k in flushes if creds.get(k.pool) is not None}
    leading = {e.key for e in eligible} - held
    moved = repo.accept(session, eligible, lock=flushes, lead=leading)
    res.notified += len(moved)
    res.stale += len(eligible) - len(moved)
    planned = {k: moved[k] for k in leading if k in moved}  # planned by accept itself
    # what else may wait: a leading key whose own count was stale, the flushes
    planned.update(repo.plan(session, (leading - planned.keys()) | flushes))
    res.held += len(moved.keys() - planned.keys())
    res.window_flushed += len(planned.keys() - leading)
    resend = {e.key: e.sync_count for e in eligible if e in again and e.key not in planned and e.key not in moved}
    if resend:
        planned.update(repo.still_planned(session, resend))
    if seen is not None:
        seen.setdefault("moved", {}).update(moved)
        seen.setdefault("planned", {}).update(planned)
    return _batches(session, planned, creds, res, letters, batch_size=batch_size, redeliver_after=redeliver_after,
                    enqueued_at=enqueued_at)


def _batches(session: Session, planned: dict[Key, tuple[int, str | None]], creds: dict, res: IngestResult,
             letters: list[DeadLetter], *, batch_size: int, redeliver_after: float,
             enqueued_at: float | None) -> list[DeliveryBatch]:
    """Resolve the planned keys' devices, cut delivery batches, keep them in the outbox. A platform
    the pool has no credentials for is dead-lettered per device, at the count planned, so that `dlq
    replay` delivers it once `pool create` adds them (a replay is stale only below that count)."""
    groups: dict[tuple[str, str], list[Item]] = {}
    for pool_id, identity, dataset, device_id, platform in (repo.resolve_many(session, list(planned))
                                                            if planned else ()):
        count, origin = planned[Key(pool_id, identity, dataset)]
        if device_id == origin:
            continue
        item = Item(device_id, identity, dataset, count)
        pool = creds[pool_id]
        if not pool.has(platform):
            letters.append(DeadLetter.delivery(
                pool_id, platform, item, "no credentials",
                pool.error or f"the pool has no {'FCM' if platform == 'GCM' else 'APNs'} credentials for "
                              f"{platform} devices"))
            continue
        groups.setdefault((pool_id, platform), []).append(item)
    batches = [DeliveryBatch(pool_id, platform, tuple(items[start:start + batch_size]), 1, enqueued_at,
                             id=str(uuid.uuid4()))
               for (pool_id, platform), items in groups.items() for start in range(0, len(items), batch_size)]
    res.devices += sum(len(items) for items in groups.values())
    res.batches += len(batches)
    if batches:
        rows = []
        for b in batches:
            assert b.id is not None  # each was cut with an id of its own just above
            rows.append((b.id, b.platform, b.to_json()))
        repo.add_outbox(session, rows, due_at=utcnow() + timedelta(seconds=redeliver_after))
    return batches
