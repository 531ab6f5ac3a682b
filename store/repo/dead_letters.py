"""The dead-letter store."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import cast, overload

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.orm import Session

from pushsync.messages import DeadLetter as Letter
from store.models import DeadLetter, utcnow
from store.repo.common import chunks, rowcount


@overload
def _clean(text: str, limit: int) -> str: ...


@overload
def _clean(text: str | None, limit: int) -> str | None: ...


def _clean(text: str | None, limit: int) -> str | None:
    # what reaches a dead letter came from outside: no NUL (PostgreSQL text refuses it) and a
    # bounded length, so that writing the dead letter cannot fail on what it records
    return None if text is None else str(text).replace("\x00", "\\x00")[:limit]


def _payload(payload: object) -> str:
    """JSON of what the letter carries; a value JSON cannot hold (nested past the recursion limit,
    a float such as NaN is fine) is kept as a bounded repr instead."""
    try:
        text = json.dumps(payload, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = json.dumps({"unreadable": reprlib.repr(payload)})
    return _clean(text, 1_000_000)


def add_dead_letters(session: Session, letters: Iterable[Letter]) -> int:
    """The one writer of the dead-letter store: the letters in one statement (a message of many
    thousand events costs one round trip, not one per event). Returns how many."""
    from pushsync import contract

    now = utcnow()
    rows = []
    for d in letters:
        try:
            pool_id = contract.pool_id(d.pool)
        except ValueError:
            pool_id = None  # only a well-formed id goes in the column; the payload keeps what came
        rows.append({"kind": d.kind, "reason": _clean(d.reason, 255), "last_error": _clean(d.last_error, 2000),
                     "payload": _payload(d.payload), "pool_id": pool_id,
                     "platform": d.platform if d.platform in contract.PLATFORMS else None,
                     "attempts": max(1, min(int(d.attempts), 1_000_000)), "created_at": now, "updated_at": now})
    if rows:
        session.execute(insert(cast(Table, DeadLetter.__table__)), rows)
    return len(rows)


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
    for chunk in chunks(list(ids), 500):
        n += rowcount(session.execute(delete(DeadLetter).where(DeadLetter.id.in_(chunk))))
    return n


def count_dead_letters(session: Session) -> int:
    return session.execute(select(func.count()).select_from(DeadLetter)).scalar_one()


def purge_dead_letters(session: Session, older_than: timedelta | None = None) -> int:
    q = delete(DeadLetter)
    if older_than is not None:
        q = q.where(DeadLetter.created_at < utcnow() - older_than)
    return rowcount(session.execute(q))
