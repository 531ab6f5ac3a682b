"""An ingest run's whole life against a real Redis (database 7) and a real store: messages that
producers publish onto ``events``, taken atomically by the run, read, committed and acknowledged;
every way a message or a flush member can fail ends as a dead letter of its own, a deferral or a
skip, and nothing ever exists twice."""

from __future__ import annotations

import json

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from pushsync.contract import Key
from store import repo
from store.db import session_scope
from worker import coalesce, envelope, ingest, intake, metrics

from ..conftest import IDENT, POOL
from . import harness
from .test_plan import FCM_ONLY


@pytest.fixture
def run(store_settings, engine):
    r = harness.Run(store_settings)
    r.build(harness.Clock())
    r.set(inline_delivery_max=0)  # every batch to the queues, to see them
    r.ctx.redis.flushdb()
    yield r
    r.ctx.redis.flushdb()


def _seeded(engine, count=3):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        idents = [f"{IDENT[:-4]}{n:04d}" for n in range(count)]
        for n, ident in enumerate(idents):
            repo.subscribe(s, POOL, ident, ["notes"], repo.register_device(s, POOL, ident, "GCM", f"tok-{n}"))
    return idents


def _ev(ident, n=4, ds="notes"):
    return {"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n}


def _once(run) -> dict:
    return ingest.run(run.ctx, metrics.Recorder()).as_dict()


def _nothing_left(run) -> bool:
    c = run.ctx.redis
    return all(c.llen(q) == 0 for q in intake.PRIORITY_LISTS) and c.zcard(intake.DUE) == 0 \
        and c.hlen(intake.INFLIGHT) == 0 and c.scard(intake.LEASED) == 0


def _letters(engine) -> list[dict]:
    with session_scope(engine) as s:
        return repo.list_dead_letters(s)


def test_a_micro_batch_the_store_refuses_goes_again_event_by_event(run, engine, monkeypatch):
    idents = _seeded(engine, 2)
    real = repo.accept

    def refuses_the_second(session, events, lock=()):
        if any(e.identity == idents[1] for e in events):  # as PostgreSQL refuses a value
            raise sqlalchemy.exc.DataError("INSERT INTO datasets ...", {}, ValueError("value refused by the store"))
        return real(session, events, lock)

    monkeypatch.setattr(repo, "accept", refuses_the_second)
    result = run.ingest([_ev(i, 3) for i in idents])
    assert (result["notified"], result["dead_lettered"]) == (1, 1)
    assert [item[0] for b in run.queued for item in b["items"]] == [repo_device(engine, idents[0])]
    [letter] = _letters(engine)
    assert letter["reason"] == "refused by the store: ValueError: value refused by the store"
    assert letter["payload"]["identityId"] == idents[1] and _nothing_left(run)


def repo_device(engine, ident):
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM devices WHERE identity_id = :i"), {"i": ident}).scalar_one()


def test_a_run_takes_every_waiting_message_reads_each_and_acknowledges_all(run, engine, monkeypatch):
    """Single-event messages, a two-event one, junk arguments, a countdown (taken at once), a
    message of another task, one that is not JSON, one that says pickle, all waiting in Redis: one
    run, one accept statement, every good event notified, each bad one a dead letter of its own,
    nothing left on the list or in flight."""
    idents = _seeded(engine, 4)
    calls = []
    real = repo.accept
    monkeypatch.setattr(repo, "accept", lambda s, events, lock=(): calls.append(len(events)) or real(s, events, lock))
    run.publish([_ev(idents[0])], enqueued_at=1.0)
    run.publish([_ev(i) for i in idents[1:3]])
    run.publish(["junk"])
    from pushsync.queues import producer_app

    producer_app().send_task("pushsync.ingest", args=[[_ev(idents[3])]], queue="events", countdown=30)
    producer_app().send_task("pushsync.something_else", args=[1], queue="events")
    run.ctx.redis.lpush("events", b"\xff\xfe not json", json.dumps({"content-type": "application/x-python-serialize",
                                                                   "body": "gASV", "headers": {}}))
    result = _once(run)
    assert (result["received"], result["notified"], result["invalid"]) == (5, 4, 1)
    assert calls == [4]
    assert sorted(item[0] for b in run.queued for item in b["items"]) == sorted(repo_device(engine, i) for i in idents)
    assert _nothing_left(run)
    reasons = sorted(d["reason"].split(":")[0] for d in _letters(engine))
    assert reasons == ["invalid event", "not an ingest task", "unreadable message", "unreadable message"]
    [pickle] = [d for d in _letters(engine) if "only JSON" in d["reason"]]
    assert pickle["kind"] == "message" and pickle["payload"]["message"]["raw"].startswith('{"content-type"')


def test_a_message_over_the_limit_is_refused_whole_and_the_rest_of_the_run_goes_on(run, engine):
    idents = _seeded(engine, 2)
    run.set(max_events_per_message=2)
    run.publish([_ev(idents[0], n) for n in range(3)])
    run.publish([_ev(idents[1], 1)])
    result = _once(run)
    assert (result["notified"], result["dead_lettered"]) == (1, 3)
    letters = _letters(engine)
    assert len(letters) == 3 and all(d["reason"].startswith("too many events: the message holds 3") for d in letters)
    with session_scope(engine) as s:
        assert repo.counts(s, Key(POOL, idents[0], "notes")) == (None, None)


def _store_down(run, monkeypatch):
    def down(*_a, **_k):
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("store down"))

    monkeypatch.setattr(run.ctx, "session_scope", down)


def test_a_store_out_of_reach_defers_each_message_once_and_nothing_exists_twice(run, engine, monkeypatch):
    """Problem 3 of the rebuilt ingest: a message is never both published again and requeued.
    Deferred messages stay in flight, due after their backoff, their tries counted; out of tries,
    their events are dead-lettered; when even that cannot be written, they wait and try again."""
    idents = _seeded(engine, 2)
    real_scope = run.ctx.session_scope
    run.publish([_ev(idents[0])])
    run.publish([_ev(idents[1]), _ev(idents[1], ds="other")])
    _store_down(run, monkeypatch)
    c = run.ctx.redis
    for attempt in range(1, 4):
        _once(run)
        assert c.llen("events") == 0 and c.hlen(intake.INFLIGHT) == 2 and c.zcard(intake.DUE) == 2
        assert sorted(int(v) for v in c.hvals(intake.ATTEMPTS)) == [attempt, attempt]
        assert _once(run) == ingest.IngestResult().as_dict()  # not due yet: nothing taken
        run.clock.advance(ingest.RETRY_WAIT_MAX + 1)
    # out of tries while the store is still away: they wait, once each, and nothing is lost
    for mid in c.hkeys(intake.ATTEMPTS):
        c.hset(intake.ATTEMPTS, mid, ingest.MAX_TRIES - 1)
    _once(run)
    assert c.hlen(intake.INFLIGHT) == 2 and c.llen("events") == 0
    run.clock.advance(ingest.RETRY_WAIT_MAX + 1)
    calls = []

    def the_batch_fails_the_dead_letters_go_in():
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("store down"))
        return real_scope()

    monkeypatch.setattr(run.ctx, "session_scope", the_batch_fails_the_dead_letters_go_in)
    _once(run)
    letters = _letters(engine)
    assert sorted(d["payload"]["identityId"] for d in letters) == sorted([idents[0], idents[1], idents[1]])
    assert all(d["reason"].startswith(f"out of tries: {ingest.MAX_TRIES} tries: OperationalError") for d in letters)
    assert _nothing_left(run)


def test_a_store_back_before_the_tries_run_out_delivers_every_event_once(run, engine, monkeypatch):
    idents = _seeded(engine, 2)
    real_scope = run.ctx.session_scope
    run.publish([_ev(i) for i in idents])
    _store_down(run, monkeypatch)
    _once(run)
    monkeypatch.setattr(run.ctx, "session_scope", real_scope)
    run.clock.advance(ingest.RETRY_WAIT_MAX + 1)
    assert _once(run)["notified"] == 2 and _nothing_left(run)
    assert sorted(item[0] for b in run.queued for item in b["items"]) == sorted(repo_device(engine, i) for i in idents)


def test_a_run_of_large_messages_takes_only_what_fills_its_events(run, engine):
    """PUSHSYNC_INGEST_BATCH_MAX counts events: with 100-event messages a run takes two, not 200
    (which would be 20,000 events in one transaction); with single-event ones, 200."""
    _seeded(engine, 1)
    big = [_ev(IDENT, 1, ds=f"d{n}") for n in range(100)]
    for _ in range(5):
        run.publish(big)
    assert _once(run)["received"] == 200
    assert run.ctx.redis.llen("events") == 3 and run.ctx.redis.hlen(intake.INFLIGHT) == 0
    run.ctx.redis.delete("events")
    for n in range(300):
        run.publish([_ev(IDENT, n, ds="one")])
    assert _once(run)["received"] == 200


def test_a_queue_of_empty_messages_cannot_make_a_run_take_more_than_its_limit(run, engine):
    for _ in range(450):
        run.publish([])
    assert _once(run)["received"] == 0
    assert run.ctx.redis.llen("events") == 450 - 200 and run.ctx.redis.hlen(intake.INFLIGHT) == 0


def test_a_message_whose_runs_die_is_taken_alone_then_dead_lettered(run, engine):
    """A message that kills every run that takes it (nothing acknowledges it): once the lease ends
    it is taken again, alone, so its neighbour's run goes through; after MAX_ABANDONS deaths it is
    dead-lettered and acknowledged."""
    idents = _seeded(engine, 2)
    run.publish([_ev(idents[0])])  # the poison
    run.publish([_ev(idents[1])])
    lease = run.ctx.settings.visibility_timeout + 1
    c = run.ctx.redis
    taken = run.ctx.intake.take(10, 0)  # the run that dies
    poison = taken.messages[0].id
    assert len(taken.messages) == 2
    notified = 0
    for _ in range(10):
        run.clock.advance(lease)
        if not c.zcard(intake.DUE):
            break
        first = c.zrange(intake.DUE, 0, 0)[0].decode()
        if first == poison and int(c.hget(intake.ABANDONS, poison) or 0) + 1 < intake.MAX_ABANDONS:
            again = run.ctx.intake.take(10, 0)  # and this run dies too
            assert [m.id for m in again.messages] == [poison] and again.alone
        else:
            result = _once(run)
            notified += result["notified"]
    assert notified == 1  # the neighbour, on its own
    [letter] = _letters(engine)
    assert letter["reason"].startswith("run never finished: taken by 3 runs")
    assert letter["payload"]["identityId"] == idents[0] and _nothing_left(run)


@pytest.mark.parametrize("raw", [
    b"[" * 5_000 + b"]" * 5_000,  # nested past Python's recursion limit
    json.dumps({"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "content-encoding": "utf-8",
                "headers": {"task": "pushsync.ingest", "x": "\udcff"},
                "properties": {"delivery_tag": "t", "body_encoding": "base64"}}).encode().replace(b"\\udcff",
                                                                                                   b"\xff"),
    b'{"body": 0x0, "headers": {"task": "pushsync.ingest"}, "properties": {"delivery_tag": "t"}}',
    b"\x00\x01\x02",
])
def test_bytes_python_cannot_read_become_a_bounded_dead_letter_and_the_neighbours_go_on(run, engine, raw):
    """Problem 4: a message that Lua's cjson reads and Python does not (or nobody reads) is
    dead-lettered raw and acknowledged; the good messages beside it are notified, in the same run."""
    idents = _seeded(engine, 2)
    run.publish([_ev(idents[0])])
    run.ctx.redis.lpush("events", raw)
    run.publish([_ev(idents[1])])
    result = _once(run)
    assert result["notified"] == 2
    [letter] = _letters(engine)
    assert letter["kind"] == "message" and letter["reason"].startswith("unreadable message")
    assert letter["payload"]["message"]["length"] == len(raw)
    assert len(letter["payload"]["message"]["raw"]) <= 16_384 and _nothing_left(run)


def test_flush_members_python_cannot_read_are_dead_lettered_and_the_good_flushes_run(run, engine):
    """Problem 5: junk in the flush set (bad UTF-8, not a key, a pool id that breaks the rules) is
    dead-lettered and removed; the good flush due with it plans its count."""
    idents = _seeded(engine, 1)
    run.set(coalesce_window=1.0)
    run.ingest([_ev(idents[0], 1)])
    run.ingest([_ev(idents[0], 2)])  # held
    c = run.ctx.redis
    c.zadd(coalesce.FLUSH, {b"\xff\xfe": 0, b"only two": 0, b"x y z": 0, b"[" * 5000: 0})
    run.clock.advance(2)
    run.queued.clear()
    result = _once(run)
    assert result["window_flushed"] == 1
    assert [item[3] for b in run.queued for item in b["items"]] == [2]
    letters = _letters(engine)
    assert len(letters) == 4 and all(d["reason"].startswith("unreadable message: flush set") for d in letters)
    assert c.zcard(coalesce.FLUSH) == 0


def test_a_forged_enqueued_at_is_read_as_now_and_a_priority_message_is_taken(run, engine):
    from pushsync.queues import producer_app

    idents = _seeded(engine, 1)
    for value in (float("inf"), float("nan"), 10**400, -5, "3", True, None, [1]):
        m = envelope.read(intake.InFlight("1", json.dumps(_kombu(value)).encode(), 0, 0), now=1e9)
        assert isinstance(m, envelope.Message) and m.enqueued_at == 1e9 and m.events == []
    # kombu keeps a priority's messages in lists of their own, named as intake.PRIORITY_LISTS says
    producer_app().send_task("pushsync.ingest", args=[[_ev(idents[0])]], queue="events", priority=5)
    assert run.ctx.redis.llen(intake.PRIORITY_LISTS[1]) == 1
    assert _once(run)["notified"] == 1 and _nothing_left(run)


def _kombu(enqueued_at) -> dict:
    import base64

    body = base64.b64encode(json.dumps([[[]], {"enqueued_at": enqueued_at}, {}], default=str).encode()).decode()
    return {"body": body, "content-type": "application/json", "headers": {"task": "pushsync.ingest"},
            "properties": {"delivery_tag": "x", "body_encoding": "base64"}}
