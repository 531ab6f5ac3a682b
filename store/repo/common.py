"""What the repository modules share: the not-found error, dialect-aware INSERT, row counts, chunking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from sqlalchemy import CursorResult, Result
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


class NotFound(LookupError):
    """An id that the store does not know (unknown pool, unknown device)."""


def insert_for(session: Session, model):
    """INSERT that understands ON CONFLICT on both supported dialects."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(model)


def rowcount(result: Result) -> int:
    """The rows an UPDATE or DELETE matched. ``Session.execute`` is typed as answering a ``Result``;
    for a DML statement it is a ``CursorResult``, the one that has ``rowcount``."""
    return cast(CursorResult, result).rowcount


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
