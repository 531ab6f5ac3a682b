"""The outbox sweep (scheduler/outbox.py) against a real store and a real Redis (database 9): a
batch no worker settled is sent again; while its queue holds messages it is deferred (it is
probably waiting there), but not for ever: sustained load must not keep a lost batch from going."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from pushsync.messages import DeliveryBatch
from scheduler import outbox
from store import repo
from store.db import session_scope
from store.models import Outbox, utcnow

from ..conftest import retry_batch


def _row(engine, platform: str, n: int, written_ago: float) -> str:
    batch = DeliveryBatch.from_json(retry_batch(platform, n))
    bid = str(uuid.uuid4())
    with session_scope(engine) as s:
        repo.add_outbox(s, [(bid, platform, batch.to_json())], due_at=utcnow() - timedelta(seconds=1))
        s.execute(update(Outbox).where(Outbox.id == bid).values(created_at=utcnow() - timedelta(seconds=written_ago)))
    return bid


def test_a_lost_batch_is_sent_again_even_while_its_queue_never_empties(store_settings, engine, retry_redis,
                                                                      monkeypatch):
    after = 180.0  # redeliver_after with the default settings
    monkeypatch.setattr(outbox, "session_scope", lambda: session_scope(engine))
    fresh = _row(engine, "GCM", 1, written_ago=after + 5)  # due, and its queue is busy: deferred
    lost = _row(engine, "GCM", 2, written_ago=after * outbox.OVERDUE_FACTOR + 5)  # no backlog is that long
    idle = _row(engine, "APNS", 3, written_ago=after + 5)  # its queue is empty: sent
    retry_redis.rpush("push.fcm", b"a message other batches wait behind")
    sent = []
    assert outbox.sweep(retry_redis, lambda name, arg, queue: sent.append((arg["items"][0][3], queue,
                                                                           arg["attempt"]))) == 2
    # each re-send is one attempt more (retry_batch writes attempt 2): bounded by max_attempts
    assert sorted(sent) == [(2, "push.fcm", 3), (3, "push.apns", 3)]
    with session_scope(engine) as s:
        due = dict(s.query(Outbox.id, Outbox.due_at).all())
        assert '"attempt": 3' in s.get(Outbox, lost).payload.replace('"attempt":3', '"attempt": 3')
    assert all(due[b].replace(tzinfo=None) > utcnow().replace(tzinfo=None) for b in (fresh, lost, idle))
    # the next sweep, with the queue still busy: nothing is due again yet, nothing re-sent twice
    assert outbox.sweep(retry_redis, lambda *a: sent.append(a)) == 0
