"""The dead-letter store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from store.models import DeadLetter, utcnow
from store.repo.common import chunks


def _clean(text: str | None, limit: int) -> str | None:
    # what reaches a dead letter came from outside: no NUL (PostgreSQL text refuses it) and a
    # bounded length, so that writing the dead letter cannot fail on what it records
    return None if text is None else str(text).replace("\x00", "\\x00")[:limit]


def _row(kind: str, reason: str, payload: dict, last_error: str | None, pool_id: object, platform: object,
         attempts: int) -> dict:
    from pushsync import contract

    try:
        pool_id = contract.pool_id(pool_id)
    except ValueError:
        pool_id = None  # only a well-formed id goes in the column; the payload keeps what came
    now = utcnow()
    return {"kind": kind, "reason": _clean(reason, 255), "last_error": _clean(last_error, 2000),
            "payload": json.dumps(payload, default=repr), "pool_id": pool_id,
            "platform": platform if platform in ("GCM", "APNS", "APNS_SANDBOX") else None,
            "attempts": max(1, min(int(attempts), 1_000_000)), "created_at": now, "updated_at": now}


def add_dead_letter(session: Session, kind: str, reason: str, payload: dict, *, last_error: str | None = None,
                    pool_id: str | None = None, platform: str | None = None, attempts: int = 1) -> int:
    dl = DeadLetter(**_row(kind, reason, payload, last_error, pool_id, platform, attempts))
    session.add(dl)
    session.flush()
    return dl.id


def add_event_dead_letters(session: Session, events: list, reason: str) -> int:
    """Change events as they came (any type), one dead letter each, in one statement: a message
    of many thousand events costs one round trip, not one per event."""
    rows = [_row("event", reason, e if isinstance(e, dict) else {"event": e}, None,
                 e.get("identityPoolId") if isinstance(e, dict) else None, None, 1) for e in events]
    if rows:
        session.execute(insert(DeadLetter.__table__), rows)
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
        n += session.execute(delete(DeadLetter).where(DeadLetter.id.in_(chunk))).rowcount
    return n


def count_dead_letters(session: Session) -> int:
    return session.execute(select(func.count()).select_from(DeadLetter)).scalar_one()


def purge_dead_letters(session: Session, older_than: timedelta | None = None) -> int:
    q = delete(DeadLetter)
    if older_than is not None:
        q = q.where(DeadLetter.created_at < utcnow() - older_than)
    return session.execute(q).rowcount
