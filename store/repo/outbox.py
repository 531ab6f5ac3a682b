"""The delivery outbox: batches enqueued by ingest and not yet settled by deliver."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.orm import Session

from store.models import Outbox, utcnow
from store.repo.common import chunks, insert_for, rowcount


def add_outbox(session: Session, batches: Sequence[tuple[str, str, dict]], due_at: datetime) -> None:
    """Record (id, platform, batch) rows, due for a re-send at ``due_at`` unless settled first."""
    if batches:
        now = utcnow()
        session.execute(insert_for(session, Outbox.__table__), [
            {"id": i, "platform": p, "payload": json.dumps(b), "due_at": due_at, "created_at": now}
            for i, p, b in batches])


def settle_outbox(session: Session, batch_id: str | None) -> None:
    if batch_id:
        session.execute(delete(Outbox).where(Outbox.id == batch_id))


def reschedule_outbox(session: Session, batch_id: str | None, batch: dict, due_at: datetime) -> None:
    """The batch goes on as a retry: keep it, with the retry's content and a later due time."""
    if batch_id:
        session.execute(update(Outbox).where(Outbox.id == batch_id).values(payload=json.dumps(batch), due_at=due_at))


def take_due_outbox(session: Session, now: datetime, next_due: datetime, platforms: Sequence[str],
                    overdue_before: datetime | None = None, limit: int = 500) -> list[tuple[str, dict]]:
    """Rows due by ``now`` of these platforms, and of any platform if written before
    ``overdue_before``: returned, and made due again at ``next_due``."""
    which: ColumnElement[bool] = Outbox.platform.in_(list(platforms))
    if overdue_before is not None:
        which = or_(which, Outbox.created_at < overdue_before)
    rows = session.execute(select(Outbox.id, Outbox.payload).where(Outbox.due_at <= now, which)
                           .order_by(Outbox.due_at).limit(limit)).all()
    for chunk in chunks([r[0] for r in rows], 500):
        session.execute(update(Outbox).where(Outbox.id.in_(chunk)).values(due_at=next_due))
    return [(i, json.loads(p)) for i, p in rows]


def defer_outbox(session: Session, platforms: Sequence[str], now: datetime, next_due: datetime,
                 overdue_before: datetime | None = None) -> int:
    """Push back the due rows of these platforms (their queue is not empty: not lost, waiting),
    except those written before ``overdue_before``: no backlog explains a wait that long."""
    which = [Outbox.due_at <= now, Outbox.platform.in_(list(platforms))]
    if overdue_before is not None:
        which.append(Outbox.created_at >= overdue_before)
    return rowcount(session.execute(update(Outbox).where(*which).values(due_at=next_due)))
