"""Repository functions: the only code that writes SQL against the store.

Every function takes a ``Session`` inside a transaction the caller owns (``session_scope``),
and returns plain values, never ORM objects that outlive the session.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Dataset, DeadLetter, Device, Pool, Subscription, utcnow


class NotFound(LookupError):
    """An id that the store does not know (unknown pool, unknown device)."""


# -- helpers ---------------------------------------------------------------------------------

def _insert(session: Session, model):
    """INSERT that understands ON CONFLICT on both supported dialects."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(model)


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- pools -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolCredentials:
    """What a sender needs of a pool. Lives only in worker memory, never in a message."""

    pool_id: str
    updated_at: datetime
    fcm_service_account: dict | None
    fcm_project_id: str | None
    apns_key: str | None
    apns_key_id: str | None
    apns_team_id: str | None
    apns_topic: str | None

    def has(self, platform: str) -> bool:
        if platform == "GCM":
            return self.fcm_service_account is not None
        return self.apns_key is not None


def upsert_pool(session: Session, pool_id: str, *, fcm_service_account: dict | None = None,
                apns: dict | None = None) -> bool:
    """Create the pool or update the credentials given; returns True if it was created."""
    pool = session.get(Pool, pool_id)
    created = pool is None
    if created:
        pool = Pool(id=pool_id)
        session.add(pool)
    if fcm_service_account is not None:
        pool.fcm_service_account = json.dumps(fcm_service_account)
        pool.fcm_project_id = fcm_service_account["project_id"]
    if apns is not None:
        pool.apns_key = apns["key"]
        pool.apns_key_id = apns["key_id"]
        pool.apns_team_id = apns["team_id"]
        pool.apns_topic = apns["topic"]
    pool.updated_at = utcnow()
    session.flush()
    return created


def pool_summary(session: Session, pool_id: str) -> dict:
    """The pool's settings with every secret left out (safe to print)."""
    pool = session.get(Pool, pool_id)
    if pool is None:
        raise NotFound(f"unknown pool {pool_id}")
    fcm = None
    if pool.fcm_service_account:
        account = json.loads(pool.fcm_service_account)
        fcm = {
            "project_id": pool.fcm_project_id,
            "client_email": account.get("client_email"),
            "private_key": "***",
            "token_uri": account.get("token_uri"),
        }
    apns = None
    if pool.apns_key:
        apns = {"key": "***", "key_id": pool.apns_key_id, "team_id": pool.apns_team_id,
                "topic": pool.apns_topic}
    devices = session.execute(
        select(Device.platform, Device.active, func.count()).where(Device.pool_id == pool_id)
        .group_by(Device.platform, Device.active)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for plat, active, n in devices:
        counts.setdefault(plat, {"active": 0, "inactive": 0})["active" if active else "inactive"] += n
    return {
        "identityPoolId": pool.id,
        "pushSync": {"GCM": fcm is not None, "APNS": apns is not None},
        "fcm": fcm,
        "apns": apns,
        "devices": counts,
        "createdAt": pool.created_at.isoformat(),
        "updatedAt": pool.updated_at.isoformat(),
    }


def pool_credentials(session: Session, pool_id: str) -> PoolCredentials | None:
    pool = session.get(Pool, pool_id)
    if pool is None:
        return None
    return PoolCredentials(
        pool_id=pool.id,
        updated_at=pool.updated_at,
        fcm_service_account=json.loads(pool.fcm_service_account) if pool.fcm_service_account else None,
        fcm_project_id=pool.fcm_project_id,
        apns_key=pool.apns_key,
        apns_key_id=pool.apns_key_id,
        apns_team_id=pool.apns_team_id,
        apns_topic=pool.apns_topic,
    )


def pool_versions(session: Session, pool_ids: Iterable[str]) -> dict[str, datetime]:
    rows = session.execute(select(Pool.id, Pool.updated_at).where(Pool.id.in_(list(pool_ids))))
    return dict(rows.all())


def require_pool(session: Session, pool_id: str) -> None:
    if session.get(Pool, pool_id) is None:
        raise NotFound(f"unknown pool {pool_id}")


# -- devices ---------------------------------------------------------------------------------

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
    return ids


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _existing(session: Session, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], tuple]:
    # The unique index leads with the token's hash, so "token_hash IN (...)" is an index lookup
    # on both dialects; a row-value IN over three columns is not (PostgreSQL scans the table).
    wanted = set(keys)
    found = {}
    for chunk in _chunks(sorted({token_hash(tok) for _p, _pl, tok in keys}), 500):
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
    fresh: set[tuple[str, str, str]] = set()
    now = utcnow()
    new = [
        {"id": str(uuid.uuid4()), "pool_id": p, "identity_id": i, "platform": plat, "token": tok,
         "token_hash": token_hash(tok), "active": True, "created_at": now, "updated_at": now}
        for (p, i, plat, tok), key in zip(rows, keys, strict=True) if key not in found
    ]
    if new:
        # executemany of one compiled statement (SQLAlchemy batches it as insertmanyvalues);
        # building a 500-row VALUES clause per chunk costs more in compilation than the insert.
        stmt = _insert(session, Device.__table__).on_conflict_do_nothing(
            index_elements=["token_hash", "platform", "pool_id"]).returning(
            Device.pool_id, Device.platform, Device.token, Device.id, Device.identity_id, Device.active)
        for pool_id, platform, token, dev_id, identity, active in session.execute(stmt, new):
            found[(pool_id, platform, token)] = (dev_id, identity, active)
            fresh.add((pool_id, platform, token))
        # A concurrent registrant won the rows that came back empty: read whose they are.
        lost = [(d["pool_id"], d["platform"], d["token"]) for d in new
                if (d["pool_id"], d["platform"], d["token"]) not in found]
        if lost:
            found.update(_existing(session, lost))
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
    if moved:
        for chunk in _chunks(moved, 500):
            session.execute(delete(Subscription).where(Subscription.device_id.in_(chunk)))
        for identity, dev_ids in by_identity.items():
            for chunk in _chunks(dev_ids, 500):
                session.execute(update(Device).where(Device.id.in_(chunk)).values(
                    identity_id=identity, active=True, deactivated_at=None, deactivated_reason=None,
                    updated_at=now))
    for chunk in _chunks(reactivated, 500):
        session.execute(update(Device).where(Device.id.in_(chunk)).values(
            active=True, deactivated_at=None, deactivated_reason=None, updated_at=now))
    # A registration is news even when nothing changed: APNs 410 answers say when a token
    # ended, and a device that registered after that moment must stay active.
    for chunk in _chunks(again, 500):
        session.execute(update(Device).where(Device.id.in_(chunk)).values(updated_at=now))
    return [found[key][0] for key in keys]


def device_info(session: Session, device_id: str) -> dict:
    dev = session.get(Device, device_id)
    if dev is None:
        raise NotFound(f"unknown device {device_id}")
    return {"id": dev.id, "pool_id": dev.pool_id, "identity_id": dev.identity_id,
            "platform": dev.platform, "active": dev.active}


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
    for chunk in _chunks(list(device_ids), 500):
        q = update(Device).where(Device.id.in_(chunk), Device.active.is_(True))
        if not_registered_after is not None:
            q = q.where(Device.updated_at <= not_registered_after)
        n += session.execute(q.values(active=False, deactivated_at=utcnow(),
                                      deactivated_reason=reason[:255])).rowcount
    return n


def delete_inactive_devices(session: Session, older_than: timedelta) -> int:
    """Delete devices deactivated (dead token) longer ago than ``older_than``, with their
    subscriptions. Returns how many went."""
    cutoff = utcnow() - older_than
    ids = list(session.execute(select(Device.id).where(Device.active.is_(False),
                                                       Device.deactivated_at < cutoff)).scalars())
    for chunk in _chunks(ids, 500):
        session.execute(delete(Subscription).where(Subscription.device_id.in_(chunk)))
        session.execute(delete(Device).where(Device.id.in_(chunk)))
    return len(ids)


@dataclass(frozen=True)
class Target:
    """A device as it is at send time, for one dataset it is subscribed to."""

    identity_id: str
    token: str
    last_sync_count: int | None  # the dataset's last notified count (None: never)


def delivery_targets(session: Session, pool_id: str, platform: str,
                     keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Target]:
    """(device id, dataset) -> Target, for the keys whose device, in this one query that reads
    its token, still belongs to the pool and platform, is active and is subscribed to the
    dataset. The identity and the dataset's last notified count come along so that the caller
    can skip a device that moved to another identity and a count that is stale by now."""
    out: dict[tuple[str, str], Target] = {}
    wanted = set(keys)
    for chunk in _chunks(sorted({dev for dev, _ds in wanted}), 500):
        q = (select(Device.id, Subscription.dataset_name, Device.identity_id, Device.token, Dataset.sync_count)
             .join(Subscription, Subscription.device_id == Device.id)
             .outerjoin(Dataset, and_(Dataset.pool_id == Device.pool_id, Dataset.identity_id == Device.identity_id,
                                      Dataset.dataset_name == Subscription.dataset_name))
             .where(Device.id.in_(chunk), Device.pool_id == pool_id, Device.platform == platform,
                    Device.active.is_(True)))
        for dev, dataset, identity, token, count in session.execute(q):
            if (dev, dataset) in wanted:
                out[(dev, dataset)] = Target(identity, token, count)
    return out


# -- datasets and subscriptions --------------------------------------------------------------

def _ensure_datasets(session: Session, keys: Iterable[tuple[str, str, str]]) -> None:
    now = utcnow()
    rows = [{"pool_id": p, "identity_id": i, "dataset_name": d, "sync_count": None, "updated_at": now}
            for p, i, d in set(keys)]
    if rows:
        session.execute(_insert(session, Dataset.__table__).on_conflict_do_nothing(
            index_elements=["pool_id", "identity_id", "dataset_name"]), rows)


def _device_for(session: Session, pool_id: str, identity_id: str, device_id: str) -> Device:
    dev = session.get(Device, device_id)
    if dev is None:
        raise NotFound(f"unknown device {device_id}")
    if dev.pool_id != pool_id or dev.identity_id != identity_id:
        raise NotFound(f"device {device_id} is not registered to identity {identity_id} in pool {pool_id}")
    return dev


def subscribe(session: Session, pool_id: str, identity_id: str, datasets: Sequence[str],
              device_id: str) -> int:
    """Subscribe the device to the datasets; returns how many subscriptions are new."""
    _device_for(session, pool_id, identity_id, device_id)
    return subscribe_many(session, [(pool_id, identity_id, device_id, d) for d in datasets])


def subscribe_many(session: Session, rows: Sequence[tuple[str, str, str, str]]) -> int:
    """Rows of (pool, identity, device id, dataset); the devices must belong to that identity."""
    if not rows:
        return 0
    _ensure_datasets(session, ((p, i, d) for p, i, _dev, d in rows))
    now = utcnow()
    subs = [{"device_id": dev, "dataset_name": d, "created_at": now} for _p, _i, dev, d in rows]
    stmt = _insert(session, Subscription.__table__).on_conflict_do_nothing(
        index_elements=["device_id", "dataset_name"]).returning(Subscription.device_id)
    return len(session.execute(stmt, subs).all())


def unsubscribe(session: Session, pool_id: str, identity_id: str, dataset: str, device_id: str) -> bool:
    _device_for(session, pool_id, identity_id, device_id)
    res = session.execute(delete(Subscription).where(Subscription.device_id == device_id,
                                                     Subscription.dataset_name == dataset))
    return res.rowcount > 0


def known_datasets(session: Session, pool_id: str, identity_id: str) -> list[str]:
    rows = session.execute(select(Dataset.dataset_name).where(
        Dataset.pool_id == pool_id, Dataset.identity_id == identity_id).order_by(Dataset.dataset_name))
    return list(rows.scalars())


def subscriptions_of(session: Session, device_id: str) -> list[str]:
    rows = session.execute(select(Subscription.dataset_name).where(Subscription.device_id == device_id)
                           .order_by(Subscription.dataset_name))
    return list(rows.scalars())


def resolve_statement(keys: Sequence[tuple[str, str, str]]):
    """The one query that finds who gets a push, for up to 200 (pool, identity, dataset) keys:
    active devices of those identities subscribed to those datasets. Served by
    ix_devices_pool_identity and the subscriptions primary key (device_id, dataset_name); the
    caller keeps only the rows whose (pool, identity, dataset) it asked for."""
    pairs = sorted({(p, i) for p, i, _d in keys})
    datasets = sorted({d for _p, _i, d in keys})
    # the datasets narrow the join in SQL: an identity with many subscribed datasets must not
    # cost a row per subscription for each event
    return (select(Device.pool_id, Device.identity_id, Subscription.dataset_name, Device.id, Device.platform)
            .join(Subscription, Subscription.device_id == Device.id)
            .where(tuple_(Device.pool_id, Device.identity_id).in_(pairs), Device.active.is_(True),
                   Subscription.dataset_name.in_(datasets)))


def resolve_many(session: Session, keys: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, str, str]]:
    """Set-based resolve for a micro-batch of (pool, identity, dataset) keys: one query per
    200 keys instead of one per event. Rows are (pool, identity, dataset, device id, platform);
    leaving out each event's origin device is the caller's part."""
    out = []
    for chunk in _chunks(list(keys), 200):
        wanted = set(chunk)
        out.extend(tuple(r) for r in session.execute(resolve_statement(chunk)) if (r[0], r[1], r[2]) in wanted)
    return out


def advance_sync_count(session: Session, pool_id: str, identity_id: str, dataset: str, count: int) -> bool:
    """Compare-and-set: record ``count`` as the last notified sync count if it is newer.

    True means this caller won and must notify; False means the count is stale or a
    duplicate. A single conditional UPDATE does it, so two concurrent callers with the same
    count cannot both win: the second one's WHERE no longer matches once the first commits
    (PostgreSQL re-checks the row after the lock wait; SQLite serialises writers).
    """
    _ensure_datasets(session, [(pool_id, identity_id, dataset)])
    res = session.execute(
        update(Dataset)
        .where(Dataset.pool_id == pool_id, Dataset.identity_id == identity_id,
               Dataset.dataset_name == dataset,
               or_(Dataset.sync_count.is_(None), Dataset.sync_count < count))
        .values(sync_count=count, updated_at=utcnow())
    )
    return res.rowcount == 1


def last_sync_count(session: Session, pool_id: str, identity_id: str, dataset: str) -> int | None:
    return session.execute(select(Dataset.sync_count).where(
        Dataset.pool_id == pool_id, Dataset.identity_id == identity_id,
        Dataset.dataset_name == dataset)).scalar_one_or_none()


# -- dead letters ----------------------------------------------------------------------------

def _clean(text: str | None, limit: int) -> str | None:
    # what reaches a dead letter came from outside: no NUL (PostgreSQL text refuses it) and a
    # bounded length, so that writing the dead letter cannot fail on what it records
    return None if text is None else str(text).replace("\x00", "\\x00")[:limit]


def add_dead_letter(session: Session, kind: str, reason: str, payload: dict, *, last_error: str | None = None,
                    pool_id: str | None = None, platform: str | None = None, attempts: int = 1) -> int:
    from pushsync import contract

    try:
        pool_id = contract.pool_id(pool_id)
    except ValueError:
        pool_id = None  # only a well-formed id goes in the column; the payload keeps what came
    dl = DeadLetter(kind=kind, reason=_clean(reason, 255), last_error=_clean(last_error, 2000),
                    payload=json.dumps(payload, default=repr), pool_id=pool_id,
                    platform=platform if platform in ("GCM", "APNS", "APNS_SANDBOX") else None,
                    attempts=max(1, min(int(attempts), 1_000_000)))
    session.add(dl)
    session.flush()
    return dl.id


def list_dead_letters(session: Session, limit: int = 1000) -> list[dict]:
    rows = session.execute(select(DeadLetter).order_by(DeadLetter.id).limit(limit)).scalars()
    return [{"id": d.id, "kind": d.kind, "reason": d.reason, "last_error": d.last_error,
             "pool_id": d.pool_id, "platform": d.platform, "attempts": d.attempts,
             "payload": json.loads(d.payload), "created_at": d.created_at.isoformat(),
             "updated_at": d.updated_at.isoformat()} for d in rows]


def dead_letters_by_id(session: Session, ids: Sequence[int] | None, after_id: int = 0,
                       limit: int = 1000) -> list[dict]:
    """Dead letters with the given ids (all of them when ``ids`` is None), in id order, paged."""
    q = select(DeadLetter).where(DeadLetter.id > after_id).order_by(DeadLetter.id).limit(limit)
    if ids is not None:
        q = q.where(DeadLetter.id.in_(list(ids)))
    return [{"id": d.id, "kind": d.kind, "payload": json.loads(d.payload), "pool_id": d.pool_id,
             "platform": d.platform} for d in session.execute(q).scalars()]


def delete_dead_letters(session: Session, ids: Sequence[int]) -> int:
    n = 0
    for chunk in _chunks(list(ids), 500):
        n += session.execute(delete(DeadLetter).where(DeadLetter.id.in_(chunk))).rowcount
    return n


def count_dead_letters(session: Session) -> int:
    return session.execute(select(func.count()).select_from(DeadLetter)).scalar_one()


def purge_dead_letters(session: Session, older_than: timedelta | None = None) -> int:
    q = delete(DeadLetter)
    if older_than is not None:
        q = q.where(DeadLetter.created_at < utcnow() - older_than)
    return session.execute(q).rowcount
