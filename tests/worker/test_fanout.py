"""Ingest against a real store (SQLite and PostgreSQL): what gets enqueued and dead-lettered."""

from __future__ import annotations

from store import repo
from store.db import session_scope
from worker import fanout

from ..conftest import IDENT, IDENT2, POOL

NOCREDS = "eu-west-1:0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"
FCM_ONLY = {"type": "service_account", "project_id": "p", "private_key": "k", "client_email": "e",
            "token_uri": "https://t"}


def _event(n, ident=IDENT, ds="notes", **extra):
    return {"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n, **extra}


def test_coalesce_keeps_the_newest_per_dataset():
    kept, dropped = fanout.coalesce([_event(1), _event(3), _event(2), _event(1, ds="x")])
    assert sorted((e["datasetName"], e["syncCount"]) for e in kept) == [("notes", 3), ("x", 1)]
    assert dropped == 2


def test_ingest_batches_by_platform_skips_origin_and_stale(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        repo.upsert_pool(s, NOCREDS)
        ids = [repo.register_device(s, POOL, IDENT, "GCM", f"t{i}") for i in range(5)]
        apns_dev = repo.register_device(s, POOL, IDENT, "APNS", "ab")
        other = repo.register_device(s, POOL, IDENT2, "GCM", "o")
        for d in [*ids, apns_dev]:
            repo.subscribe(s, POOL, IDENT, ["notes"], d)
        repo.subscribe(s, POOL, IDENT2, ["notes"], other)
    sent = []
    with session_scope(engine) as s:
        res = fanout.ingest(s, [_event(4, originDeviceId=ids[0]), _event(3), {"bad": 1},
                                {**_event(1), "identityPoolId": NOCREDS}],
                            batch_size=2, enqueue=lambda plat, batch: sent.append((plat, batch)))
    assert res.invalid == 1 and res.coalesced == 1 and res.notified == 1
    assert [p for p, _b in sent] == ["GCM", "GCM"]  # 4 GCM devices in batches of 2
    items = [item for _p, b in sent for item in b["items"]]
    assert sorted(i[0] for i in items) == sorted(ids[1:])
    assert all(i[3] == 4 for i in items)
    with session_scope(engine) as s:
        reasons = sorted(d["reason"] for d in repo.list_dead_letters(s))
        assert any(r.startswith("invalid event") for r in reasons)
        assert "pool has no push credentials" in reasons
        assert "pool has no APNs credentials for APNS devices" in reasons
        [letter] = [d for d in repo.list_dead_letters(s) if d["kind"] == "delivery"]
        # kept per device at the count just notified, so that replay delivers it once the pool has keys
        assert letter["payload"] == {"pool": POOL, "platform": "APNS", "deviceId": apns_dev, "identityId": IDENT,
                                     "datasetName": "notes", "syncCount": 4}
    sent.clear()
    with session_scope(engine) as s:
        res = fanout.ingest(s, [_event(4), _event(2)], batch_size=500, enqueue=lambda p, b: sent.append(b))
    assert res.stale == 1 and res.coalesced == 1 and sent == []


def test_a_message_over_the_events_limit_is_refused_whole_and_each_event_kept(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
    sent = []
    with session_scope(engine) as s:
        res = fanout.ingest(s, [_event(i) for i in range(4)], batch_size=10, max_events=3,
                            enqueue=lambda p, b: sent.append(b))
    assert sent == [] and res.dead_lettered == 4
    with session_scope(engine) as s:
        letters = repo.list_dead_letters(s)
        assert repo.last_sync_count(s, POOL, IDENT, "notes") is None
    assert [d["payload"]["syncCount"] for d in letters] == [0, 1, 2, 3]
    assert all("limit is 3 per message" in d["reason"] for d in letters)


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
