"""The send order (worker.pacing, with or without a window of the pool's own): a push older than a
count its key sent is dropped, and a push whose key has a send on its way waits until that send is
over, so that a device never gets an older count after a newer one from two processes (Redis
database 9 for the script alone; the pipeline through ingest and delivery with the shipped 1 s
ingest window and the test's clock, store: SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from worker import pacing, retry
from worker.pacing import Covered, Pacing

from ..conftest import IDENT
from .conftest import _ev
from .test_pacing import _counts, _due, _pool


def test_without_a_window_a_push_older_than_one_sent_is_dropped_for_a_moment(retry_redis):
    p = Pacing(retry_redis)
    assert p.enter("p", "APNS", [("d", "i", "n", 74)], 0.0, now=1000.0) == [0.0]
    p.done("p", "APNS", [("d", "i", "n", 74)])  # its send is over
    # the older count is dropped, the same (a retry) goes
    assert p.enter("p", "APNS", [("d", "i", "n", 73), ("d", "i", "n", 74)], 0.0, now=1000.5) == [Covered(74), 0.0]
    p.done("p", "APNS", [("d", "i", "n", 74)])
    assert p.enter("p", "APNS", [("d", "i", "n", 75)], 0.0, now=1000.7) == [0.0]
    assert p.enter("p", "APNS", [("d", "i", "n", 74)], 0.0, now=1001.0) == [Covered(75)]
    assert p.enter("p", "APNS", [("d", "j", "n", 1), ("d", "i", "m", 1)], 0.0, now=1001.0) == [0.0, 0.0]
    assert pacing.GUARD_MS - 2000 < retry_redis.pttl(f"{pacing.PACE}p:APNS:d:i:n") <= pacing.GUARD_MS


def test_a_count_left_in_redis_without_a_ttl_blocks_no_push(retry_redis):
    key = f"{pacing.PACE}p:APNS:d:i:n"
    retry_redis.set(key, b"0:999999999")  # looks like ours, but no write of ours leaves a key for ever
    assert Pacing(retry_redis).enter("p", "APNS", [("d", "i", "n", 5)], 0.0, now=1000.0) == [0.0]
    assert retry_redis.get(key) == b"1000000:5:1010000" and 0 < retry_redis.pttl(key) <= pacing.GUARD_MS


def test_a_push_waits_while_an_older_send_of_its_key_is_on_its_way_and_goes_once_that_is_over(retry_redis):
    """Two processes: one passed the check with 73 and has not sent it yet (a budget, a token, a
    connection to wait for); the other comes with 74. If 74 went now it could reach the device
    first, and 73 after it."""
    p = Pacing(retry_redis)
    assert p.enter("p", "GCM", [("d", "i", "n", 73)], 0.0, now=1000.0) == [0.0]
    assert p.enter("p", "GCM", [("d", "i", "n", 74), ("d", "i", "n", 73)], 0.0, now=1000.2) == [
        pytest.approx(pacing.RECHECK_MS / 1000), pytest.approx(pacing.RECHECK_MS / 1000)]
    assert p.enter("p", "GCM", [("d", "i", "n", 74)], 0.0, now=1000.2) != [0.0]
    p.done("p", "GCM", [("d", "i", "n", 72)])  # not the count in flight: the key keeps it
    assert p.enter("p", "GCM", [("d", "i", "n", 74)], 0.0, now=1000.3) == [pytest.approx(pacing.RECHECK_MS / 1000)]
    p.done("p", "GCM", [("d", "i", "n", 73)])
    assert p.enter("p", "GCM", [("d", "i", "n", 74)], 0.0, now=1001.2) == [0.0]
    # a send that never says it is over (its process was killed) holds the key GUARD_MS at most
    assert p.enter("p", "GCM", [("d", "i", "n", 75)], 0.0, now=1001.2 + pacing.GUARD_MS / 1000 - 0.5) == [
        pytest.approx(0.5)]
    assert p.enter("p", "GCM", [("d", "i", "n", 75)], 0.0, now=1001.2 + pacing.GUARD_MS / 1000) == [0.0]


def test_a_delivery_that_read_the_store_before_a_newer_count_was_planned_does_not_send_after_it(run, engine,
                                                                                                monkeypatch):
    """Two processes: one delivers count 73 and has read the store (73 is the newest planned);
    before it sends, the other plans and sends 74. The send-time read cannot drop the 73 any more;
    the device must not get it after the 74."""
    from worker import delivery

    _pool(engine, None, devices=1)  # no window of the pool's own: the shipped settings
    run.publish(_ev(IDENT, 73))
    run.runs()
    first, run.queued[:] = list(run.queued), []
    real, lead = delivery.plan, []

    def plan_then_the_other_process(batch, targets, result):
        out = real(batch, targets, result)
        if not lead:
            lead.append(batch.platform)
            run.clock.advance(2)  # the next window's leading edge
            run.publish(_ev(IDENT, 74))
            run.runs()
            run.drain()
        return out
    monkeypatch.setattr(delivery, "plan", plan_then_the_other_process)
    results = [run.deliver(b) for b in first]
    assert _counts(run, "APNS") == {f"{0:064x}": [74]}
    assert _counts(run, "GCM") == {"fcm-tok": [74]}
    assert [r["stale"] for r in results] == [1, 1] and lead


def test_a_newer_count_checked_while_an_older_one_waits_to_be_sent_goes_after_it(run, engine, monkeypatch):
    """Two processes: one delivers 73 and has passed the send order; before its bytes leave (here
    the FCM budget's reservation, after the check), the other plans and delivers 74. The 74 must
    not go while the 73 may still be on its way: it waits, and goes once the 73 is over."""
    from worker import budget

    _pool(engine, None, devices=1)  # the shipped settings: no window of the pool's own
    run.publish(_ev(IDENT, 73))
    run.runs()
    first, run.queued[:] = list(run.queued), []
    real, other = budget.within, []

    def check_then_the_other_process(ctx, batch, creds, requests, result):
        if not other:
            other.append(batch.platform)
            run.clock.advance(2)  # the next window's leading edge
            run.publish(_ev(IDENT, 74))
            run.runs()
            other.extend(run.deliver(b) for b in run.queued)
            run.queued.clear()
        return real(ctx, batch, creds, requests, result)
    monkeypatch.setattr(budget, "within", check_then_the_other_process)
    for b in first:
        run.deliver(b)
    platform, *results = other
    # the platform whose 73 was on its way: its 74 waited; the other's 74 went (its 73, checked after, was dropped)
    assert sorted((r["sent"], r["paced"]) for r in results) == [(0, 1), (1, 0)]
    token = {"APNS": f"{0:064x}", "GCM": "fcm-tok"}
    other_platform = ({"APNS", "GCM"} - {platform}).pop()
    assert {p: _counts(run, p)[t] for p, t in token.items()} == {platform: [73], other_platform: [74]}
    run.clock.advance(pacing.RECHECK_MS / 1000)
    _due(run)
    assert _counts(run, platform) == {token[platform]: [73, 74]}
    assert run.ctx.redis.zcard(retry.RETRY_KEY) == 0
