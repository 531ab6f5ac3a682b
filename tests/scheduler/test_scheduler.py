"""The schedule, the lock and the retry pump, against a real Redis (database 9)."""

from __future__ import annotations

import json
import random
import subprocess
import time

import pytest
import redis

from scheduler import beat
from worker import retry

from ..conftest import PUSHSYNC

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture
def client():
    c = redis.Redis.from_url(REDIS_URL)
    c.flushdb()
    yield c
    c.flushdb()


def test_the_beat_schedule_is_declared_in_code():
    assert {name: (e["task"], e["schedule"]) for name, e in beat.BEAT_SCHEDULE.items()} == {
        "prune-inactive-devices": ("pushsync.prune_devices", 3600.0),
        "trim-dead-letters": ("pushsync.trim_dead_letters", 3600.0),
        "record-queue-depths": ("pushsync.record_queue_depths", 15.0),
    }
    import scheduler.tasks  # noqa: F401
    from worker.app import app

    for entry in beat.BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
    assert beat.PUMP_INTERVAL == 1.0


def test_backoff_is_full_jitter_under_the_cap_and_honours_retry_after():
    rng = random.Random(7)
    waits = [retry.backoff(5, base=1, cap=8, rng=rng) for _ in range(2000)]
    assert 0 <= min(waits) < 0.5 and 7.5 < max(waits) <= 8  # spread over [0, min(cap, 16)]
    assert all(retry.backoff(1, base=1, cap=8, retry_after=30, rng=rng) == 30 for _ in range(10))
    assert all(retry.backoff(1, base=1, cap=8, rng=rng) <= 1 for _ in range(100))


def test_pump_moves_only_due_entries_once(client):
    now = time.time()
    retry.schedule(client, "deliver", {"platform": "GCM", "n": 1}, now - 1)
    retry.schedule(client, "deliver", {"platform": "APNS", "n": 2}, now - 0.5)
    retry.schedule(client, "deliver", {"platform": "GCM", "n": 3}, now + 60)
    sent = []
    assert beat.pump_retries(client, send=lambda name, arg, q: sent.append((name, arg["n"], q)), now=now) == 2
    assert sorted(sent) == [("pushsync.deliver", 1, "push.fcm"), ("pushsync.deliver", 2, "push.apns")]
    assert beat.pump_retries(client, send=lambda *a: sent.append(a), now=now) == 0
    assert retry.depth(client) == {"retry": 1, "retry_claimed": 0}


def test_a_claim_left_by_a_dead_pump_returns_to_the_retry_set(client):
    now = time.time()
    retry.schedule(client, "deliver", {"platform": "GCM"}, now - 1)
    claimed = retry.claim_due(client, now=now)  # the pump dies before sending
    assert len(claimed) == 1 and retry.depth(client) == {"retry": 0, "retry_claimed": 1}
    assert retry.claim_due(client, now=now + 1) == []  # not taken twice
    again = retry.claim_due(client, now=now + retry.CLAIM_TIMEOUT + 1)
    assert [json.loads(m)["payload"] for m, _ in again] == [{"platform": "GCM"}]


def test_a_second_scheduler_stands_by_until_the_first_lets_go(client):
    first, second = beat.SchedulerLock(client, ttl=2), beat.SchedulerLock(client, ttl=2)
    assert first.hold() and not second.hold()
    assert first.hold()  # renewing is fine
    first.release()
    assert second.hold() and not first.hold()


def test_a_dead_schedulers_lock_expires(client):
    first, second = beat.SchedulerLock(client, ttl=1), beat.SchedulerLock(client, ttl=1)
    assert first.hold()
    time.sleep(1.2)  # the first one stopped renewing
    assert second.hold()


def test_two_scheduler_processes_only_one_pumps(client, tmp_path):
    env = {"PUSHSYNC_BROKER_URL": REDIS_URL, "PUSHSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/s.db", "PATH": "/usr/bin"}
    procs = [subprocess.Popen([PUSHSYNC, "scheduler"], env=env, stdout=open(tmp_path / f"s{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in range(2)]
    try:
        deadline = time.time() + 20
        while client.get(beat.LOCK_KEY) is None and time.time() < deadline:
            time.sleep(0.2)
        holder = client.get(beat.LOCK_KEY).decode()
        # a due retry is moved once, by the holder, onto the queue
        retry.schedule(client, "deliver", {"platform": "GCM", "pool": "p", "items": [], "attempt": 2}, time.time())
        deadline = time.time() + 10
        while client.llen("push.fcm") == 0 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        assert client.llen("push.fcm") == 1
        assert retry.depth(client) == {"retry": 0, "retry_claimed": 0}
        logs = "".join((tmp_path / f"s{i}.log").read_text() for i in range(2))
        assert "standing by" in logs and str(holder.split(":")[1]) in {str(p.pid) for p in procs}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_record_queue_depths_writes_what_is_waiting(client, monkeypatch):
    from pushsync import settings
    from scheduler import tasks

    monkeypatch.setenv("PUSHSYNC_BROKER_URL", REDIS_URL)
    settings.get_settings.cache_clear()
    try:
        client.rpush("push.apns", "x", "y")
        retry.schedule(client, "deliver", {"platform": "GCM"}, time.time() + 60)
        depths = tasks.record_queue_depths.run()
        assert depths == {"events": 0, "push.fcm": 0, "push.apns": 2, "retry": 1, "retry_claimed": 0}
        assert json.loads(client.get(tasks.QUEUE_DEPTHS_KEY))["depths"] == depths
    finally:
        settings.get_settings.cache_clear()
