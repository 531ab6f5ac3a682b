"""delivery.plan and delivery.record against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from pushsync.contract import ChangeEvent, Key
from pushsync.messages import DeliveryBatch, Item
from pushsync.settings import Settings
from store import repo
from store.db import session_scope
from worker import delivery
from worker.pools import PoolCache
from worker.senders.base import Kind, Outcome

from ..conftest import IDENT, IDENT2, POOL, POOL2, notified
from .conftest import _letters, _seeded, repo_device

SETTINGS = Settings(retry_base=0.1, retry_cap=1.0, max_attempts=3)


def _setup(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL)
        repo.upsert_pool(s, POOL2)
        dev = repo.register_device(s, POOL, IDENT, "GCM", "phone")
        repo.subscribe(s, POOL, IDENT, ["contacts", "photos"], dev)
        other = repo.register_device(s, POOL2, IDENT, "GCM", "other-pool-phone")
        repo.subscribe(s, POOL2, IDENT, ["contacts"], other)
        for ds, n in (("contacts", 5), ("photos", 2)):
            notified(s, POOL, IDENT, ds, n)
    return dev, other


def test_plan_sends_only_what_is_still_the_batch_identitys_at_the_newest_count(engine):
    dev, other = _setup(engine)
    batch = DeliveryBatch(POOL, "GCM", (
        Item(dev, IDENT, "contacts", 4),       # stale: 5 was notified since
        Item(dev, IDENT, "photos", 2),         # sent
        Item(dev, IDENT2, "contacts", 5),      # the device is not IDENT2's
        Item(dev, IDENT, "notes", 1),          # not subscribed
        Item(other, IDENT, "contacts", 5),     # another pool's device
    ))
    result = delivery.DeliveryResult()
    with session_scope(engine) as s:
        _creds, targets = delivery.load(s, batch, PoolCache())
    requests = delivery.plan(batch, targets, result)
    assert [(r.device_id, r.dataset, r.data["syncCount"], r.token) for r in requests] == [(dev, "photos", "2", "phone")]
    assert (result.skipped, result.stale) == (3, 1)
    with session_scope(engine) as s:  # the same batch on another platform reaches nothing
        _c, targets = delivery.load(s, DeliveryBatch(POOL, "APNS", batch.items), PoolCache())
    assert targets == {}


def test_record_keys_outcomes_by_device_and_dataset(engine):
    dev, _other = _setup(engine)
    batch = DeliveryBatch(POOL, "GCM", (Item(dev, IDENT, "contacts", 5), Item(dev, IDENT, "photos", 2)))
    outcomes = [Outcome(dev, Kind.RETRY, reason="UNAVAILABLE", retry_after=2.0, dataset="contacts"),
                Outcome(dev, Kind.RETRY, reason="UNAVAILABLE", dataset="photos")]
    result = delivery.DeliveryResult()
    with session_scope(engine) as s:
        delivery.record(s, batch, outcomes, result, SETTINGS)
    # both pushes of the one device are retried, none dropped; the wait honours Retry-After
    assert result.retry_batch.items == batch.items and result.retry_batch.attempt == 2
    assert result.retry_in >= 2.0 and result.retried == 2


def test_record_dead_letters_per_push_when_tries_run_out_and_never_deactivates_on_topic_errors(engine):
    dev, _other = _setup(engine)
    batch = DeliveryBatch(POOL, "GCM", (Item(dev, IDENT, "contacts", 5), Item(dev, IDENT, "photos", 2)), attempt=3)
    outcomes = [Outcome(dev, Kind.RETRY, reason="UNAVAILABLE", status=503, dataset="contacts"),
                Outcome(dev, Kind.PERMANENT, reason="DeviceTokenNotForTopic", status=400, dataset="photos")]
    result = delivery.DeliveryResult()
    with session_scope(engine) as s:
        delivery.record(s, batch, outcomes, result, SETTINGS)
        letters = repo.list_dead_letters(s)
        assert s.execute(text("SELECT active FROM devices WHERE id = :d"), {"d": dev}).scalar_one()
    assert result.retry_batch is None and result.dead_lettered == 2
    assert sorted((d["payload"]["datasetName"], d["reason"].split(" (")[0], d["attempts"]) for d in letters) == [
        ("contacts", "retries exhausted: UNAVAILABLE", 3), ("photos", "permanent error: DeviceTokenNotForTopic", 3)]


def test_a_batch_sent_again_by_the_outbox_past_its_tries_is_dead_lettered_not_sent(run, engine):
    """The outbox re-sends a batch whose runs never finished (each time one attempt more): past
    max_attempts it ends as dead letters with the reason, its outbox row settled, nothing pushed."""
    [ident] = _seeded(engine, 1)
    dev = repo_device(engine, ident)
    with session_scope(engine) as s:
        repo.accept(s, [ChangeEvent(POOL, ident, "notes", 4)], lead=[Key(POOL, ident, "notes")])
    bid = str(uuid.uuid4())
    batch = {"pool": POOL, "platform": "GCM", "items": [[dev, ident, "notes", 4]],
             "attempt": run.ctx.settings.max_attempts + 1, "id": bid}
    with session_scope(engine) as s:
        repo.add_outbox(s, [(bid, "GCM", batch)], due_at=datetime.now(UTC))
    result = run.deliver(batch)
    assert (result["dead_lettered"], result["sent"]) == (1, 0) and run.sent == []
    [letter] = _letters(engine)
    assert letter["reason"].startswith("retries exhausted: no run of it finished in")
    with session_scope(engine) as s:
        assert repo.take_due_outbox(s, datetime.now(UTC), datetime.now(UTC), ["GCM"]) == []
