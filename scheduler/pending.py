"""Flushes the store says are owed: datasets whose newest accepted sync count was never planned.

Coalescing decides *when* in Redis and *what* in the store (``store.repo.counts``); this sweep is
the net under the first: if Redis lost the flush set (restarted without its data), or a held
event's worker died after its commit and before its flush was scheduled again, the dataset's row
still says accepted > planned. Every sweep schedules a flush, due now, for each such dataset whose
last change is older than the coalescing window plus ``MARGIN``; the flush plans whatever is still
unplanned then, so an extra one is harmless.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis

from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from store.models import utcnow
from worker.coalesce import FLUSH

log = logging.getLogger("pushsync.scheduler")

MARGIN = 10.0  # seconds past a window's end before its dataset counts as forgotten


def sweep(client: redis.Redis, limit: int = 1000) -> int:
    """Schedule the owed flushes; returns how many datasets were found."""
    cutoff = utcnow() - timedelta(seconds=get_settings().coalesce_window + MARGIN)
    with session_scope() as session:
        keys = repo.pending(session, cutoff, limit=limit)
    if keys:
        # due at once (score 0: whatever a host's clock says); LT: one due already stays as it is
        client.zadd(FLUSH, dict.fromkeys((k.text() for k in keys), 0), lt=True)
        log.warning("scheduled %d coalescing flushes that the store says are owed (Redis lost them, or a "
                    "worker died between its commit and its flush)", len(keys))
    return len(keys)
