"""The periodic jobs that beat sends to workers. Thin: the work is in store.repo."""

from __future__ import annotations

import logging
from datetime import timedelta

from pushsync import broker
from pushsync.queues import QUEUES
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import metrics
from worker.app import app
from worker.tasks import PushsyncTask

log = logging.getLogger("pushsync.scheduler")


@app.task(name="pushsync.prune_devices", base=PushsyncTask)
def prune_devices() -> int:
    """Delete devices whose token has been dead for longer than PUSHSYNC_INACTIVE_DEVICE_DAYS."""
    days = get_settings().inactive_device_days
    with session_scope() as session:
        return repo.delete_inactive_devices(session, timedelta(days=days))


@app.task(name="pushsync.trim_dead_letters", base=PushsyncTask)
def trim_dead_letters() -> int:
    """Delete dead letters older than PUSHSYNC_DEAD_LETTER_DAYS."""
    days = get_settings().dead_letter_days
    with session_scope() as session:
        return repo.purge_dead_letters(session, timedelta(days=days))


@app.task(name="pushsync.record_queue_depths", base=PushsyncTask)
def record_queue_depths() -> dict:
    """A log line of what waits, every 15 s, for whoever reads the logs rather than the metrics
    page (which computes the depths itself when scraped)."""
    depths = metrics.queue_depths(broker.redis_client(), QUEUES)
    log.info("queue depths: %s", ", ".join(f"{q} {n}" for q, n in depths.items()))
    return depths
