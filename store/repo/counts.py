"""What was accepted and what was pushed, per dataset: the one source of truth for coalescing.

Each (pool, identity, dataset) row keeps the newest sync count accepted (``sync_count``) and the
newest one whose pushes were planned, written to the outbox in the same transaction
(``planned_count``). ``planned <= accepted`` always. Ingest raises the first (``accept``); a
leading edge or a window's flush raises the second to the first (``plan``), and only then are
pushes cut. Whatever Redis forgets or a worker's death interrupts, a dataset whose accepted
count is above its planned one is still found here (``pending``) and flushed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, and_, case, or_, select, tuple_, update
from sqlalchemy.orm import Session

from pushsync.contract import ChangeEvent, Key
from store.models import Dataset, utcnow
from store.repo.common import chunks, insert_for

_TABLE = cast(Table, Dataset.__table__)  # typed as a FromClause; a mapped class's is a Table


def _pending():
    """The predicate of ix_datasets_pending, spelled as the index spells it."""
    c = _TABLE.c
    return and_(c.sync_count.is_not(None), or_(c.planned_count.is_(None), c.planned_count < c.sync_count))


def accept(session: Session, events: Sequence[ChangeEvent], lock: Iterable[Key] = (),
           lead: Iterable[Key] = ()) -> dict[Key, tuple[int, str | None]]:
    """Raise each event's dataset to the event's count where that is newer; returns the keys that
    moved, each with (its count, the origin device). At most one event per key (the caller keeps
    the newest). The origin device of the count that moved is kept with it. A key in ``lead`` (a
    leading edge) that moves is planned in the same step: its planned count is its accepted one,
    one row version and no second statement for the common case (what ``plan`` would do next).

    One statement (an INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING, sent as one
    executemany), keys in sorted order. ``lock`` names more keys (the ones a flush will plan) that
    go in as rows without a count: they change nothing, but their rows are locked here, in the same
    sorted order, so that two transactions over overlapping keys cannot deadlock later on. Two
    concurrent callers with the same count cannot both move it: PostgreSQL re-checks the WHERE on
    the row after the lock wait, SQLite serialises writers."""
    rows: dict[Key, tuple[int | None, str | None]] = {k: (None, None) for k in lock}
    for e in events:
        rows[e.key] = (e.sync_count, e.origin)
    if not rows:
        return {}
    lead = set(lead)
    now = utcnow()
    stmt = insert_for(session, _TABLE)
    planned = stmt.excluded.planned_count
    # one statement shape whatever the number of keys: a VALUES list per size would fill the cache
    stmt = stmt.on_conflict_do_update(
        index_elements=["pool_id", "identity_id", "dataset_name"],
        set_={"sync_count": stmt.excluded.sync_count, "origin_device_id": stmt.excluded.origin_device_id,
              "updated_at": stmt.excluded.updated_at,
              # a held count leaves the planned one as it is; a leading one plans itself
              "planned_count": case((planned.is_(None), _TABLE.c.planned_count), else_=planned)},
        where=and_(stmt.excluded.sync_count.is_not(None),
                   or_(_TABLE.c.sync_count.is_(None), _TABLE.c.sync_count < stmt.excluded.sync_count)),
    ).returning(_TABLE.c.pool_id, _TABLE.c.identity_id, _TABLE.c.dataset_name, _TABLE.c.sync_count,
                _TABLE.c.origin_device_id)
    values = [{"pool_id": k.pool, "identity_id": k.identity, "dataset_name": k.dataset, "sync_count": n,
               "origin_device_id": origin, "planned_count": n if k in lead else None, "updated_at": now}
              for k, (n, origin) in sorted(rows.items())]
    # a fresh row inserted for a lock-only key has no count: it did not move
    return {Key(p, i, d): (n, origin) for p, i, d, n, origin in session.execute(stmt, values) if n is not None}


def plan(session: Session, keys: Iterable[Key]) -> dict[Key, tuple[int, str | None]]:
    """Mark the newest accepted count of each key as planned where it is not yet; returns, for the
    keys that moved, (the count to push, the device not to tell). The caller writes those pushes
    to the outbox in this same transaction. A compare-and-set: of two transactions planning the
    same key, one moves it and the other finds nothing left to plan."""
    out: dict[Key, tuple[int, str | None]] = {}
    c = _TABLE.c
    for chunk in chunks(sorted(set(keys)), 300):
        stmt = (update(_TABLE)
                .where(tuple_(c.pool_id, c.identity_id, c.dataset_name).in_(chunk), _pending())
                .values(planned_count=c.sync_count)
                .returning(c.pool_id, c.identity_id, c.dataset_name, c.sync_count, c.origin_device_id))
        out.update({Key(p, i, d): (n, origin) for p, i, d, n, origin in session.execute(stmt)})
    return out


def still_planned(session: Session, counts: dict[Key, int]) -> dict[Key, tuple[int, str | None]]:
    """Of these (key, count) pairs, those whose count is still the key's newest accepted and planned
    one: what a run that died after its commit may not have sent (its messages are taken again)."""
    out: dict[Key, tuple[int, str | None]] = {}
    c = _TABLE.c
    for chunk in chunks(sorted(counts), 300):
        rows = session.execute(select(c.pool_id, c.identity_id, c.dataset_name, c.sync_count, c.planned_count,
                                      c.origin_device_id)
                               .where(tuple_(c.pool_id, c.identity_id, c.dataset_name).in_(chunk)))
        out.update({Key(p, i, d): (n, origin) for p, i, d, n, planned, origin in rows
                    if n is not None and n == planned == counts[Key(p, i, d)]})
    return out


def counts(session: Session, key: Key) -> tuple[int | None, int | None]:
    """(accepted, planned) of one dataset; (None, None) for one the store does not know."""
    c = _TABLE.c
    row = session.execute(select(c.sync_count, c.planned_count).where(
        c.pool_id == key.pool, c.identity_id == key.identity, c.dataset_name == key.dataset)).first()
    return (row[0], row[1]) if row else (None, None)


def accepted_counts(session: Session, keys: Iterable[Key]) -> dict[Key, int]:
    """The accepted count of each key the store knows (one query per 300 keys)."""
    out: dict[Key, int] = {}
    c = _TABLE.c
    for chunk in chunks(sorted(set(keys)), 300):
        rows = session.execute(select(c.pool_id, c.identity_id, c.dataset_name, c.sync_count)
                               .where(tuple_(c.pool_id, c.identity_id, c.dataset_name).in_(chunk)))
        out.update({Key(p, i, d): n for p, i, d, n in rows if n is not None})
    return out


def pending(session: Session, changed_before: datetime, limit: int = 1000) -> list[Key]:
    """Datasets whose newest accepted count was never planned and that last changed before
    ``changed_before``: a flush that Redis forgot or a dead worker never ran (ix_datasets_pending)."""
    c = _TABLE.c
    rows = session.execute(select(c.pool_id, c.identity_id, c.dataset_name)
                           .where(_pending(), c.updated_at < changed_before)
                           .order_by(c.updated_at).limit(limit))
    return [Key(*r) for r in rows]
