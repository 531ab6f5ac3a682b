"""The retry policy and the retry set (worker/retry.py), against a real Redis (database 9)."""

from __future__ import annotations

import json
import random
import time

import pytest

from worker import retry

from ..conftest import retry_batch


@pytest.fixture
def client(retry_redis):
    return retry_redis


def test_backoff_is_full_jitter_under_the_cap_and_honours_retry_after():
    rng = random.Random(7)
    waits = [retry.backoff(5, base=1, cap=8, rng=rng) for _ in range(2000)]
    assert 0 <= min(waits) < 0.5 and 7.5 < max(waits) <= 8  # spread over [0, min(cap, 16)]
    assert all(retry.backoff(1, base=1, cap=8, retry_after=30, rng=rng) == 30 for _ in range(10))
    assert all(retry.backoff(1, base=1, cap=8, rng=rng) <= 1 for _ in range(100))


def test_a_claim_left_by_a_dead_pump_returns_to_the_retry_set(client):
    now = time.time()
    retry.schedule(client, "deliver", retry_batch("GCM", 1), now - 1)
    claimed = retry.claim_due(client, now=now)  # the pump dies before sending
    assert len(claimed) == 1 and retry.depth(client) == {"retry": 0, "retry_claimed": 1}
    assert retry.claim_due(client, now=now + 1) == []  # not taken twice
    again = retry.claim_due(client, now=now + retry.CLAIM_TIMEOUT + 1)
    assert [json.loads(m)["payload"] for m in again] == [retry_batch("GCM", 1)]




def test_entries_wait_in_the_set_scored_by_when_they_are_due(client):
    now = time.time()
    retry.schedule(client, "deliver", retry_batch("GCM", 1), now + 30)
    [(member, due)] = client.zrange(retry.RETRY_KEY, 0, -1, withscores=True)
    entry = json.loads(member)
    assert entry["kind"] == "deliver" and entry["payload"] == retry_batch("GCM", 1) and due == pytest.approx(now + 30)
    assert retry.claim_due(client, now=now) == []  # not due yet
    assert len(retry.claim_due(client, now=now + 31)) == 1
