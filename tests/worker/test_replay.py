"""Dead-letter replay (worker/replay.py) against a real store, with the queue recorded."""

from __future__ import annotations

from pushsync.messages import DeadLetter, Item
from store import repo
from store.db import session_scope
from worker.replay import replay

from ..conftest import IDENT, POOL, notified

DEV = "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"


def _letters(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL)
        notified(s, POOL, IDENT, "notes", 5)
        repo.add_dead_letters(s, [
            DeadLetter.event({"identityPoolId": POOL, "identityId": IDENT, "datasetName": "notes", "syncCount": 9},
                             "unknown pool", POOL),
            DeadLetter.delivery(POOL, "APNS", Item(DEV, IDENT, "notes", 5), "retries exhausted", "Unavailable"),
            DeadLetter.delivery(POOL, "GCM", Item(DEV, IDENT, "notes", 4), "permanent error", "BadTopic"),
            DeadLetter.message("junk", "unreadable message", "bad delivery batch"),
        ])
        ids = [d["id"] for d in repo.list_dead_letters(s)]
    return dict(zip(("event", "current", "stale", "message"), ids, strict=True))


def test_replay_sends_events_to_ingest_and_pushes_to_their_queue_and_drops_stale_ones(store_settings, engine):
    ids = _letters(engine)
    sent = []
    res = replay(None, lambda name, arg, queue: sent.append((name, arg, queue)))
    assert (res.events, res.deliveries, res.stale, res.unusable, res.missing) == (1, 1, 1, 1, 0)
    assert sent == [
        ("pushsync.ingest", [{"identityPoolId": POOL, "identityId": IDENT, "datasetName": "notes", "syncCount": 9}],
         "events"),
        ("pushsync.deliver", {"pool": POOL, "platform": "APNS", "items": [[DEV, IDENT, "notes", 5]], "attempt": 1},
         "push.apns"),
    ]
    with session_scope(engine) as s:  # what went (or was stale) is gone; the unparsable message stays
        assert [d["id"] for d in repo.list_dead_letters(s)] == [ids["message"]]


def test_replay_by_id_counts_the_ids_it_did_not_find(store_settings, engine):
    ids = _letters(engine)
    sent = []
    res = replay([ids["current"], 999_999], lambda *a: sent.append(a))
    assert (res.deliveries, res.missing) == (1, 1) and len(sent) == 1


def test_nothing_is_deleted_when_the_queue_refuses(store_settings, engine):
    _letters(engine)

    def broker_down(*_a):
        raise ConnectionError("broker unreachable")

    try:
        replay(None, broker_down)
    except ConnectionError:
        pass
    with session_scope(engine) as s:
        assert len(repo.list_dead_letters(s)) == 4
