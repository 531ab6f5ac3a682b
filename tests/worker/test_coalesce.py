"""Coalescing windows against real Redis (database 3): the leading edge, held changes and their
flush's schedule, and state that is not ours left in Redis (junk window values) ending as a new
window, never as a flush that never comes."""

from __future__ import annotations

import pytest
import redis

from pushsync.contract import Key
from worker import coalesce

K = Key("us-east-1:aa", "us-east-1:bb", "notes")
K2 = Key("us-east-1:aa", "us-east-1:cc", "notes")


@pytest.fixture
def client():
    c = redis.Redis(db=3)
    c.flushdb()
    yield c
    c.flushdb()


def test_the_first_change_leads_the_next_are_held_until_the_window_ends(client):
    win = coalesce.Windows(client)
    assert win.enter({K: 1.0}, now=100.0) == {}
    assert win.enter({K: 1.0, K2: 1.0}, now=100.4) == {K: 101_000}  # K2 opens its own
    assert client.zrange(coalesce.FLUSH, 0, -1, withscores=True) == [(K.text().encode(), 101_000.0)]
    assert win.enter({K: 1.0}, now=100.9) == {K: 101_000}  # the same window, the same flush
    assert client.zcard(coalesce.FLUSH) == 1
    assert win.enter({K: 1.0}, now=101.0) == {}  # the window ended: a new leading edge
    assert win.enter({K: 0}, now=101.1) == {}  # no window (coalescing off for it)


def test_a_held_change_never_puts_off_a_flush_due_sooner(client):
    win = coalesce.Windows(client)
    win.enter({K: 1.0}, now=100.0)
    client.zadd(coalesce.FLUSH, {K.text(): 50_000})  # due long ago (a worker waited behind a backlog)
    win.enter({K: 1.0}, now=100.5)
    assert client.zscore(coalesce.FLUSH, K.text()) == 50_000


@pytest.mark.parametrize("junk", [b"not a time", b"9" * 30, b"-5", b"\xff"])
def test_a_window_value_that_is_not_ours_opens_a_new_window(client, junk):
    """A value no window of ours has (junk, or an end further away than the width) would hold
    changes for a flush far in the future: it is replaced by a new window, the change leads."""
    win = coalesce.Windows(client)
    client.set(coalesce.WINDOW + K.text(), junk)
    assert win.enter({K: 1.0}, now=100.0) == {}
    assert win.enter({K: 1.0}, now=100.5) == {K: 101_000}


def test_a_window_key_goes_away_by_itself(client):
    win = coalesce.Windows(client)
    win.enter({K: 1.0}, now=100.0)
    assert 0 < client.pttl(coalesce.WINDOW + K.text()) <= 1_000 + coalesce.KEEP_MS
