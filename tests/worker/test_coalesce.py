"""Coalescing windows against real Redis (database 3): lead, held, claim, and state that is
not ours left in Redis (junk window values, junk held members) ending as a skip, not a crash."""

from __future__ import annotations

import time

import pytest
import redis

from worker import coalesce


@pytest.fixture
def client():
    c = redis.Redis(db=3)
    c.flushdb()
    yield c
    c.flushdb()


def _event(count: int, identity: str = "us-east-1:a") -> dict:
    return {"identityPoolId": "us-east-1:p", "identityId": identity, "datasetName": "notes", "syncCount": count,
            "originDeviceId": None}


def test_the_first_change_leads_the_next_are_held_and_flushed_once_the_window_ends(client):
    win = coalesce.Windows(client, 0.3)
    assert win.enter([_event(1)]) == set()
    held = win.enter([_event(2), _event(3)])
    assert held == {coalesce.event_key(_event(2))}
    assert win.claim() == []  # not due yet
    time.sleep(0.35)
    [(member, entry)] = win.claim()
    assert entry == {"identityPoolId": "us-east-1:p", "identityId": "us-east-1:a", "datasetName": "notes",
                     "leadCount": 1, "originDeviceId": None}
    win.done([member])
    assert win.depth() == {"held": 0, "held_claimed": 0}
    assert win.enter([_event(4)]) == set()  # a new window


def test_junk_left_in_redis_is_a_skip_not_a_crash(client):
    win = coalesce.Windows(client, 0.3)
    key = coalesce.key_text(coalesce.event_key(_event(1)))
    client.set(coalesce.WINDOW + key, "not a window", px=300)
    assert win.enter([_event(1)]) == {coalesce.event_key(_event(1))}
    win.again([_event(1)])
    win.stale_leads({coalesce.event_key(_event(1)): 5})
    client.zadd(coalesce.HELD, {"not json|1": 0, '["only two", "parts"]|1': 0})
    client.hset(coalesce.EVENTS, "not json|1", "x|{")
    time.sleep(0.35)
    claimed = win.claim()
    # the two foreign members come back as None (dropped and logged by the pump); ours parse
    assert sum(e is None for _m, e in claimed) == 2
    assert [e["identityId"] for _m, e in claimed if e is not None][:1] == ["us-east-1:a"]
