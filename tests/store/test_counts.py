"""What was accepted and what was planned, per dataset (store.repo.counts), on SQLite and
PostgreSQL: the compare-and-set steps a micro-batch runs, and racing processes that never plan one
count twice."""

from __future__ import annotations

from pushsync.contract import ChangeEvent, Key
from store import repo
from store.db import engine_for, session_scope

from ..conftest import IDENT, IDENT2, POOL
from .conftest import run_racers


def _accept(s, ident, dataset, count, origin=None) -> bool:
    return bool(repo.accept(s, [ChangeEvent(POOL, ident, dataset, count, origin)]))


def test_accept_only_moves_forward_and_plan_takes_what_is_accepted_once(pools):
    k = Key(POOL, IDENT, "ds")
    with session_scope(pools) as s:
        assert _accept(s, IDENT, "ds", 5) is True
        assert _accept(s, IDENT, "ds", 5) is False  # duplicate
        assert _accept(s, IDENT, "ds", 3) is False  # stale
        assert _accept(s, IDENT, "ds", 0) is False
        assert _accept(s, IDENT, "ds", 6, origin="0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b") is True
        assert _accept(s, IDENT2, "ds", 0) is True  # first count, even 0
        assert repo.counts(s, k) == (6, None)
        assert repo.plan(s, [k, Key(POOL, IDENT, "never")]) == {k: (6, "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b")}
        assert repo.plan(s, [k]) == {}  # nothing left to plan
        assert repo.counts(s, k) == (6, 6)
        # what a run that died after its commit may not have sent: the count still planned
        assert repo.still_planned(s, {k: 6}) == {k: (6, "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b")}
        assert _accept(s, IDENT, "ds", 7) is True
        assert repo.counts(s, k) == (7, 6) and repo.still_planned(s, {k: 6}) == {}  # 7 will be pushed
        # the trail's read: many keys in one query, the unknown ones left out
        assert repo.accepted_counts(s, [k, Key(POOL, IDENT2, "ds"), Key(POOL, IDENT, "never")]) == {
            k: 7, Key(POOL, IDENT2, "ds"): 0}


def test_keys_only_locked_by_accept_change_nothing_and_pending_finds_what_was_never_planned(pools):
    from datetime import timedelta

    from store.models import utcnow

    with session_scope(pools) as s:
        _accept(s, IDENT, "held", 3)
        _accept(s, IDENT, "done", 4)
        repo.plan(s, [Key(POOL, IDENT, "done")])
        # a flush's key in the accept statement: its row is locked, nothing moves
        assert repo.accept(s, [], lock=[Key(POOL, IDENT, "held"), Key(POOL, IDENT2, "new")]) == {}
        assert repo.counts(s, Key(POOL, IDENT, "held")) == (3, None)
        assert repo.counts(s, Key(POOL, IDENT2, "new")) == (None, None)
        assert repo.pending(s, utcnow() + timedelta(seconds=1)) == [Key(POOL, IDENT, "held")]
        assert repo.pending(s, utcnow() - timedelta(seconds=60)) == []


def test_a_leading_count_is_planned_by_accept_itself_and_a_held_or_stale_one_is_not(pools):
    """The common case in one statement: a leading edge's count that moves is planned with it; a
    held count leaves the planned one where it was; a stale leading count plans nothing, so what
    an earlier held count left waits for ``plan``."""
    k, held = Key(POOL, IDENT, "lead"), Key(POOL, IDENT, "held")
    with session_scope(pools) as s:
        assert repo.accept(s, [ChangeEvent(*k, 5, "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b")], lead=[k]) == {
            k: (5, "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b")}
        assert repo.counts(s, k) == (5, 5) and repo.plan(s, [k]) == {}
        assert repo.accept(s, [ChangeEvent(*k, 7)]) == {k: (7, None)}  # held: accepted, not planned
        assert repo.counts(s, k) == (7, 5)
        assert repo.accept(s, [ChangeEvent(*k, 6)], lead=[k]) == {}  # stale: nothing moves
        assert repo.counts(s, k) == (7, 5)
        assert repo.plan(s, [k]) == {k: (7, None)}
        assert repo.accept(s, [ChangeEvent(*held, 2)], lead=[k]) == {held: (2, None)}  # not leading
        assert repo.counts(s, held) == (2, None)


def _race_advance(url, counts, leading, barrier, out):
    """Each count accepted and planned in one transaction, as an ingest run does (``leading``: as
    a leading edge, planned by accept itself, and ``plan`` for what else waits; else as a flush):
    the counts this racer planned."""
    engine = engine_for(url)
    barrier.wait()
    wins = []
    k = Key(POOL, IDENT, "race")
    for n in counts:
        with session_scope(engine) as s:
            moved = repo.accept(s, [ChangeEvent(*k, n)], lead=[k] if leading else ())
            planned = {key: v for key, v in moved.items() if leading} or repo.plan(s, [k])
            wins += [count for count, _origin in planned.values()]
    out.put(wins)


def test_concurrent_runs_never_both_plan_the_same_count(pools, db_url):
    counts = list(range(1, 151))
    results = run_racers(_race_advance, [(db_url, counts, True), (db_url, counts, False),
                                                (db_url, counts[::-1], True)])
    all_wins = [n for wins in results for n in wins]
    assert len(all_wins) == len(set(all_wins)), "a count was planned twice"
    assert 150 in all_wins
    for wins in results:
        assert wins == sorted(wins), "a racer planned an older count after a newer one"
    with session_scope(pools) as s:
        assert repo.counts(s, Key(POOL, IDENT, "race")) == (150, 150)
