"""Short lane runs while light pools publish (worker.lanes, CONTENDED_SHARE), at the shipped run
size, and the marks they are decided by when Redis holds something else under them (real Redis
database 7, store: SQLite and PostgreSQL)."""

from __future__ import annotations

from worker import lanes

from ..conftest import POOL, POOL2
from .test_lanes import ROOM, _accepted, _b_event, _flood, _ident, _once, _pools


def test_with_the_shipped_run_size_a_run_beside_light_ones_takes_one_message_of_a_backlog(run, engine):
    """A tenth of 200 events is less than one of publish_many's messages: the short run is one
    message of 100 events (a run never takes less than one), and whole runs come back after
    LIGHT_RECENT."""
    _pools(engine, POOL, POOL2)
    assert run.ctx.settings.ingest_batch_max == 200 and lanes.CONTENDED_SHARE * 200 < 100
    for m in range(20):
        run.publish([{"identityPoolId": POOL, "identityId": _ident(m * 100 + k), "datasetName": "notes",
                      "syncCount": 1} for k in range(100)])
    _once(run)  # A's lane opens
    _b_event(run, 0)
    _once(run)  # B's light run: it takes from the lanes, so light pools publish
    assert _accepted(engine, POOL2) == 1
    before = _accepted(engine, POOL)
    _once(run)
    assert _accepted(engine, POOL) - before == 100
    run.clock.advance(lanes.LIGHT_RECENT + 0.01)
    before = _accepted(engine, POOL)
    _once(run)
    assert _accepted(engine, POOL) - before == 200


def test_a_mark_of_another_type_is_no_mark_and_fails_no_take(run, engine):
    """Something else under either mark (a hash, not a time): runs take from the lanes as if no
    mark were there, light runs their share, whole runs their room; neither take fails."""
    _pools(engine, POOL, POOL2)
    run.set(ingest_batch_max=ROOM)
    _flood(run, POOL, 60)
    _once(run)
    for n, key in enumerate((lanes.LANES_FULL, lanes.LANES_LIGHT)):
        _only(run, key)
        before = _accepted(engine, POOL)
        _b_event(run, n)
        _once(run)  # light: a tenth of its room from the lanes
        assert _accepted(engine, POOL) == before + 1
        _only(run, key)
        before = _accepted(engine, POOL)
        _once(run)  # not light: its whole room
        assert _accepted(engine, POOL) == before + ROOM


def _only(run, key: str) -> None:
    """No mark but a hash under ``key``."""
    run.ctx.redis.delete(lanes.LANES_FULL, lanes.LANES_LIGHT)
    run.ctx.redis.hset(key, "not", "a time")
