"""The ingest task body against a real store: when the store refuses a micro-batch for its
data, the events go again one by one and only the refused one is dead-lettered."""

from __future__ import annotations

import sqlalchemy.exc

from store import repo
from store.db import session_scope

from ..conftest import IDENT, IDENT2, POOL
from .test_fanout import FCM_ONLY


def test_a_micro_batch_the_store_refuses_goes_again_event_by_event(store_settings, engine, monkeypatch):
    from worker import ingest, tasks

    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        devices = {ident: repo.register_device(s, POOL, ident, "GCM", f"tok-{n}")
                   for n, ident in enumerate((IDENT, IDENT2))}
        for ident, dev in devices.items():
            repo.subscribe(s, POOL, ident, ["notes"], dev)
    real_advance = repo.advance_sync_counts

    def refuses_ident2(session, rows):
        rows = list(rows)
        if any(identity == IDENT2 for _p, identity, _d, _n in rows):  # as PostgreSQL refuses a value
            raise sqlalchemy.exc.DataError("INSERT INTO datasets ...", {}, ValueError("value refused by the store"))
        return real_advance(session, rows)

    monkeypatch.setattr(repo, "advance_sync_counts", refuses_ident2)
    sent = []
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: sent.append(batch))
    events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": "notes", "syncCount": 3}
              for ident in (IDENT, IDENT2)]
    result = ingest.ingest.apply(args=[events]).result  # as the worker calls it: a run of one message
    assert (result["notified"], result["dead_lettered"]) == (1, 1)
    assert [item[0] for b in sent for item in b["items"]] == [devices[IDENT]]
    with session_scope(engine) as s:
        [letter] = repo.list_dead_letters(s)
        assert repo.last_sync_count(s, POOL, IDENT, "notes") == 3
    assert letter["reason"] == "the store refused the event: ValueError: value refused by the store"
    assert letter["payload"]["identityId"] == IDENT2


def _request(args, kwargs=None, n=[0]):  # noqa: B006 - a counter for distinct message ids
    from celery_batches import SimpleRequest

    n[0] += 1
    return SimpleRequest(f"m{n[0]}", "pushsync.ingest", args, kwargs or {}, {}, "test", True, None, None, {})


def _seeded(engine, count=3):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        idents = [f"{IDENT[:-4]}{n:04d}" for n in range(count)]
        for n, ident in enumerate(idents):
            repo.subscribe(s, POOL, ident, ["notes"], repo.register_device(s, POOL, ident, "GCM", f"tok-{n}"))
    return idents


def test_one_run_takes_many_messages_in_one_transaction_and_keeps_each_ones_events(store_settings, engine,
                                                                                   monkeypatch):
    """Single-event messages, a two-event one and junk gathered into one run: one fan-out (one
    compare-and-set statement), every good event notified, the junk dead-lettered, nothing
    requeued."""
    from worker import ingest, tasks

    idents = _seeded(engine)
    sent, calls = [], []
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: sent.append(batch))
    real = repo.advance_sync_counts
    monkeypatch.setattr(repo, "advance_sync_counts", lambda s, rows: calls.append(list(rows)) or real(s, calls[-1]))
    ev = [{"identityPoolId": POOL, "identityId": i, "datasetName": "notes", "syncCount": 4} for i in idents]
    requests = [_request([[ev[0]]], {"enqueued_at": 1.0}), _request([ev[1:]]), _request(["junk"], "not kwargs")]
    result = ingest.ingest(requests)
    assert (result["received"], result["notified"], result["invalid"]) == (4, 3, 1)
    assert len(calls) == 1 and len(calls[0]) == 3
    assert sorted(item[0] for b in sent for item in b["items"]) == sorted(_device_ids(engine))
    with session_scope(engine) as s:
        [letter] = repo.list_dead_letters(s)
    assert letter["payload"] == {"event": "junk"} and letter["reason"].startswith("invalid event")


def _device_ids(engine):
    from sqlalchemy import text

    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT id FROM devices"))]


def test_a_message_over_the_limit_is_refused_whole_and_the_rest_of_the_run_goes_on(store_settings, engine,
                                                                                   monkeypatch):
    from worker import ingest, tasks

    idents = _seeded(engine, 2)
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: None)
    monkeypatch.setenv("PUSHSYNC_MAX_EVENTS_PER_MESSAGE", "2")
    from pushsync import settings

    settings.get_settings.cache_clear()
    big = [{"identityPoolId": POOL, "identityId": idents[0], "datasetName": "notes", "syncCount": n} for n in range(3)]
    ok = [{"identityPoolId": POOL, "identityId": idents[1], "datasetName": "notes", "syncCount": 1}]
    result = ingest.ingest([_request([big]), _request([ok])])
    assert (result["notified"], result["dead_lettered"]) == (1, 3)
    with session_scope(engine) as s:
        assert repo.count_dead_letters(s) == 3
        assert repo.last_sync_count(s, POOL, idents[0], "notes") is None


def test_a_store_out_of_reach_sends_each_message_back_with_a_countdown(store_settings, engine, monkeypatch):
    """Nothing is acknowledged without a way back: each message is republished with its attempt
    counted; when even that fails, the run asks for its messages to be requeued."""
    import sqlalchemy.exc as sa_exc
    from kombu.exceptions import OperationalError

    from worker import ingest

    def down(*_a, **_k):
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("store down"))

    monkeypatch.setattr(ingest, "fan_out", down)
    published = []
    monkeypatch.setattr(ingest.app, "send_task", lambda name, **kw: published.append((name, kw)))
    ev = {"identityPoolId": POOL, "identityId": IDENT, "datasetName": "notes", "syncCount": 1}
    result = ingest.ingest([_request([[ev]], {"attempt": 3, "enqueued_at": 5.0}), _request([[ev, ev]])])
    assert result == {"retried": 2, "dead_lettered": 0}
    assert [(kw["args"][0], kw["kwargs"]["attempt"], kw["kwargs"]["enqueued_at"]) for _n, kw in published][0] == (
        [ev], 4, 5.0)
    assert all(kw["countdown"] <= ingest.RETRY_WAIT_MAX for _n, kw in published)

    def broker_down(*_a, **_k):
        raise OperationalError("Redis away")

    monkeypatch.setattr(ingest.app, "send_task", broker_down)
    assert ingest.ingest([_request([[ev]])]) == {ingest.REQUEUE: True}
    # out of tries: dead-lettered, with the reason
    assert ingest.ingest([_request([[ev]], {"attempt": ingest.TRANSIENT_MAX_RETRIES})]) == {
        "retried": 0, "dead_lettered": 1}
    with session_scope(engine) as s:
        [letter] = repo.list_dead_letters(s)
    assert "gave up after" in letter["reason"] and "store down" in letter["reason"]
