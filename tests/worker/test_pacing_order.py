"""The send order (worker.pacing, with or without a window of the pool's own): a push older than a
count its key sent is dropped, and a push whose key has a send on its way waits until that send is
over, so that a device never gets an older count after a newer one from two processes (Redis
database 9 for the script alone; the pipeline through ingest and delivery with the shipped 1 s
ingest window and the test's clock, store: SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from worker import pacing, retry
from worker.pacing import Busy, Covered, Pacing

from ..conftest import IDENT, POOL
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
    assert retry_redis.get(key) == b"1000000:5:1010000:-" and 0 < retry_redis.pttl(key) <= pacing.GUARD_MS


def test_a_push_waits_while_an_older_send_of_its_key_is_on_its_way_and_goes_once_that_is_over(retry_redis):
    """Two processes: one passed the check with 73 and has not sent it yet (a budget, a token, a
    connection to wait for); the other comes with 74. If 74 went now it could reach the device
    first, and 73 after it."""
    p = Pacing(retry_redis)
    wait = Busy(pacing.RECHECK_MS / 1000)
    assert p.enter("p", "GCM", [("d", "i", "n", 73)], 0.0, now=1000.0, hold=30, token="a") == [0.0]
    assert p.enter("p", "GCM", [("d", "i", "n", 74), ("d", "i", "n", 73)], 0.0, now=1000.2, hold=30,
                   token="b") == [wait, wait]
    p.done("p", "GCM", [("d", "i", "n", 72)], "a")  # not the count on its way: the key keeps it
    p.done("p", "GCM", [("d", "i", "n", 73)], "b")  # nor another call's (a copy of the batch, say)
    assert p.enter("p", "GCM", [("d", "i", "n", 74)], 0.0, now=1000.3, hold=30, token="b") == [wait]
    p.done("p", "GCM", [("d", "i", "n", 73)], "a")
    assert p.enter("p", "GCM", [("d", "i", "n", 74)], 0.0, now=1001.2, hold=30, token="c") == [0.0]
    # a send that never says it is over (its process was killed) holds the key its hold at most
    assert p.enter("p", "GCM", [("d", "i", "n", 75)], 0.0, now=1030.7, hold=30, token="d") == [Busy(0.5)]
    assert p.enter("p", "GCM", [("d", "i", "n", 75)], 0.0, now=1031.2, hold=30, token="d") == [0.0]
    key = f"{pacing.PACE}p:GCM:d:i:n"
    assert 29_000 < retry_redis.pttl(key) <= 30_000  # the key outlives the send it waits for


def test_a_key_of_another_type_is_no_key_and_stops_no_other_push(retry_redis):
    retry_redis.hset(f"{pacing.PACE}p:GCM:d:i:n", "x", "1")
    p = Pacing(retry_redis)
    assert p.enter("p", "GCM", [("e", "i", "n", 5), ("d", "i", "n", 5)], 0.0, now=1000.0, token="t") == [0.0, 0.0]
    p.done("p", "GCM", [("e", "i", "n", 5), ("d", "i", "n", 5)], "t")
    assert retry_redis.get(f"{pacing.PACE}p:GCM:d:i:n") == b"1000000:5"
    retry_redis.delete(f"{pacing.PACE}p:GCM:e:i:n")
    retry_redis.hset(f"{pacing.PACE}p:GCM:e:i:n", "x", "1")
    p.done("p", "GCM", [("e", "i", "n", 5)], "t")  # nor does it fail the end of a send


def test_a_push_that_waited_for_its_budget_keeps_its_slot_when_it_waits_for_a_send(run, engine):
    """A push held for its budget slot comes back budgeted (it passes its pool's window, its slot
    paid). If a send of its key is on its way then, it waits for that send still budgeted: not for
    a whole window again, nor for a second slot."""
    from pushsync.messages import DeliveryBatch, Item
    from store.db import session_scope
    from worker.delivery import DeliveryResult
    from worker.senders.base import PushRequest

    _pool(engine, 1200.0, devices=1)
    with session_scope(engine) as s:
        creds = run.ctx.pools.credentials(s, [POOL])[POOL]
    run.ctx.pacing.enter(POOL, "APNS", [("dev", IDENT, "notes", 3)], 0.0, token="another")  # on its way
    batch = DeliveryBatch(POOL, "APNS", (Item("dev", IDENT, "notes", 4),), budgeted=True, id="b1")
    result = DeliveryResult()
    push = PushRequest(device_id="dev", token="tok", data={}, dataset="notes", identity_id=IDENT)
    going, _token = pacing.within(run.ctx, batch, creds, [push], result)
    assert going == [] and result.paced == 1
    [(held, wait)] = result.later
    assert held.budgeted and wait == pacing.RECHECK_MS / 1000
    run.ctx.pacing.done(POOL, "APNS", [("dev", IDENT, "notes", 3)], "another")
    going, _token = pacing.within(run.ctx, held, creds, [push], result)
    assert len(going) == 1  # it goes, though the window the 3 opened is open

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


def test_a_send_that_stalled_keeps_its_key_and_a_failed_release_costs_no_outcome(run, engine, monkeypatch):
    """A send that ended as Stalled may still be writing its bytes: its key is not freed, so a newer
    count waits (for the hold at most). Marking sends over that fails (anything raised on the way)
    costs the outcomes nothing: they are recorded."""
    from worker.errors import Stalled

    _pool(engine, None, devices=1)
    run.publish(_ev(IDENT, 5))
    run.runs()
    batches, run.queued[:] = list(run.queued), []
    stalled = run.ctx.senders.send

    async def stall(creds, platform, requests):
        raise Stalled("the send did not finish")
    monkeypatch.setattr(run.ctx.senders, "send", stall)
    with pytest.raises(Stalled):
        run.deliver(batches[0])
    platform = batches[0]["platform"]
    keys = run.ctx.redis.keys(f"{pacing.PACE}*:{platform}:*")
    assert len(keys) == 1 and run.ctx.redis.get(keys[0]).count(b":") == 3  # still on its way
    monkeypatch.setattr(run.ctx.senders, "send", stalled)

    def broken(*_a, **_k):
        raise ValueError("not Redis's fault")
    monkeypatch.setattr(run.ctx.pacing, "done", broken)
    result = run.deliver(batches[1])
    assert result["sent"] == 1 and len(run.delivered) == 1
