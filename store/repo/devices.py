"""Devices: registration (one device per token, platform and pool), deactivation, and what
delivery reads at send time."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.orm import Session

from store.models import Dataset, Device, Subscription, utcnow
from store.repo.common import NotFound, chunks, insert_for, rowcount
from store.repo.subscriptions import check_identity_limits, subscribe_many


def register_device(session: Session, pool_id: str, identity_id: str, platform: str, token: str) -> str:
    """Register (pool, platform, token) for an identity and return the device id.

    The same token again returns the same id. Under another identity the device moves there
    and loses the subscriptions it had: a phone that changed user must stop getting the old
    user's pushes. Safe under concurrent callers: the unique key decides who inserts.
    """
    ids = register_devices(session, [(pool_id, identity_id, platform, token)])
    return ids[0]


def register_devices(session: Session, rows: Sequence[tuple[str, str, str, str]]) -> list[str]:
    """Bulk form of ``register_device`` for rows of (pool, identity, platform, token); the
    device ids come back in row order."""
    return import_devices(session, [(*row, ()) for row in rows])


def import_devices(session: Session, rows: Sequence[tuple[str, str, str, str, Sequence[str]]]) -> list[str]:
    """Register rows of (pool, identity, platform, token, datasets) and subscribe each device
    to its datasets, with the outcome of registering the rows one after another: where a
    (pool, platform, token) comes back, the rows are split there, so that a later row that
    moves the device to another identity also drops what the earlier row subscribed."""
    out: list[str] = []
    start = 0
    seen: set[tuple[str, str, str]] = set()
    for i, (pool_id, _identity, platform, token, _ds) in enumerate(rows):
        key = (pool_id, platform, token)
        if key in seen:
            out.extend(_import_run(session, rows[start:i]))
            start, seen = i, set()
        seen.add(key)
    out.extend(_import_run(session, rows[start:]))
    return out


def _import_run(session: Session, rows: Sequence[tuple[str, str, str, str, Sequence[str]]]) -> list[str]:
    ids = _register_unique(session, [row[:4] for row in rows])
    subscribe_many(session, [(p, i, dev, d) for (p, i, _pl, _t, ds), dev in zip(rows, ids, strict=True)
                             for d in ds])
    check_identity_limits(session, {(p, i) for p, i, *_rest in rows})
    return ids


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _existing(session: Session, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], tuple]:
    # The unique index leads with the token's hash, so "token_hash IN (...)" is an index lookup
    # on both dialects; a row-value IN over three columns is not (PostgreSQL scans the table).
    wanted = set(keys)
    found = {}
    for chunk in chunks(sorted({token_hash(tok) for _p, _pl, tok in keys}), 500):
        q = select(Device.pool_id, Device.platform, Device.token, Device.id, Device.identity_id,
                   Device.active).where(Device.token_hash.in_(chunk))
        for pool_id, platform, token, dev_id, identity, active in session.execute(q):
            if (pool_id, platform, token) in wanted:
                found[(pool_id, platform, token)] = (dev_id, identity, active)
    return found


def _register_unique(session: Session, rows: Sequence[tuple[str, str, str, str]]) -> list[str]:
    if not rows:
        return []
    keys = [(p, plat, tok) for p, _i, plat, tok in rows]
    found = _existing(session, keys)
    now = utcnow()
    fresh = _insert_new(session, [(row, key) for row, key in zip(rows, keys, strict=True) if key not in found],
                        found, now)
    _update_known(session, rows, keys, found, fresh, now)
    return [found[key][0] for key in keys]


def _insert_new(session: Session, rows_keys: list, found: dict, now: datetime) -> set[tuple[str, str, str]]:
    """Insert the devices the store does not have; ``found`` learns their ids. Returns the keys
    this call inserted (a concurrent registrant may have won some: those are read back)."""
    if not rows_keys:
        return set()
    new = [{"id": str(uuid.uuid4()), "pool_id": p, "identity_id": i, "platform": plat, "token": tok,
            "token_hash": token_hash(tok), "active": True, "created_at": now, "updated_at": now}
           for (p, i, plat, tok), _key in rows_keys]
    # executemany of one compiled statement (SQLAlchemy batches it as insertmanyvalues);
    # building a 500-row VALUES clause per chunk costs more in compilation than the insert.
    stmt = insert_for(session, Device.__table__).on_conflict_do_nothing(
        index_elements=["token_hash", "platform", "pool_id"]).returning(
        Device.pool_id, Device.platform, Device.token, Device.id, Device.identity_id, Device.active)
    fresh = set()
    for pool_id, platform, token, dev_id, identity, active in session.execute(stmt, new):
        found[(pool_id, platform, token)] = (dev_id, identity, active)
        fresh.add((pool_id, platform, token))
    lost = [key for _row, key in rows_keys if key not in found]
    if lost:
        found.update(_existing(session, lost))
    return fresh


def _update_known(session: Session, rows, keys, found: dict, fresh: set, now: datetime) -> None:
    """Devices that were there already: move them to their new identity (dropping the old
    identity's subscriptions), reactivate them, or just note that they registered again."""
    moved: list[str] = []
    reactivated: list[str] = []
    again: list[str] = []
    by_identity: dict[str, list[str]] = {}
    for (_p, identity, _plat, _tok), key in zip(rows, keys, strict=True):
        dev_id, old_identity, active = found[key]
        if old_identity != identity:
            moved.append(dev_id)
            by_identity.setdefault(identity, []).append(dev_id)
        elif not active:
            reactivated.append(dev_id)
        elif key not in fresh:
            again.append(dev_id)
    for chunk in chunks(moved, 500):
        session.execute(delete(Subscription).where(Subscription.device_id.in_(chunk)))
    for identity, dev_ids in by_identity.items():
        for chunk in chunks(dev_ids, 500):
            session.execute(update(Device).where(Device.id.in_(chunk)).values(
                identity_id=identity, active=True, deactivated_at=None, deactivated_reason=None, updated_at=now))
    for chunk in chunks(reactivated, 500):
        session.execute(update(Device).where(Device.id.in_(chunk)).values(
            active=True, deactivated_at=None, deactivated_reason=None, updated_at=now))
    # A registration is news even when nothing changed: APNs 410 answers say when a token
    # ended, and a device that registered after that moment must stay active.
    for chunk in chunks(again, 500):
        session.execute(update(Device).where(Device.id.in_(chunk)).values(updated_at=now))


def unregister_device(session: Session, device_id: str) -> None:
    if session.get(Device, device_id) is None:
        raise NotFound(f"unknown device {device_id}")
    session.execute(delete(Subscription).where(Subscription.device_id == device_id))
    session.execute(delete(Device).where(Device.id == device_id))


def deactivate_devices(session: Session, device_ids: Sequence[str], reason: str,
                       not_registered_after: datetime | None = None) -> int:
    """Mark devices inactive (their token is dead). With ``not_registered_after``, a device
    that registered again after that moment keeps its active flag (APNs 410 timestamps)."""
    n = 0
    for chunk in chunks(list(device_ids), 500):
        q = update(Device).where(Device.id.in_(chunk), Device.active.is_(True))
        if not_registered_after is not None:
            q = q.where(Device.updated_at <= not_registered_after)
        n += rowcount(session.execute(q.values(active=False, deactivated_at=utcnow(),
                                               deactivated_reason=reason[:255])))
    return n


def delete_inactive_devices(session: Session, older_than: timedelta) -> int:
    """Delete devices deactivated (dead token) longer ago than ``older_than``, with their
    subscriptions. Returns how many went."""
    cutoff = utcnow() - older_than
    ids = list(session.execute(select(Device.id).where(Device.active.is_(False),
                                                       Device.deactivated_at < cutoff)).scalars())
    for chunk in chunks(ids, 500):
        session.execute(delete(Subscription).where(Subscription.device_id.in_(chunk)))
        session.execute(delete(Device).where(Device.id.in_(chunk)))
    return len(ids)


@dataclass(frozen=True)
class Target:
    """A device as it is at send time, for one dataset it is subscribed to."""

    identity_id: str
    token: str
    planned_count: int | None  # the newest count of the dataset whose pushes were planned (None: none)


def delivery_targets(session: Session, pool_id: str, platform: str,
                     keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Target]:
    """(device id, dataset) -> Target, for the keys whose device, in this one query that reads
    its token, still belongs to the pool and platform, is active and is subscribed to the
    dataset. The identity and the dataset's newest planned count come along so that the caller
    can skip a device that moved to another identity and a count that a newer one overtook."""
    out: dict[tuple[str, str], Target] = {}
    wanted = set(keys)
    for chunk in chunks(sorted({dev for dev, _ds in wanted}), 500):
        q = (select(Device.id, Subscription.dataset_name, Device.identity_id, Device.token, Dataset.planned_count)
             .join(Subscription, Subscription.device_id == Device.id)
             .outerjoin(Dataset, and_(Dataset.pool_id == Device.pool_id, Dataset.identity_id == Device.identity_id,
                                      Dataset.dataset_name == Subscription.dataset_name))
             .where(Device.id.in_(chunk), Device.pool_id == pool_id, Device.platform == platform,
                    Device.active.is_(True)))
        for dev, dataset, identity, token, count in session.execute(q):
            if (dev, dataset) in wanted:
                out[(dev, dataset)] = Target(identity, token, count)
    return out
