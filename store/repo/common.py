"""What the repository modules share: the not-found error, dialect-aware INSERT, chunking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


class NotFound(LookupError):
    """An id that the store does not know (unknown pool, unknown device)."""


def insert_for(session: Session, model):
    """INSERT that understands ON CONFLICT on both supported dialects."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(model)


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
