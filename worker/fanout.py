"""Ingest: change events in, delivery batches out.

validate -> coalesce per (pool, identity, dataset) -> compare-and-set the sync count (stale and
duplicate counts stop here) -> resolve subscribed devices for the whole micro-batch in one
query -> leave out each event's origin device -> group by (pool, platform) -> batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from pushsync import contract
from pushsync.contract import ValidationError
from store import repo
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
    per_platform: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
           enqueued_at: float | None = None) -> IngestResult:
    """Run one micro-batch of events inside the caller's transaction.

    Batches are enqueued before the transaction commits: if the commit then fails, the task
    runs again and the devices may get the same sync count twice, which they ignore; the
    other order could record a count as notified whose pushes were never queued.
    """
    res = IngestResult(received=len(raw_events))
    valid = []
    for raw in raw_events:
        try:
            valid.append(contract.event(raw))
        except ValidationError as exc:
            res.invalid += 1
            res.dead_lettered += 1
            pool = raw.get("identityPoolId") if isinstance(raw, dict) else None
            repo.add_dead_letter(session, "event", f"invalid event: {exc}", raw if isinstance(raw, dict) else
                                 {"event": raw}, pool_id=pool if isinstance(pool, str) else None)
    events, res.coalesced = coalesce(valid)

    creds = pools.credentials(session, (e["identityPoolId"] for e in events))
    winners = []
    for e in events:
        pool = creds[e["identityPoolId"]]
        if pool is None:
            res.dead_lettered += 1
            repo.add_dead_letter(session, "event", f"unknown pool {e['identityPoolId']}", e,
                                 pool_id=e["identityPoolId"])
            continue
        if not (pool.has("GCM") or pool.has("APNS")):
            res.dead_lettered += 1
            repo.add_dead_letter(session, "event", "pool has no push credentials", e, pool_id=pool.pool_id)
            continue
        if repo.advance_sync_count(session, e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"]):
            winners.append(e)
        else:
            res.stale += 1
    res.notified = len(winners)
    if not winners:
        return res

    by_key = {(e["identityPoolId"], e["identityId"], e["datasetName"]): e for e in winners}
    groups: dict[tuple[str, str], list[list]] = {}
    missing_creds: dict[tuple[str, str, str, str], int] = {}
    for pool_id, identity, dataset, device_id, platform in repo.resolve_many(session, list(by_key)):
        e = by_key[(pool_id, identity, dataset)]
        if device_id == e["originDeviceId"]:
            continue
        if not creds[pool_id].has(platform):
            missing_creds[(pool_id, identity, dataset, platform)] = \
                missing_creds.get((pool_id, identity, dataset, platform), 0) + 1
            continue
        groups.setdefault((pool_id, platform), []).append([device_id, identity, dataset, e["syncCount"]])
    for (pool_id, identity, dataset, platform), n in missing_creds.items():
        res.dead_lettered += 1
        repo.add_dead_letter(session, "event", f"pool has no {('FCM' if platform == 'GCM' else 'APNs')} "
                             f"credentials for {n} {platform} device(s)", by_key[(pool_id, identity, dataset)],
                             pool_id=pool_id, platform=platform)
    for (pool_id, platform), items in groups.items():
        res.devices += len(items)
        res.per_platform[platform] = res.per_platform.get(platform, 0) + len(items)
        for start in range(0, len(items), batch_size):
            batch = {"pool": pool_id, "platform": platform, "items": items[start:start + batch_size], "attempt": 1}
            if enqueued_at is not None:
                batch["enqueued_at"] = enqueued_at
            enqueue(platform, batch)
            res.batches += 1
    return res
