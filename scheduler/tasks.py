"""The periodic jobs that beat sends to workers. Thin: the work is in store.repo."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import redis

from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import metrics
from worker.app import QUEUES, app
from worker.tasks import PushsyncTask

QUEUE_DEPTHS_KEY = "pushsync:queue_depths"


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
    client = redis.Redis.from_url(get_settings().broker_url)
    depths = metrics.queue_depths(client, QUEUES)
    client.set(QUEUE_DEPTHS_KEY, json.dumps({"at": time.time(), "depths": depths}))
    return depths
