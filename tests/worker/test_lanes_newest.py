"""The look at the newest messages (worker.lanes, NEWEST): a light pool's event published while
another pool's burst is still on ``events`` is taken by the next run, not once the runs have filed
the burst in front of it; the laned pool's messages stay where they are; and nothing is lost when
a run dies after such a take (real Redis database 7, store: SQLite and PostgreSQL, the shipped
run size)."""

from __future__ import annotations

from sqlalchemy import text

from pushsync import client
from store import repo
from store.db import session_scope
from worker import ingest, lanes, metrics

from ..conftest import IDENT, POOL, POOL2
from .conftest import FCM_ONLY, _nothing_left


def _pools(engine) -> None:
    with session_scope(engine) as s:
        for pool in (POOL, POOL2):
            repo.upsert_pool(s, pool, fcm_service_account=FCM_ONLY)


def _accepted(engine, pool: str) -> int:
    with session_scope(engine) as s:
        return s.execute(text("SELECT count(*) FROM datasets WHERE pool_id = :p AND sync_count IS NOT NULL"),
                         {"p": pool}).scalar_one()


def _burst(run, messages: int, first: int = 0) -> None:
    """Pool A's messages of 100 events each, as publish_many sends them."""
    for m in range(first, first + messages):
        run.publish([{"identityPoolId": POOL, "identityId": f"{IDENT[:-6]}{m * 100 + k:06d}", "datasetName": "notes",
                      "syncCount": 1} for k in range(100)])


def _b(run) -> None:
    run.publish([{"identityPoolId": POOL2, "identityId": IDENT, "datasetName": "notes", "syncCount": 1}])


def test_an_event_published_in_another_pools_burst_is_taken_by_the_next_run(run, engine):
    _pools(engine)
    assert run.ctx.settings.ingest_batch_max == 200  # the shipped size
    _burst(run, 400)
    ingest.run(run.ctx, metrics.Recorder())  # A's lane opens; this process now knows it
    assert run.ctx.lanes.laned == [POOL]
    _burst(run, 300, first=400)
    _b(run)  # behind about 600 of A's messages: the look-ahead alone would reach it in the sixth run
    _burst(run, 20, first=700)
    left = run.ctx.redis.llen("events")
    ingest.run(run.ctx, metrics.Recorder())
    assert _accepted(engine, POOL2) == 1
    # of A's messages only the look-ahead's left the list: those on top of B's stayed where they were
    assert left - run.ctx.redis.llen("events") <= 1 + lanes.lookahead(200)[0] // 100 + 2


def test_start_is_how_the_client_writes_a_pools_messages(run):
    """What the look leaves in place is what ``publish`` and ``publish_many`` write; a message it
    does not recognise is only taken and filed (``choose`` reads its pool), never lost."""
    client.publish(POOL, IDENT, "notes", 1)
    client.publish_many([{"identityPoolId": POOL, "identityId": IDENT, "datasetName": f"d{k}", "syncCount": 1}
                         for k in range(100)])
    raws = run.ctx.redis.lrange("events", 0, -1)
    assert len(raws) == 2
    for raw in raws:
        assert raw.startswith(lanes.start(POOL)) and not raw.startswith(lanes.start(POOL2))


def test_a_run_killed_after_taking_from_the_newest_loses_nothing(run, engine):
    _pools(engine)
    _burst(run, 10)
    _b(run)
    _burst(run, 5, first=10)
    # what a run does first, with A laned (a look-ahead of a run's room only); then it dies (SIGKILL)
    taken = run.ctx.intake.take(200, 0, 200, 1000, lanes.NEWEST, [lanes.start(POOL)])
    assert sorted(lanes.pool_of(t) for t in taken.messages) == [POOL2, POOL, POOL]
    assert run.ctx.redis.llen("events") == 13
    run.clock.advance(run.ctx.settings.visibility_timeout + 1)  # its lease runs out
    run.runs()
    assert (_accepted(engine, POOL), _accepted(engine, POOL2)) == (1_500, 1)
    assert _nothing_left(run)


def test_a_pool_that_floods_the_newest_end_opens_its_lane_and_does_not_take_every_run(run, engine):
    """The look takes a run's room and one event more: a pool with more than that at the newest end
    opens its lane (``choose``), so a burst there is not worked on ahead of the other backlogs."""
    _pools(engine)
    run.set(ingest_batch_max=10)
    _burst(run, 3)
    ingest.run(run.ctx, metrics.Recorder())  # A's lane opens
    for k in range(50):  # B's burst, one event to a message, all of it at the newest end
        run.publish([{"identityPoolId": POOL2, "identityId": f"{IDENT[:-6]}{k:06d}", "datasetName": "notes",
                      "syncCount": 1}])
    ingest.run(run.ctx, metrics.Recorder())
    assert _accepted(engine, POOL2) == 10 and run.ctx.lanes.depth().get(POOL2) == 1
    run.runs()
    assert (_accepted(engine, POOL), _accepted(engine, POOL2)) == (300, 50) and _nothing_left(run)
