"""Datasets, subscriptions and who gets a push (resolve)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import case, delete, func, select, tuple_
from sqlalchemy.orm import Session

from store.models import Dataset, Device, Subscription, utcnow
from store.repo.common import NotFound, chunks, insert_for, rowcount


def _ensure_datasets(session: Session, keys: Iterable[tuple[str, str, str]]) -> None:
    now = utcnow()
    rows = [{"pool_id": p, "identity_id": i, "dataset_name": d, "sync_count": None, "updated_at": now}
            for p, i, d in set(keys)]
    if rows:
        session.execute(insert_for(session, Dataset.__table__).on_conflict_do_nothing(
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
    new = subscribe_many(session, [(pool_id, identity_id, device_id, d) for d in datasets])
    if new:
        check_identity_limits(session, [(pool_id, identity_id)])
    return new


def subscribe_many(session: Session, rows: Sequence[tuple[str, str, str, str]]) -> int:
    """Rows of (pool, identity, device id, dataset); the devices must belong to that identity."""
    if not rows:
        return 0
    _ensure_datasets(session, ((p, i, d) for p, i, _dev, d in rows))
    now = utcnow()
    subs = [{"device_id": dev, "dataset_name": d, "created_at": now} for _p, _i, dev, d in rows]
    stmt = insert_for(session, Subscription.__table__).on_conflict_do_nothing(
        index_elements=["device_id", "dataset_name"]).returning(Subscription.device_id)
    return len(session.execute(stmt, subs).all())


def check_identity_limits(session: Session, pairs: Iterable[tuple[str, str]],
                          max_devices: int | None = None, max_datasets: int | None = None) -> None:
    """Raise ``LimitExceeded`` if one of the (pool, identity) pairs has more active devices or
    more distinct subscribed datasets than allowed. Called after the writes, inside their
    transaction, so that a refused registration rolls back whole."""
    from pushsync.contract import LimitExceeded
    from pushsync.settings import get_settings

    settings = get_settings()
    max_devices = settings.max_devices_per_identity if max_devices is None else max_devices
    max_datasets = settings.max_datasets_per_identity if max_datasets is None else max_datasets
    by_pool: dict[str, set[str]] = {}
    for pool_id, identity in pairs:
        by_pool.setdefault(pool_id, set()).add(identity)
    # one statement per pool and 500 identities, both counts at once (served by ix_devices_pool_identity)
    n_devices = func.count(case((Device.active.is_(True), Device.id)).distinct())
    n_datasets = func.count(Subscription.dataset_name.distinct())
    for pool_id, identities in sorted(by_pool.items()):
        for chunk in chunks(sorted(identities), 500):
            q = (select(Device.identity_id, n_devices, n_datasets)
                 .outerjoin(Subscription, Subscription.device_id == Device.id)
                 .where(Device.pool_id == pool_id, Device.identity_id.in_(chunk))
                 .group_by(Device.identity_id))
            for identity, devices, datasets in session.execute(q):
                if devices > max_devices:
                    raise LimitExceeded("identityId", f"identity {identity} of pool {pool_id} would have {devices} "
                                                      f"devices; the limit is {max_devices} "
                                                      "(PUSHSYNC_MAX_DEVICES_PER_IDENTITY)")
                if datasets > max_datasets:
                    raise LimitExceeded("datasetName", f"identity {identity} of pool {pool_id} would subscribe to "
                                                       f"{datasets} datasets; the limit is {max_datasets} "
                                                       "(PUSHSYNC_MAX_DATASETS_PER_IDENTITY)")


def unsubscribe(session: Session, pool_id: str, identity_id: str, dataset: str, device_id: str) -> bool:
    _device_for(session, pool_id, identity_id, device_id)
    res = session.execute(delete(Subscription).where(Subscription.device_id == device_id,
                                                     Subscription.dataset_name == dataset))
    return rowcount(res) > 0


def known_datasets(session: Session, pool_id: str, identity_id: str) -> list[str]:
    rows = session.execute(select(Dataset.dataset_name).where(
        Dataset.pool_id == pool_id, Dataset.identity_id == identity_id).order_by(Dataset.dataset_name))
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
    out: list[tuple[str, str, str, str, str]] = []
    for chunk in chunks(list(keys), 200):
        wanted = set(chunk)
        out.extend(tuple(r) for r in session.execute(resolve_statement(chunk)) if (r[0], r[1], r[2]) in wanted)
    return out
