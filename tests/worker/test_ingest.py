"""An ingest run's whole life against a real Redis (database 7) and a real store: messages that
producers publish onto ``events``, taken atomically by the run, read, committed and acknowledged;
every way a message or a flush member can fail ends as a dead letter of its own, a deferral or a
skip, and nothing ever exists twice."""

from __future__ import annotations

import json

import sqlalchemy.exc

from pushsync.contract import Key
from store import repo
from store.db import session_scope
from worker import ingest, intake, metrics

from ..conftest import IDENT, POOL
from .conftest import _ev, _letters, _nothing_left, _once, _seeded, repo_device


def test_a_micro_batch_the_store_refuses_goes_again_event_by_event(run, engine, monkeypatch):
    idents = _seeded(engine, 2)
    real = repo.accept

    def refuses_the_second(session, events, lock=(), lead=()):
        if any(e.identity == idents[1] for e in events):  # as PostgreSQL refuses a value
            raise sqlalchemy.exc.DataError("INSERT INTO datasets ...", {}, ValueError("value refused by the store"))
        return real(session, events, lock, lead)

    monkeypatch.setattr(repo, "accept", refuses_the_second)
    result = run.ingest([_ev(i, 3) for i in idents])
    assert (result["notified"], result["dead_lettered"]) == (1, 1)
    assert [item[0] for b in run.queued for item in b["items"]] == [repo_device(engine, idents[0])]
    [letter] = _letters(engine)
    assert letter["reason"] == "refused by the store: ValueError: value refused by the store"
    assert letter["payload"]["identityId"] == idents[1] and _nothing_left(run)


def test_a_run_takes_every_waiting_message_reads_each_and_acknowledges_all(run, engine, monkeypatch):
    """Single-event messages, a two-event one, junk arguments, a countdown (taken at once), a
    message of another task, one that is not JSON, one that says pickle, all waiting in Redis: one
    run, one accept statement, every good event notified, each bad one a dead letter of its own,
    nothing left on the list or in flight."""
    idents = _seeded(engine, 4)
    calls = []
    real = repo.accept
    monkeypatch.setattr(repo, "accept", lambda s, events, lock=(), lead=(): calls.append(len(events))
                        or real(s, events, lock, lead))
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
    monkeypatch.setattr(ingest.random, "uniform", lambda _low, high: high)  # the jitter's longest wait
    run.publish([_ev(idents[0])])
    run.publish([_ev(idents[1]), _ev(idents[1], ds="other")])
    _store_down(run, monkeypatch)
    c = run.ctx.redis
    for attempt in range(1, 4):
        _once(run)
        assert c.llen("events") == 0 and c.hlen(intake.INFLIGHT) == 2 and c.zcard(intake.DUE) == 2
        assert sorted(int(v) for v in c.hvals(intake.ATTEMPTS)) == [attempt, attempt]
        assert _once(run) == ingest.IngestResult().as_dict()  # not due yet: nothing taken
        run.clock.advance(run.ctx.settings.ingest_retry_cap + 1)
    # out of tries while the store is still away: they wait, once each, and nothing is lost
    for mid in c.hkeys(intake.ATTEMPTS):
        c.hset(intake.ATTEMPTS, mid, run.ctx.settings.ingest_tries - 1)
    _once(run)
    assert c.hlen(intake.INFLIGHT) == 2 and c.llen("events") == 0
    run.clock.advance(run.ctx.settings.ingest_retry_cap + 1)
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
    assert all(d["reason"].startswith(f"out of tries: {run.ctx.settings.ingest_tries} tries: OperationalError")
               for d in letters)
    assert _nothing_left(run)


def test_a_store_back_before_the_tries_run_out_delivers_every_event_once(run, engine, monkeypatch):
    idents = _seeded(engine, 2)
    real_scope = run.ctx.session_scope
    run.publish([_ev(i) for i in idents])
    _store_down(run, monkeypatch)
    _once(run)
    monkeypatch.setattr(run.ctx, "session_scope", real_scope)
    run.clock.advance(run.ctx.settings.ingest_retry_cap + 1)
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
    # the rest it looked at waits in its pool's lane (worker.lanes), none of it in flight
    assert run.ctx.lanes.depth() == {POOL: 3} and run.ctx.redis.hlen(intake.INFLIGHT) == 0
    run.ctx.redis.flushdb()
    for n in range(300):
        run.publish([_ev(IDENT, n, ds="one")])
    assert _once(run)["received"] == 200


def test_a_queue_of_empty_messages_cannot_make_a_run_take_more_than_its_limit(run, engine):
    for _ in range(450):
        run.publish([])
    assert _once(run)["received"] == 0
    # 200 worked on; the rest it looked at (they name no pool) waits in the lane of no pool
    assert run.ctx.lanes.depth() == {"": 450 - 200} and run.ctx.redis.hlen(intake.INFLIGHT) == 0


def test_a_run_that_dies_between_its_commit_and_its_sends_has_its_pushes_sent_by_the_next(run, engine,
                                                                                         monkeypatch):
    """The run committed (the count is planned, the batch in the outbox) and died before it sent
    or acknowledged anything: when its message is taken again, the count that is still planned goes
    out again, without waiting for the outbox's re-send."""
    idents = _seeded(engine, 1)
    run.publish([_ev(idents[0], 7)])
    with monkeypatch.context() as m:
        m.setattr(run.ctx.intake, "ack", lambda *a, **k: None)  # it dies: nothing acknowledged
        m.setattr(run.ctx.publish, "deliver", lambda batch: None)  # ...and nothing sent
        assert _once(run)["notified"] == 1
    assert run.queued == []
    run.clock.advance(run.ctx.settings.visibility_timeout + 1)
    result = _once(run)
    assert result["stale"] == 1  # its count was taken already...
    assert [item[3] for b in run.queued for item in b["items"]] == [7]  # ...and is pushed again
    assert _nothing_left(run)


def test_a_message_celerys_own_consumer_hands_over_is_run_not_discarded(run, engine):
    """A worker made to consume ``events`` with Celery's consumer (add_consumer) gets ingest
    messages as tasks: they are run like any other, not dropped as unregistered tasks."""
    from worker.ingest import run_handed

    idents = _seeded(engine, 1)
    result = run_handed(run.ctx, ([_ev(idents[0], 3)],), {"enqueued_at": 1.0}, metrics.Recorder())
    assert result.notified == 1 and [item[3] for b in run.queued for item in b["items"]] == [3]


def test_a_run_out_of_time_or_meeting_redis_away_defers_its_messages_and_counts_no_death(run, engine,
                                                                                        monkeypatch):
    """The soft time limit inside the transaction (a slow store), or Redis gone for a moment
    after the take: the messages are deferred as a store outage's are, not dead-lettered as a
    bug's, and not left to their lease (which would count a death against them)."""
    import redis as redis_lib
    from celery.exceptions import SoftTimeLimitExceeded

    from worker import coalesce, plan

    idents = _seeded(engine, 1)
    run.set(coalesce_window=1.0)
    real_plan, real_enter = plan.micro_batch, coalesce.Windows.enter
    run.publish([_ev(idents[0], 1)])
    monkeypatch.setattr(plan, "micro_batch", lambda *a, **k: (_ for _ in ()).throw(SoftTimeLimitExceeded()))
    _once(run)
    monkeypatch.setattr(plan, "micro_batch", real_plan)
    blips = []

    def redis_away_once(self, widths, now=None):
        if not blips:
            blips.append(1)
            raise redis_lib.ConnectionError("Connection reset by peer")
        return real_enter(self, widths, now)

    monkeypatch.setattr(coalesce.Windows, "enter", redis_away_once)
    run.clock.advance(run.ctx.settings.ingest_retry_cap + 1)
    _once(run)
    c = run.ctx.redis
    [mid] = c.hkeys(intake.INFLIGHT)
    assert int(c.hget(intake.ATTEMPTS, mid)) == 2 and not c.hget(intake.ABANDONS, mid)
    assert not c.sismember(intake.LEASED, mid) and _letters(engine) == []
    run.clock.advance(run.ctx.settings.ingest_retry_cap + 1)
    assert _once(run)["notified"] == 1 and _nothing_left(run)


def test_a_handed_message_that_fails_for_good_keeps_its_events(run, engine):
    from worker.tasks import ingest_handed

    ingest_handed.on_failure(RuntimeError("boom"), "t-1", ([_ev(IDENT, 4)],), {}, None)
    [letter] = _letters(engine)
    assert letter["kind"] == "event" and letter["payload"]["syncCount"] == 4
    assert letter["reason"] == "failed: RuntimeError: boom in pushsync.ingest"


def test_the_dispatcher_backs_off_while_the_broker_refuses_its_triggers():
    import threading
    import time as time_lib

    from worker.dispatch import Dispatcher

    class Busy:
        def status(self):
            return True, 0, None

    calls = []
    d = Dispatcher(Busy(), lambda: calls.append(1) or False)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    time_lib.sleep(2.2)
    d.stop()
    t.join(3)
    assert 1 <= len(calls) <= 4, len(calls)  # once a second, not in a loop
