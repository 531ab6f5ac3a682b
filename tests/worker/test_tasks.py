"""The ingest task body against a real store: when the store refuses a micro-batch for its
data, the events go again one by one and only the refused one is dead-lettered."""

from __future__ import annotations

import pytest
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
    _queued_only(monkeypatch)
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


def _queued_only(monkeypatch):
    """Every delivery batch to the queues (none sent from the ingest run), to see them."""
    from pushsync import settings

    monkeypatch.setenv("PUSHSYNC_INLINE_DELIVERY_MAX", "0")
    settings.get_settings.cache_clear()


def _publish(*messages):
    """Real ingest messages on the events list (Redis database 7, as store_settings points)."""
    from pushsync.queues import EVENTS_QUEUE, INGEST_TASK, producer_app

    app = producer_app()
    for args, kwargs in messages:
        app.send_task(INGEST_TASK, args=args, kwargs=kwargs, queue=EVENTS_QUEUE)


def _redis():
    import redis

    return redis.Redis.from_url("redis://127.0.0.1:6379/7")


def _seeded(engine, count=3):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        idents = [f"{IDENT[:-4]}{n:04d}" for n in range(count)]
        for n, ident in enumerate(idents):
            repo.subscribe(s, POOL, ident, ["notes"], repo.register_device(s, POOL, ident, "GCM", f"tok-{n}"))
    return idents


def _device_ids(engine):
    from sqlalchemy import text

    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT id FROM devices"))]


def test_a_run_takes_the_waiting_messages_and_acknowledges_them_once_done(store_settings, engine, monkeypatch):
    """The message Celery hands the run plus single-event messages, a two-event one, junk
    arguments and a message that does not parse, all waiting in Redis: one fan-out (one
    compare-and-set statement), every good event notified, the junk and the unreadable message
    dead-lettered, every taken message acknowledged (nothing left in kombu's unacked records)."""
    from worker import ingest, tasks

    idents = _seeded(engine, 4)
    _queued_only(monkeypatch)
    sent, calls = [], []
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: sent.append(batch))
    real = repo.advance_sync_counts
    monkeypatch.setattr(repo, "advance_sync_counts", lambda s, rows: calls.append(list(rows)) or real(s, calls[-1]))
    ev = [{"identityPoolId": POOL, "identityId": i, "datasetName": "notes", "syncCount": 4} for i in idents]
    client = _redis()
    _publish(([[ev[1]]], {"enqueued_at": 1.0}), ([ev[2:]], {}), (["junk"], {}))
    client.lpush("events", '{"headers": {"task": "pushsync.ingest", "eta": null}, "body": "%%%", '
                           '"properties": {"delivery_tag": "t-bad", "body_encoding": "base64"}}')
    result = ingest.ingest.apply(args=[[ev[0]]]).result
    assert (result["received"], result["notified"], result["invalid"]) == (5, 4, 1)
    assert len(calls) == 1 and len(calls[0]) == 4
    assert sorted(item[0] for b in sent for item in b["items"]) == sorted(_device_ids(engine))
    assert client.llen("events") == 0 and client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    with session_scope(engine) as s:
        letters = repo.list_dead_letters(s)
    assert sorted(d["reason"].split(":")[0] for d in letters) == ["invalid event", "the message does not parse"]
    assert any(d["payload"] == {"event": "junk"} for d in letters)


def test_a_run_leaves_other_tasks_and_countdowns_to_celery(store_settings, engine):
    from pushsync.queues import EVENTS_QUEUE, FLUSH_TASK, producer_app
    from worker import drain

    client = _redis()
    app = producer_app()
    _publish(([[]], {}))
    app.send_task(FLUSH_TASK, args=[[]], queue=EVENTS_QUEUE)
    _publish(([[]], {}))
    d = drain.Drain(client)
    assert len(d.take(10, 1.0)) == 1  # the first ingest message; the flush task stops the step
    assert client.llen("events") == 2 and client.hlen("unacked") == 1
    client.delete("events")
    app.send_task("pushsync.ingest", args=[[]], queue=EVENTS_QUEUE, countdown=30)
    assert d.take(10, 1.0) == [] and client.llen("events") == 1


def test_a_message_over_the_limit_is_refused_whole_and_the_rest_of_the_run_goes_on(store_settings, engine,
                                                                                   monkeypatch):
    from worker import ingest, tasks

    idents = _seeded(engine, 2)
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: None)
    monkeypatch.setenv("PUSHSYNC_MAX_EVENTS_PER_MESSAGE", "2")
    _queued_only(monkeypatch)
    big = [{"identityPoolId": POOL, "identityId": idents[0], "datasetName": "notes", "syncCount": n} for n in range(3)]
    ok = [{"identityPoolId": POOL, "identityId": idents[1], "datasetName": "notes", "syncCount": 1}]
    _publish(([ok], {}))
    result = ingest.ingest.apply(args=[big]).result
    assert (result["notified"], result["dead_lettered"]) == (1, 3)
    with session_scope(engine) as s:
        assert repo.count_dead_letters(s) == 3
        assert repo.last_sync_count(s, POOL, idents[0], "notes") is None


def test_a_store_out_of_reach_sends_each_message_back_with_a_countdown(store_settings, engine, monkeypatch):
    """Nothing is acknowledged without a way back: each message is republished with its attempt
    counted; when even that fails, the run's own message is requeued and the ones it took go
    back on the list."""
    import sqlalchemy.exc as sa_exc
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError

    from worker import ingest

    def down(*_a, **_k):
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("store down"))

    monkeypatch.setattr(ingest, "fan_out_all", down)
    client = _redis()
    ev = {"identityPoolId": POOL, "identityId": IDENT, "datasetName": "notes", "syncCount": 1}
    _publish(([[ev, ev]], {}))
    published = []
    real_send = ingest.app.send_task
    monkeypatch.setattr(ingest.app, "send_task", lambda name, **kw: published.append((name, kw)))
    result = ingest.ingest.apply(args=[[ev]], kwargs={"attempt": 3, "enqueued_at": 5.0}).result
    assert result == {"retried": 2, "dead_lettered": 0}
    assert [(kw["args"][0], kw["kwargs"]["attempt"]) for _n, kw in published] == [([ev], 4), ([ev, ev], 1)]
    assert published[0][1]["kwargs"]["enqueued_at"] == 5.0
    assert all(kw["countdown"] <= ingest.RETRY_WAIT_MAX for _n, kw in published)
    assert client.hlen("unacked") == 0

    def broker_down(*_a, **_k):
        raise OperationalError("Redis away")

    monkeypatch.setattr(ingest.app, "send_task", real_send)
    _publish(([[ev]], {}))
    monkeypatch.setattr(ingest.app, "send_task", broker_down)
    with pytest.raises(Reject) as rejected:
        ingest.ingest.run([ev])
    assert rejected.value.requeue is True
    assert client.llen("events") == 1 and client.hlen("unacked") == 0  # the taken one is back
    client.delete("events")
    # out of tries: dead-lettered, with the reason
    assert ingest.ingest.run([ev], attempt=ingest.TRANSIENT_MAX_RETRIES) == {"retried": 0, "dead_lettered": 1}
    with session_scope(engine) as s:
        [letter] = repo.list_dead_letters(s)
    assert "gave up after" in letter["reason"] and "store down" in letter["reason"]


def test_a_run_of_large_messages_takes_only_what_fills_its_events(store_settings, engine, monkeypatch):
    """PUSHSYNC_INGEST_BATCH_MAX counts events: with 100-event messages a run takes one more
    message, not 199 (which would be 20,000 events in one transaction)."""
    from worker import ingest, tasks

    _seeded(engine, 1)
    monkeypatch.setattr(tasks, "enqueue", lambda platform, batch: None)
    big = [{"identityPoolId": POOL, "identityId": IDENT, "datasetName": f"d{n}", "syncCount": 1} for n in range(100)]
    _publish(*[([big], {}) for _ in range(5)])
    result = ingest.ingest.apply(args=[big]).result
    assert result["received"] == 200
    assert _redis().llen("events") == 4 and _redis().hlen("unacked") == 0


def test_a_queue_of_empty_messages_cannot_make_a_run_take_more_than_its_limit(store_settings, engine):
    from worker import ingest

    _publish(*[([[]], {}) for _ in range(450)])
    result = ingest.ingest.apply(args=[[]]).result
    assert result["received"] == 0
    assert _redis().llen("events") == 450 - 199 and _redis().hlen("unacked") == 0


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400, -5, "3", True, None, [1]])
def test_a_forged_attempt_or_enqueued_at_is_read_as_a_default_not_a_crash(value):
    """Found by the fuzz test: a message with kwargs {"attempt": Infinity} (JSON can carry it)
    made the ingest task raise before it could keep the message."""
    from worker.ingest import read
    from worker.tasks import TRANSIENT_MAX_RETRIES

    m = read([[{"x": 1}]], {"attempt": value, "enqueued_at": value})
    assert m.attempt == 0 and m.events == [{"x": 1}] and m.enqueued_at > 1e9
    assert read([[]], {"attempt": 1e300}).attempt == TRANSIENT_MAX_RETRIES


def test_an_ingest_message_that_fails_before_its_body_reads_it_is_dead_lettered(store_settings, engine):
    from worker.ingest import ingest

    ingest.on_failure(RuntimeError("boom"), "task-1", ([{"identityPoolId": POOL}],), {"attempt": 3}, None)
    with session_scope(engine) as s:
        (dl,) = repo.list_dead_letters(s, 10)
    assert dl["kind"] == "message" and "RuntimeError" in dl["reason"]
    assert dl["payload"]["message"] == {"args": [[{"identityPoolId": POOL}]], "kwargs": {"attempt": 3}}
