"""The store's part of a micro-batch against a real store (SQLite and PostgreSQL): what is
accepted, planned, batched and dead-lettered."""

from __future__ import annotations

from sqlalchemy import text

from pushsync import contract
from pushsync.contract import Key
from store import repo
from store.db import session_scope
from worker import plan
from worker.pools import PoolCache

from ..conftest import IDENT, IDENT2, POOL

NOCREDS = "eu-west-1:0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"
FCM_ONLY = {"type": "service_account", "project_id": "p", "private_key": "k", "client_email": "e",
            "token_uri": "https://t"}


def _event(n, ident=IDENT, ds="notes", **extra):
    return contract.event({"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n, **extra})


def _batch(engine, events, held=(), flushes=(), batch_size=500):
    """One micro-batch in its own transaction: (result, batches, dead letters written)."""
    res, letters = plan.IngestResult(), []
    with session_scope(engine) as s:
        batches = plan.micro_batch(s, events, held=set(held), flushes=set(flushes), credentials=PoolCache().credentials,
                                   batch_size=batch_size, redeliver_after=180, enqueued_at=None, res=res,
                                   letters=letters)
        repo.add_dead_letters(s, letters)
    return res, batches, letters


def _seed(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        repo.upsert_pool(s, NOCREDS)
        ids = [repo.register_device(s, POOL, IDENT, "GCM", f"t{i}") for i in range(5)]
        apns_dev = repo.register_device(s, POOL, IDENT, "APNS", "ab")
        other = repo.register_device(s, POOL, IDENT2, "GCM", "o")
        for d in [*ids, apns_dev]:
            repo.subscribe(s, POOL, IDENT, ["notes"], d)
        repo.subscribe(s, POOL, IDENT2, ["notes"], other)
    return ids, apns_dev, other


def test_a_micro_batch_batches_by_platform_skips_the_origin_and_the_stale(engine):
    ids, apns_dev, _other = _seed(engine)
    res, batches, _letters = _batch(engine, [_event(4, originDeviceId=ids[0]), _event(3),
                                             contract.event({**_event(1).to_json(), "identityPoolId": NOCREDS})],
                                    batch_size=2)
    assert (res.coalesced, res.notified, res.stale, res.dead_lettered) == (1, 1, 0, 1)
    assert [b.platform for b in batches] == ["GCM", "GCM"]  # 4 GCM devices in batches of 2
    items = [item for b in batches for item in b.items]
    assert sorted(i.device_id for i in items) == sorted(ids[1:])
    assert all(i.sync_count == 4 for i in items)
    with session_scope(engine) as s:
        letters = repo.list_dead_letters(s)
        assert sorted(d["reason"] for d in letters) == [
            "no credentials: the pool has no APNs credentials for APNS devices",
            "no credentials: the pool has no push credentials"]
        [letter] = [d for d in letters if d["kind"] == "delivery"]
        # kept per device at the count just planned, so that replay delivers it once the pool has keys
        assert letter["payload"] == {"pool": POOL, "platform": "APNS", "deviceId": apns_dev, "identityId": IDENT,
                                     "datasetName": "notes", "syncCount": 4}
        # every batch is in the outbox until deliver settles it
        assert sorted(s.execute(text("SELECT id FROM outbox")).scalars()) == sorted(b.id for b in batches)
        assert repo.counts(s, Key(POOL, IDENT, "notes")) == (4, 4)
    res, batches, _letters = _batch(engine, [_event(4), _event(2)])
    assert (res.stale, res.coalesced, batches) == (1, 1, [])


def test_a_held_count_is_accepted_not_planned_and_its_flush_plans_it_with_its_origin_left_out(engine):
    ids, _apns, _other = _seed(engine)
    res, batches, _ = _batch(engine, [_event(1)])
    assert res.notified == 1 and batches
    res, batches, _ = _batch(engine, [_event(2, originDeviceId=ids[1])], held={Key(POOL, IDENT, "notes")})
    assert (res.notified, res.held, batches) == (1, 1, [])
    with session_scope(engine) as s:
        assert repo.counts(s, Key(POOL, IDENT, "notes")) == (2, 1)
    # a duplicate and a late count in the next window: they change nothing, and hide nothing
    res, batches, _ = _batch(engine, [_event(2), _event(0, ds="notes", ident=IDENT)],
                             held={Key(POOL, IDENT, "notes")})
    assert (res.stale, res.coalesced, res.notified, batches) == (1, 1, 0, [])
    res, batches, _ = _batch(engine, [], flushes={Key(POOL, IDENT, "notes")})
    assert res.window_flushed == 1
    items = [i for b in batches for i in b.items]
    assert {i.sync_count for i in items} == {2} and ids[1] not in {i.device_id for i in items}
    assert sorted(i.device_id for i in items if i.device_id in ids) == sorted(set(ids) - {ids[1]})
    # the flush's work is done: a second one finds nothing left to plan
    res, batches, _ = _batch(engine, [], flushes={Key(POOL, IDENT, "notes")})
    assert (res.window_flushed, batches) == (0, [])


def test_a_leading_edge_plans_what_an_earlier_window_left_unplanned_even_from_a_stale_event(engine):
    _seed(engine)
    _batch(engine, [_event(1)])
    _batch(engine, [_event(5)], held={Key(POOL, IDENT, "notes")})
    res, batches, _ = _batch(engine, [_event(3)])  # stale, but it opened a new window: the leading edge
    assert res.stale == 1 and {i.sync_count for b in batches for i in b.items} == {5}


def test_resolve_narrows_the_join_to_the_events_datasets_in_sql(engine, monkeypatch, request):
    from sqlalchemy import event as sa_event

    from pushsync.settings import get_settings

    monkeypatch.setenv("PUSHSYNC_MAX_DATASETS_PER_IDENTITY", "40")
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)

    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        dev = repo.register_device(s, POOL, IDENT, "GCM", "t")
        repo.subscribe(s, POOL, IDENT, [f"ds{i}" for i in range(30)], dev)
    statements = []

    def seen(_conn, _cursor, statement, params, _context, _many):
        statements.append((statement, params))

    sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        with session_scope(engine) as s:
            rows = repo.resolve_many(s, [(POOL, IDENT, "ds7")])
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
    assert rows == [(POOL, IDENT, "ds7", dev, "GCM")]
    [(sql, params)] = [(q, p) for q, p in statements if "subscriptions" in q]
    assert "dataset_name IN" in sql.replace('"', "").replace("subscriptions.", "")
