"""A pool's own window per platform (``pool create --apns-window``): at most one push per device and
dataset at a window's start and one with the newest count at its end (worker.pacing; Redis
database 9 for the windows alone, the shipped 1 s ingest window and the test's clock for the
pipeline through ingest and delivery, store: SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import text

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.messages import DeliveryBatch, RetryEntry
from store import repo
from store.db import session_scope
from worker import pacing, retry
from worker.pacing import Covered, Pacing

from ..conftest import IDENT, POOL, RETRY_REDIS_URL
from .conftest import FCM_ONLY, _ev

APNS = {"key": "k", "key_id": "K", "team_id": "T", "topic": "app"}
BIG = 2**63 - 1


def test_a_window_sends_its_first_push_holds_newer_counts_to_its_end_and_drops_what_it_sent(retry_redis):
    p = Pacing(retry_redis)
    assert p.enter("p", "APNS", [("d1", "i", "notes", 5), ("d2", "i", "notes", 5)], 10.0, now=1000.0) == [0.0, 0.0]
    # inside the window: a newer count waits for its end, and so does the count sent (its send may
    # have failed before it was made); an older one is dropped
    assert p.enter("p", "APNS", [("d1", "i", "notes", 6), ("d1", "i", "notes", 5), ("d1", "i", "notes", 4)], 10.0,
                   now=1004.0) == [pytest.approx(6.0), pytest.approx(6.0), Covered(5)]
    # the same device under another identity (it changed user) has a window of its own
    assert p.enter("p", "APNS", [("d1", "j", "notes", 1)], 10.0, now=1004.0) == [0.0]
    # another dataset, platform or pool has a window of its own
    assert p.enter("p", "APNS", [("d1", "i", "todo", 1)], 10.0, now=1004.0) == [0.0]
    assert p.enter("p", "APNS_SANDBOX", [("d1", "i", "notes", 6)], 10.0, now=1004.0) == [0.0]
    assert p.enter("q", "APNS", [("d1", "i", "notes", 6)], 10.0, now=1004.0) == [0.0]
    # at its end the newest count goes and opens the next window
    assert p.enter("p", "APNS", [("d1", "i", "notes", 6)], 10.0, now=1010.0) == [0.0]
    assert p.enter("p", "APNS", [("d1", "i", "notes", 5)], 10.0, now=1011.0) == [Covered(6)]
    ttl = retry_redis.pttl(f"{pacing.PACE}p:APNS:d1:i:notes")
    assert 10_000 < ttl <= 10_000 + pacing.KEEP_MS


def test_a_retry_passes_an_open_window_which_keeps_its_end_but_not_a_count_older_than_it_sent(retry_redis):
    p = Pacing(retry_redis)
    assert p.enter("p", "APNS", [("d", "i", "n", 5)], 60.0, now=1000.0) == [0.0]
    p.done("p", "APNS", [("d", "i", "n", 5)])  # the send failed: it is over, and retried
    ttl = retry_redis.pttl(f"{pacing.PACE}p:APNS:d:i:n")
    assert p.enter("p", "APNS", [("d", "i", "n", 5), ("d", "i", "n", 4)], 0.0, now=1001.0) == [0.0, Covered(5)]
    assert p.enter("p", "APNS", [("d", "i", "n", 6)], 60.0, now=1002.0) == [pytest.approx(58.0)]
    assert ttl - 5000 < retry_redis.pttl(f"{pacing.PACE}p:APNS:d:i:n") <= ttl


def test_counts_near_two_to_the_63_are_compared_exactly(retry_redis):
    p = Pacing(retry_redis)
    assert p.enter("p", "APNS", [("d", "i", "n", BIG - 1)], 10.0, now=1000.0) == [0.0]
    # as Lua numbers (doubles) these two are equal; as counts one is newer
    assert p.enter("p", "APNS", [("d", "i", "n", BIG), ("d", "i", "n", BIG - 2)], 10.0, now=1001.0) == [
        pytest.approx(9.0), Covered(BIG - 1)]


def test_a_client_that_decodes_replies_reads_the_same_verdicts(retry_redis):
    decoding = redis.Redis.from_url(RETRY_REDIS_URL, decode_responses=True)
    p = Pacing(decoding)
    assert p.enter("p", "APNS", [("d", "i", "n", 5)], 10.0, now=1000.0) == [0.0]
    assert p.enter("p", "APNS", [("d", "i", "n", 6), ("d", "i", "n", 4)], 10.0, now=1001.0) == [
        pytest.approx(9.0), Covered(5)]


def test_a_stored_count_longer_than_any_count_is_not_a_window(retry_redis):
    retry_redis.set(f"{pacing.PACE}p:APNS:d:i:n", b"1005000:" + b"9" * 26)  # not a count a producer can send
    assert Pacing(retry_redis).enter("p", "APNS", [("d", "i", "n", 3)], 10.0, now=1000.0) == [0.0]


@pytest.mark.parametrize("stored", [b"garbage", b"5000:", b"x:5", b":", b"1e300:5", b"1005000:07", "\u00e9".encode(),
                                    b"1005000:9:", b"1005000:9:x:t", b"1005000:9:1010001:t", b"1005000:9:1:2:3",
                                    b"1005000:9:1:"])
def test_bytes_in_redis_that_are_not_a_window_open_a_new_one(retry_redis, stored):
    retry_redis.set(f"{pacing.PACE}p:APNS:d:i:n", stored)
    assert Pacing(retry_redis).enter("p", "APNS", [("d", "i", "n", 3)], 10.0, now=1000.0) == [0.0]
    assert retry_redis.get(f"{pacing.PACE}p:APNS:d:i:n") == b"1010000:3:1010000:-"


def test_a_window_longer_than_the_width_is_a_lowered_width_and_starts_again(retry_redis):
    p = Pacing(retry_redis)
    p.enter("p", "APNS", [("d", "i", "n", 3)], 1200.0, now=1000.0)
    p.done("p", "APNS", [("d", "i", "n", 3)])
    assert p.enter("p", "APNS", [("d", "i", "n", 4)], 10.0, now=1001.0) == [0.0]  # the operator shortened it


def test_redis_time_is_the_clock_without_a_test_clock(retry_redis):
    p = Pacing(retry_redis)
    assert p.enter("p", "APNS", [("d", "i", "n", 3)], 30.0) == [0.0]
    [wait] = p.enter("p", "APNS", [("d", "i", "n", 4)], 30.0)
    assert 28.0 < wait <= 30.0


def test_window_reads_seconds_from_zero_to_a_day():
    assert contract.window("1200", "--apns-window") == 1200.0
    assert contract.window("2.5s", "--fcm-window") == 2.5
    for bad in ("-1", "fast", "nan", "inf", str(contract.MAX_WINDOW + 1), ""):
        with pytest.raises(ValidationError, match="--apns-window"):
            contract.window(bad, "--apns-window")


def _pool(engine, apns_window: float | None, devices: int = 2) -> None:
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY, apns=APNS,
                         windows={"APNS": apns_window} if apns_window is not None else None)
        for n in range(devices):
            repo.subscribe(s, POOL, IDENT, ["notes"],
                           repo.register_device(s, POOL, IDENT, "APNS", f"{n:064x}"))
        repo.subscribe(s, POOL, IDENT, ["notes"], repo.register_device(s, POOL, IDENT, "GCM", "fcm-tok"))


def _due(run) -> None:
    """What the scheduler would do by the test's clock: every retry-set entry due, delivered."""
    client = run.ctx.redis
    for raw in client.zrangebyscore(retry.RETRY_KEY, "-inf", run.clock()):
        client.zrem(retry.RETRY_KEY, raw)
        run.deliver(RetryEntry.from_json(raw).payload)


def _change(run, n: int) -> None:
    run.publish(_ev(IDENT, n))
    run.runs()
    while run.queued:
        run.deliver(run.queued.pop(0))
    _due(run)


def _counts(run, platform: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in run.delivered:
        if (p.platform == "GCM") == (platform == "GCM"):
            out.setdefault(p.token, []).append(int(p.data["syncCount"]))
    return out


def test_a_thousand_changes_in_an_hour_give_each_apns_device_four_pushes_the_last_the_final_count(run, engine):
    """The issue's target with the shipped ingest window (1 s) and --apns-window 1200, an hour on the
    test's clock: a change every 3.6 s, each its own leading edge at ingest, so FCM gets all 1,000."""
    _pool(engine, 1200.0)
    for n in range(1, 1001):
        _change(run, n)
        run.clock.advance(3.6)
    for _ in range(3):  # the last window ends; its held push goes
        run.clock.advance(600)
        _due(run)
    apns = _counts(run, "APNS")
    assert len(apns) == 2
    for token, counts in apns.items():
        assert len(counts) <= 4, (token, counts)
        assert counts[-1] == 1000 and counts == sorted(counts)
    assert _counts(run, "GCM")["fcm-tok"] == list(range(1, 1001))
    assert run.ctx.redis.zcard(retry.RETRY_KEY) == 0
    with session_scope(engine) as s:  # every held push's outbox row settled
        assert not list(s.execute(text("SELECT id FROM outbox")))


def test_the_newest_count_arrives_at_the_end_of_the_window_it_changed_in(run, engine):
    _pool(engine, 60.0, devices=1)
    _change(run, 1)
    run.clock.advance(5)
    _change(run, 2)
    run.clock.advance(5)
    _change(run, 3)
    assert _counts(run, "APNS") == {f"{0:064x}": [1]}
    entries = run.ctx.redis.zrange(retry.RETRY_KEY, 0, -1, withscores=True)
    assert entries and all(run.clock() + 49 <= due <= run.clock() + 52 for _, due in entries)
    run.clock.advance(51)
    _due(run)
    assert _counts(run, "APNS") == {f"{0:064x}": [1, 3]}  # 2 was overtaken while it waited: stale


def test_a_pool_without_a_window_of_its_own_pushes_as_ingest_planned(run, engine):
    _pool(engine, None, devices=1)
    for n in (1, 2, 3):
        _change(run, n)
        run.clock.advance(2)  # past the ingest window each time
    assert _counts(run, "APNS") == {f"{0:064x}": [1, 2, 3]}
    # the keys keep only the order, for a moment
    keys = run.ctx.redis.keys(pacing.PACE + "*")
    hold = (run.ctx.settings.send_bound + 5) * 1000  # a send's bound: the longest one is on its way
    assert keys and all(0 < run.ctx.redis.pttl(k) <= hold for k in keys)
    assert {run.ctx.redis.get(k).split(b":")[1] for k in keys} == {b"3"}


def test_a_retry_passes_its_window_and_redis_away_sends_without_it(run, engine, monkeypatch):
    _pool(engine, 60.0, devices=1)
    answers = iter(["retry"])
    from worker.senders.base import Kind

    run.answer = lambda p: Kind.RETRY if p.platform != "GCM" and next(answers, None) else Kind.OK
    _change(run, 1)  # its window opened; the send failed and is retried
    assert len(run.retries) == 1
    run.deliver(run.retries.pop())
    assert _counts(run, "APNS") == {f"{0:064x}": [1]}

    def away(*_a, **_k):
        raise redis.ConnectionError("gone")
    monkeypatch.setattr(run.ctx.pacing, "enter", away)
    run.clock.advance(2)
    _change(run, 2)
    assert _counts(run, "APNS") == {f"{0:064x}": [1, 2]}


def test_pool_show_says_the_windows_as_they_work(run, engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY, windows={"APNS": 1200.0})
        assert repo.pool_summary(s, POOL)["windowSeconds"] == {"APNS": 1200.0, "GCM": 1.0}
        repo.upsert_pool(s, POOL, windows={"GCM": 0.0})  # below ingest's: ingest's
        assert repo.pool_summary(s, POOL)["windowSeconds"] == {"APNS": 1200.0, "GCM": 1.0}


def test_a_push_its_window_drops_is_counted_stale_and_on_the_trail_with_the_count_the_window_sent(run, engine):
    from pushsync.trail import read
    from worker import delivery, metrics

    _pool(engine, 60.0, devices=1)
    run.set(inline_delivery_max=0)
    run.publish(_ev(IDENT, 5))
    run.runs()
    [apns] = [b for b in map(DeliveryBatch.from_json, run.queued) if b.platform == "APNS"]
    [item] = apns.items
    # the device's window for the dataset is open and sent count 9, a count the store no longer
    # plans (the dataset was removed and made again): the store's count 5 comes to it
    assert run.ctx.pacing.enter(POOL, "APNS", [(item.device_id, IDENT, "notes", 9)], 60.0, now=run.clock()) == [0.0]
    rec = metrics.Recorder()
    result = delivery.deliver(run.ctx, apns, rec)
    run.ctx.flush_metrics(rec)
    assert (result.sent, result.stale, result.paced, result.covered) == (0, 1, 0, {item.key: 9})
    assert not result.as_dict().get("covered")
    devices = [d for e in read(run.ctx.redis, POOL, IDENT)["events"] for d in e["devices"] if d["outcome"] != "sent"]
    assert [(d["outcome"], d["detail"]) for d in devices] == [("stale", "9")]
    assert "count 9" in devices[0]["text"]
