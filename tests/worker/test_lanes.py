"""Fairness between pools at ingest (worker.lanes): a pool's backlog waits in its own lane, a pool
without one is worked on by the next run, backlogs are served in turn, and nothing is lost on the
way: not when a run is killed between its take and its filing, not when Redis refuses (real
Redis database 7, store: SQLite and PostgreSQL, the shipped settings but a small run)."""

from __future__ import annotations

import redis
from sqlalchemy import text

from store import repo
from store.db import session_scope
from worker import ingest, intake, lanes, metrics
from worker.intake import LANE, LANES

from ..conftest import IDENT, POOL, POOL2
from .conftest import FCM_ONLY, _nothing_left

POOL3 = "ap-south-1:00000000-0000-4000-8000-000000000c0c"
ROOM = 10  # events per run


def _pools(engine, *pools) -> None:
    with session_scope(engine) as s:
        for pool in pools:
            repo.upsert_pool(s, pool, fcm_service_account=FCM_ONLY)


def _ident(n: int) -> str:
    return f"{IDENT[:-6]}{n:06d}"


def _flood(run, pool: str, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        run.publish({"identityPoolId": pool, "identityId": _ident(k), "datasetName": "notes", "syncCount": 1})


def _accepted(engine, pool: str) -> int:
    with session_scope(engine) as s:
        return s.execute(text("SELECT count(*) FROM datasets WHERE pool_id = :p AND sync_count IS NOT NULL"),
                         {"p": pool}).scalar_one()


def _once(run) -> dict:
    return ingest.run(run.ctx, metrics.Recorder()).as_dict()


def test_an_event_of_a_pool_without_a_backlog_is_worked_on_by_the_next_run_whatever_another_queued(run, engine):
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 40)  # four runs' worth
    _flood(run, POOL2, 1)  # behind all of them on ``events``
    _once(run)  # the pools it looked at in turn: B's one event, nine of A's; A's other 31 in its lane
    assert (_accepted(engine, POOL2), _accepted(engine, POOL)) == (1, 9)
    assert run.ctx.lanes.depth() == {POOL: 31}
    _once(run)  # nothing light: the lane's run, a whole room of A's
    assert _accepted(engine, POOL) == 19
    # A's backlog is in its lane and A keeps publishing: B's next event still goes first, and its
    # run is B's event alone while runs without light messages keep A moving (one just did)
    _flood(run, POOL, 40, start=40)
    _b_event(run, 1)
    _once(run)
    assert _accepted(engine, POOL2) == 2 and _accepted(engine, POOL) == 19
    run.runs()
    assert _accepted(engine, POOL) == 80 and _nothing_left(run)


def _b_event(run, n: int) -> None:
    run.publish({"identityPoolId": POOL2, "identityId": _ident(n), "datasetName": "notes", "syncCount": 1})


def test_when_every_run_is_light_each_gives_a_backlog_its_share(run, engine):
    """No run without light messages for LIGHT_WAIT (a light event before every run): a backlog
    gets a tenth of every light run, however short the runs, not one share per LIGHT_WAIT."""
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 40)
    _once(run)  # a room of A's; its lane opened by a run that had light messages
    assert _accepted(engine, POOL) == ROOM and run.ctx.lanes.depth() == {POOL: 30}
    for n in range(5):  # B's events one at a time, 20 ms apart, each a light run
        run.clock.advance(0.02)
        _b_event(run, n)
        _once(run)
    assert _accepted(engine, POOL2) == 5 and _accepted(engine, POOL) == ROOM + 5  # a tenth of each run
    _once(run)  # a run without light messages while light runs take: a short one, CONTENDED_SHARE of its room
    assert (short := max(1, int(ROOM * lanes.CONTENDED_SHARE))) < ROOM and _accepted(engine, POOL) == ROOM + 5 + short
    _b_event(run, 5)
    _once(run)  # it took from the lanes a moment ago: B's run is B's alone
    assert _accepted(engine, POOL2) == 6 and _accepted(engine, POOL) == ROOM + 5 + short
    run.clock.advance(lanes.LIGHT_WAIT + 0.01)  # none for LIGHT_WAIT: light runs take their share again
    _b_event(run, 6)
    _once(run)
    assert _accepted(engine, POOL2) == 7 and _accepted(engine, POOL) == ROOM + 6 + short
    run.clock.advance(lanes.LIGHT_RECENT + 0.01)  # no light run for LIGHT_RECENT: whole runs again
    _once(run)
    assert _accepted(engine, POOL) == 2 * ROOM + 6 + short
    run.runs()
    assert _accepted(engine, POOL) == 40 and _nothing_left(run)


def test_a_future_or_unreadable_time_of_the_last_whole_take_does_not_stop_light_runs_sharing(run, engine):
    """Redis's clock gone back (a failover to a replica behind) or bytes not ours under the key:
    light runs take their share as if no such take were known (and whole runs their room, below)."""
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 40)
    _once(run)
    for n, value in enumerate((int((run.clock() + 60) * 1000), "not a time")):
        run.ctx.redis.set(lanes.LANES_FULL, value)
        before = _accepted(engine, POOL)
        _b_event(run, n)
        _once(run)
        assert _accepted(engine, POOL) == before + 1
    for value in (int((run.clock() + 60) * 1000), "not a time"):
        run.ctx.redis.set(lanes.LANES_LIGHT, value)
        before = _accepted(engine, POOL)
        _once(run)
        assert _accepted(engine, POOL) == before + ROOM


def test_with_the_shipped_run_size_a_burst_of_large_messages_is_looked_past_in_ten_runs(run, engine):
    """The fairness benchmark's flood: another pool publishes 100 events to a message (publish_many),
    1,000 messages in a burst; an event published behind them is worked on by the tenth run or
    sooner, not only once a run's room of 200 events has crept to it (the 500th)."""
    _pools(engine, POOL, POOL2)
    room = run.ctx.settings.ingest_batch_max
    assert room == 200  # the shipped size
    for m in range(1000):
        run.publish([{"identityPoolId": POOL, "identityId": _ident(m * 100 + k), "datasetName": "notes",
                      "syncCount": 1} for k in range(100)])
    run.publish({"identityPoolId": POOL2, "identityId": _ident(0), "datasetName": "notes", "syncCount": 1})
    runs = next(k for k in range(1, 501) if _once(run) is not None and _accepted(engine, POOL2))
    assert runs <= 11  # a run looks past about 100 messages of 100 events
    assert run.ctx.redis.llen("events") == 0 and run.ctx.lanes.depth()[POOL] > 900


def test_backlogs_are_served_in_turn_and_each_gets_its_share(run, engine):
    _pools(engine, POOL, POOL2, POOL3)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 30)
    _flood(run, POOL2, 30, start=100)
    _flood(run, POOL3, 30, start=200)
    _once(run)  # A and B in turn, the rest of the look-ahead filed in their lanes
    _once(run)  # C in turn (it had no lane), the rest of it filed: three lanes
    assert set(run.ctx.lanes.depth()) == {POOL, POOL2, POOL3}
    before = {p: _accepted(engine, p) for p in (POOL, POOL2, POOL3)}
    for _ in range(3):
        _once(run)
    gained = {p: _accepted(engine, p) - before[p] for p in before}
    assert all(9 <= n <= 11 for n in gained.values()), gained  # a third of every run each, not A's first
    run.runs()
    assert {p: _accepted(engine, p) for p in before} == {POOL: 30, POOL2: 30, POOL3: 30}
    assert _nothing_left(run) and run.ctx.redis.zcard(LANES) == 0
    assert not run.ctx.redis.keys(LANE + "*")


def test_the_dispatcher_sees_work_when_only_a_lane_holds_messages(run, engine):
    _pools(engine, POOL)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 30)
    _once(run)
    assert run.ctx.redis.llen("events") == 0 and run.ctx.lanes.depth()[POOL] > 0
    work, _triggers, _due = run.ctx.intake.status()
    assert work


def test_a_run_killed_between_its_take_and_its_filing_loses_nothing(run, engine):
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 30)
    _flood(run, POOL2, 2, start=500)
    # what a run does first; then it dies (SIGKILL): no filing, no ack
    taken = run.ctx.intake.take(ROOM, 0, *lanes.lookahead(ROOM))
    assert len(taken.messages) == 32
    run.clock.advance(run.ctx.settings.visibility_timeout + 1)  # its lease runs out
    run.runs()
    assert (_accepted(engine, POOL), _accepted(engine, POOL2)) == (30, 2)
    assert _nothing_left(run)


def test_filing_is_fenced_by_the_lease(run, engine):
    _pools(engine, POOL)
    _flood(run, POOL, 3)
    taken = run.ctx.intake.take(ROOM, 0, ROOM, ROOM)
    assert run.ctx.lanes.file({t.id: POOL for t in taken.messages}, taken.lease + 1) == 0  # not its lease
    assert run.ctx.redis.hlen(intake.INFLIGHT) == 3 and run.ctx.redis.zcard(LANES) == 0
    assert run.ctx.lanes.file({t.id: POOL for t in taken.messages}, taken.lease) == 3
    assert run.ctx.redis.hlen(intake.INFLIGHT) == 0 and run.ctx.lanes.depth() == {POOL: 3}


def test_redis_refusing_the_filing_makes_the_run_take_all_it_looked_at(run, engine, monkeypatch):
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 15)

    def refuse(*_a, **_k):
        raise redis.ResponseError("OOM command not allowed")
    monkeypatch.setattr(run.ctx.lanes, "file", refuse)
    _once(run)
    assert _accepted(engine, POOL) == 15 and _nothing_left(run)


def test_messages_that_name_no_pool_are_read_in_turn_and_dead_lettered(run, engine):
    _pools(engine, POOL)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 20)
    run.ctx.redis.lpush("events", b"not a celery message", b'{"body": 5}')
    _flood(run, POOL, 5, start=20)
    run.runs()
    assert _accepted(engine, POOL) == 25 and _nothing_left(run)
    with session_scope(engine) as s:
        assert len([d for d in repo.list_dead_letters(s) if d["kind"] == "message"]) == 2


def test_pool_of_reads_the_first_events_pool_and_nothing_else(run, engine):
    _flood(run, POOL, 1)
    run.ctx.redis.lpush("events", b"\xff\xfe", b'{"body": "W10=", "properties": {"body_encoding": "base64"}}')
    taken = run.ctx.intake.take(ROOM, 0, ROOM, ROOM)
    assert sorted(lanes.pool_of(t) for t in taken.messages) == ["", "", POOL]


def test_redis_refusing_the_lanes_take_leaves_what_was_filed_for_the_next_runs(run, engine, monkeypatch):
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 30)
    _once(run)  # A's backlog in its lane
    _flood(run, POOL2, 1, start=300)

    def refuse(*_a, **_k):
        raise redis.ConnectionError("gone")
    with monkeypatch.context() as m:
        m.setattr(run.ctx.lanes, "take", refuse)
        assert _once(run)["received"] == 1  # B's event; A's lane is left as it was, not worked on twice
    assert run.ctx.lanes.depth() == {POOL: 20}
    run.runs()
    assert (_accepted(engine, POOL), _accepted(engine, POOL2)) == (30, 1) and _nothing_left(run)



def _envelope(body: str, **headers) -> bytes:
    import base64
    import json

    return json.dumps({"body": base64.b64encode(body.encode()).decode(), "content-type": "application/json",
                       "headers": {"task": "pushsync.ingest", **headers},
                       "properties": {"body_encoding": "base64"}}).encode()


def test_the_look_ahead_reads_a_messages_pool_from_the_start_of_its_body_and_never_reads_it_whole(run):
    import json

    from pushsync.queues import producer_app
    from worker import envelope
    from worker.intake import InFlight

    ev = {"identityPoolId": POOL2, "identityId": _ident(1), "datasetName": "notes", "syncCount": 1}
    run.publish(ev)  # one event, as a Celery client sends it
    run.publish([dict(ev, identityId=_ident(k)) for k in range(100)])  # 100, as publish_many does
    for kind in ("zlib", "bzip2", "lzma"):
        producer_app().send_task("pushsync.ingest", args=[[ev]], queue="events", compression=kind)
    plain, many, gzip, bz2, lzma = reversed(run.ctx.redis.lrange("events", 0, -1))
    for raw in (plain, many, gzip, bz2, lzma):  # compressed: the first 4 KB unpacked
        assert envelope.first_pool(raw) == POOL2
    decoy = dict(ev, identityPoolId=POOL, identityId=_ident(2))
    others = [
        # the first pool escaped, a second event after it: not the second event's pool
        json.dumps([[[ev, decoy]], {}, {}]).replace("eu-west", "eu\\u002dwest", 1),
        # a pool id anywhere but the first key of the first event
        json.dumps([[[{"identityId": _ident(1), "identityPoolId": POOL2}]], {}, {}]),
        json.dumps([[[{"x": {"identityPoolId": POOL}}, ev]], {}, {}]),
        json.dumps({"task": "pushsync.ingest", "args": [[ev]]}),  # protocol 1
    ]
    for body in others:
        assert envelope.first_pool(_envelope(body)) is None, body
    for raw in (b"\xff not json", b"[1, 2]", json.dumps({"body": "x", "content-type": "application/x-python-"
                                                                                     "serialize"}).encode(),
                _envelope(json.dumps([[[ev]], {}, {}]), compression="application/x-unknown")):
        assert envelope.first_pool(raw) is None
    # a run's look-ahead: the pool where it can be read, else the lane "" (read whole by the run
    # that works on it), never a whole read here
    assert [lanes.pool_of(InFlight("m", raw, 0, 0, len(raw))) for raw in (plain, many, gzip, bz2)] == [POOL2] * 4
    assert [lanes.pool_of(InFlight("m", _envelope(b), 0, 0, 99)) for b in others] == [""] * len(others)


def test_the_look_ahead_unpacks_a_few_kilobytes_of_a_compressed_message_whatever_it_unpacks_to():
    import base64
    import json
    import zlib

    from worker import envelope

    ev = {"identityPoolId": POOL2, "identityId": _ident(1), "datasetName": "notes", "syncCount": 1}
    body = json.dumps([[[ev] * 60_000], {}, {}]).encode()
    assert len(body) > envelope.UNPACKED_MAX  # unpacked whole, it is past what a worker unpacks
    raw = json.dumps({"body": base64.b64encode(zlib.compress(body, 9)).decode(), "content-type": "application/json",
                      "headers": {"task": "pushsync.ingest", "compression": "application/x-gzip"},
                      "properties": {"body_encoding": "base64"}}).encode()
    whole = envelope.read(intake.InFlight("m", raw, 0, 0, len(raw)), now=1e9)
    assert isinstance(whole, envelope.Unreadable) and "unpacks to more than" in whole.why
    assert envelope.first_pool(raw) == POOL2  # its first kilobytes name the pool
