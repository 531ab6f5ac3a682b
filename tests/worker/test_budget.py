"""The FCM rate budget: slots reserved in Redis (database 9) at a pool's rate, shared by every
worker; a delivery sends what is within it and holds the rest in the retry set (store: SQLite
and PostgreSQL, Redis database 7)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.messages import DeliveryBatch, RetryEntry
from store import repo
from store.db import session_scope
from worker import budget, retry
from worker.budget import Budget

from ..conftest import IDENT, POOL
from .conftest import FCM_ONLY, _ev


def test_a_rate_hands_out_a_seconds_burst_now_and_the_rest_one_interval_apart(retry_redis):
    b = Budget(retry_redis)
    # 610 a minute: 10 a second; a second's worth and the current slot now, then 0.1 s apart
    waits = b.reserve("proj", 610, 25, now=1000.0)
    assert waits[:11] == [0.0] * 11
    assert waits[11:] == pytest.approx([0.1 * k for k in range(1, 15)])
    # the next caller (another worker) queues behind them, not beside them
    assert b.reserve("proj", 610, 1, now=1000.0) == pytest.approx([1.5])
    # another project has budget of its own
    assert Budget(retry_redis).reserve("other", 610, 3, now=1000.0) == [0.0] * 3


def test_an_idle_project_saves_at_most_one_seconds_worth(retry_redis):
    b = Budget(retry_redis)
    b.reserve("proj", 610, 10, now=1000.0)
    waits = b.reserve("proj", 610, 30, now=2000.0)  # idle 1,000 s: still a burst of 10 only
    assert waits.count(0.0) == 11 and waits[-1] == pytest.approx(1.9)


def test_a_refusal_for_quota_halves_the_rate_while_fcm_asks(retry_redis):
    b = Budget(retry_redis)
    b.lower("proj", 30.0)
    ttl = retry_redis.pttl(budget.SLOW + "proj")
    assert 29_000 < ttl <= 30_000
    waits = b.reserve("proj", 610, 12, now=1000.0)
    assert waits[:6] == [0.0] * 6 and waits[6] == pytest.approx(0.2)  # 5 a second
    b.lower("proj", None)  # no Retry-After: the shortest slow-down
    assert retry_redis.pttl(budget.SLOW + "proj") <= budget.SLOW_MIN_S * 1000


@pytest.mark.parametrize("stored", [b"not a time", b"1e300", "\u00e9".encode(), b"-5"])
def test_bytes_in_redis_that_are_not_a_budget_start_it_again(retry_redis, stored):
    retry_redis.set(budget.BUDGET + "proj", stored)
    retry_redis.set(budget.SLOW + "proj", b"\xff")
    waits = Budget(retry_redis).reserve("proj", 610, 12, now=1000.0)
    assert waits[:11] == [0.0] * 11 and waits[11] == pytest.approx(0.1)


def test_no_reservation_reaches_past_the_horizon(retry_redis):
    waits = Budget(retry_redis).reserve("proj", 1, 5, now=1000.0)  # one a minute
    assert waits[0] == 0.0 and max(waits) <= budget.HORIZON_S


def test_a_backlog_past_the_horizon_waits_at_its_edge_and_does_not_start_the_budget_again(retry_redis):
    b = Budget(retry_redis)
    waits = b.reserve("proj", 60, 5000, now=1000.0)  # one a second: 5,000 s of slots
    assert waits[-1] == budget.HORIZON_S
    # the next caller waits at the edge too: a budget past its horizon is not a fresh one
    assert b.reserve("proj", 60, 3, now=1000.0) == [budget.HORIZON_S] * 3


def test_redis_away_or_refusing_sends_the_pushes_without_the_budget(retry_redis):
    from types import SimpleNamespace

    import redis

    from worker.delivery import DeliveryResult
    from worker.senders.base import PushRequest

    from ..e2e.harness import free_port

    creds = SimpleNamespace(fcm_project_id="proj", fcm_rate=60)
    batch = DeliveryBatch(POOL, "GCM", ())
    requests = [PushRequest(device_id=f"d{n}", token="t", dataset="notes", identity_id=IDENT, data={})
                for n in range(5)]
    away = SimpleNamespace(budget=Budget(redis.Redis(port=free_port(), socket_connect_timeout=1)))
    result = DeliveryResult()
    assert budget.within(away, batch, creds, requests, result) == requests and result.held == 0
    retry_redis.set(budget.BUDGET + "proj", "x")
    retry_redis.lpush(budget.SLOW + "proj", "not a string")  # WRONGTYPE: a Redis error of another kind
    refusing = SimpleNamespace(budget=Budget(retry_redis))
    assert budget.within(refusing, batch, creds, requests, result) == requests and result.held == 0


def test_slots_group_the_waiting_pushes_by_second():
    assert budget.slots([0.0, 0.0, 0.3, 0.9, 1.0, 1.2]) == {1.0: [2, 3, 4], 2.0: [5]}
    assert budget.slots([0.0]) == {}


@pytest.mark.parametrize("text, rate", [("600000/min", 600_000), ("600,000/min", 600_000), ("100/s", 6000),
                                        ("42", 42), (" 7/MIN ", 7)])
def test_fcm_rate_reads_per_minute_and_per_second(text, rate):
    assert contract.fcm_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "-5/min", "fast", "1.5/s", "10/h", "", str(contract.MAX_FCM_RATE + 1)])
def test_fcm_rate_refuses_what_is_not_a_rate(text):
    with pytest.raises(ValidationError, match="--fcm-rate"):
        contract.fcm_rate(text)


def _fan_out(run, engine, devices: int, rate: int):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY, fcm_rate=rate)
        for n in range(devices):
            repo.subscribe(s, POOL, IDENT, ["notes"], repo.register_device(s, POOL, IDENT, "GCM", f"tok-{n:03d}"))
    run.publish(_ev(IDENT, 5))
    run.runs()
    assert len(run.queued) == 1
    return run.deliver(run.queued.pop())


def _held(client) -> list[tuple[dict, float]]:
    return [(RetryEntry.from_json(m).payload, score) for m, score in client.zrange(retry.RETRY_KEY, 0, -1,
                                                                                  withscores=True)]


def test_a_fan_out_past_the_budget_sends_a_burst_and_holds_the_rest_in_the_retry_set(run, engine):
    result = _fan_out(run, engine, 35, rate=610)
    assert (result["sent"], result["held"], result["dead_lettered"]) == (11, 24, 0)
    held = _held(run.ctx.redis)
    assert sorted(len(p["items"]) for p, _ in held) == [4, 10, 10]  # slots by the second
    assert all(p["budgeted"] is True and p["attempt"] == 1 for p, _ in held)
    with session_scope(engine) as s:  # each held batch has an outbox row: lost from Redis, still sent
        rows = {r[0]: json.loads(r[1]) for r in s.execute(text("SELECT id, payload FROM outbox"))}
    assert {p["id"] for p, _ in held} <= set(rows)
    # they come back with their slots paid: sent without reserving again, every device once
    before = run.ctx.redis.get(budget.BUDGET + "p")
    for payload, _due in held:
        out = run.deliver(payload)
        assert (out["sent"], out["held"]) == (len(payload["items"]), 0)
    assert run.ctx.redis.get(budget.BUDGET + "p") == before
    tokens = [p.token for p in run.delivered]
    assert sorted(tokens) == [f"tok-{n:03d}" for n in range(35)]
    with session_scope(engine) as s:
        assert not list(s.execute(text("SELECT id FROM outbox")))


def test_the_trail_says_which_pushes_wait_for_the_budget_and_when_they_go(run, engine):
    from pushsync.trail import read
    from worker import delivery, metrics

    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY, fcm_rate=610)
        for n in range(15):
            repo.subscribe(s, POOL, IDENT, ["notes"], repo.register_device(s, POOL, IDENT, "GCM", f"tok-{n:03d}"))
    run.publish(_ev(IDENT, 5))
    run.runs()
    rec = metrics.Recorder()
    delivery.deliver_message(run.ctx, run.queued.pop(), rec)
    run.ctx.flush_metrics(rec)
    devices = [d for e in read(run.ctx.redis, POOL, IDENT)["events"] for d in e["devices"]]
    outcomes = sorted(d["outcome"] for d in devices)
    assert outcomes == ["sent"] * 11 + ["waiting"] * 4
    assert all("FCM budget" in d["text"] for d in devices if d["outcome"] == "waiting")


def test_a_fan_out_within_the_budget_goes_at_once(run, engine):
    result = _fan_out(run, engine, 35, rate=contract.DEFAULT_FCM_RATE)
    assert (result["sent"], result["held"]) == (35, 0)
    assert run.ctx.redis.zcard(retry.RETRY_KEY) == 0


def test_a_held_batch_is_read_back_with_its_mark_and_a_forged_mark_is_only_a_boolean():
    raw = {"pool": POOL, "platform": "GCM", "items": [["0" * 8 + "-0000-0000-0000-" + "0" * 12, IDENT, "notes", 1]],
           "attempt": 1, "budgeted": True}
    assert DeliveryBatch.from_json(raw).budgeted is True
    assert DeliveryBatch.from_json({**raw, "budgeted": "yes"}).budgeted is False
    assert "budgeted" not in DeliveryBatch.from_json({**raw, "budgeted": False}).to_json()
