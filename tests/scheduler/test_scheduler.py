"""The schedule, the lock and the retry pump, against a real Redis (database 9)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from scheduler import beat
from worker import retry

from ..conftest import PUSHSYNC, RETRY_REDIS_URL, retry_batch

REDIS_URL = RETRY_REDIS_URL


@pytest.fixture
def client(retry_redis):
    return retry_redis


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


def test_pump_moves_only_due_entries_once(client):
    now = time.time()
    retry.schedule(client, "deliver", retry_batch("GCM", 1), now - 1)
    retry.schedule(client, "deliver", retry_batch("APNS", 2), now - 0.5)
    retry.schedule(client, "deliver", retry_batch("GCM", 3), now + 60)
    sent = []
    assert beat.pump_retries(client, send=lambda name, arg, q: sent.append((name, arg["items"][0][3], q)),
                             now=now) == 2
    assert sorted(sent) == [("pushsync.deliver", 1, "push.fcm"), ("pushsync.deliver", 2, "push.apns")]
    assert beat.pump_retries(client, send=lambda *a: sent.append(a), now=now) == 0
    assert retry.depth(client) == {"retry": 1, "retry_claimed": 0}


@pytest.mark.parametrize("member", [
    b"not json", b"\xff\xfe", b"[1, 2]", b'{"kind": "deliver"}', b'{"kind": "shell", "payload": {}}',
    json.dumps({"kind": "deliver", "payload": {"platform": "GCM"}}).encode(),  # no pool, no items
    json.dumps({"kind": "deliver", "payload": {**retry_batch("ADM", 1)}}).encode(),
    json.dumps({"kind": "deliver", "payload": {**retry_batch("GCM", 1, attempt=-5)}}).encode(),
    json.dumps({"kind": "ingest", "payload": [[]]}).encode(),  # a kind no version writes any more
    b"[" * 5000 + b"]" * 5000,  # nested past the recursion limit
    # nested past the limit inside a well-formed entry, and deep enough for json but not for the checks
    b'{"kind": "deliver", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    json.dumps({"kind": "deliver", "payload": {**retry_batch("GCM", 1), "pool": [[[[["x"]]]]]}}).encode(),
])
def test_a_malformed_retry_entry_is_dead_lettered_and_the_pump_goes_on(client, member):
    now = time.time()
    client.zadd(retry.RETRY_KEY, {member: now - 2})
    retry.schedule(client, "deliver", retry_batch("APNS_SANDBOX", 7), now - 1)
    sent, dead = [], []
    moved = beat.pump_retries(client, send=lambda name, arg, q: sent.append((arg["platform"], q)), now=now,
                              dead_letter=lambda reason, m: dead.append((reason, m)))
    assert moved == 2 and sent == [("APNS_SANDBOX", "push.apns")]
    assert len(dead) == 1 and dead[0][1] == member and dead[0][0]
    assert retry.depth(client) == {"retry": 0, "retry_claimed": 0}  # not reclaimed a minute later


def test_a_malformed_entry_stays_claimed_while_the_store_is_away(client):
    now = time.time()
    client.zadd(retry.RETRY_KEY, {b"junk": now - 1})

    def store_down(reason, member):
        raise ConnectionError("store unreachable")

    assert beat.pump_retries(client, send=lambda *a: None, now=now, dead_letter=store_down) == 0
    assert retry.depth(client) == {"retry": 0, "retry_claimed": 1}  # tried again after the claim timeout


def test_a_second_scheduler_stands_by_until_the_first_lets_go(client, caplog):
    first, second = beat.SchedulerLock(client, ttl=2), beat.SchedulerLock(client, ttl=2)
    with caplog.at_level("INFO", logger=beat.log.name):
        assert first.hold() and not second.hold()
    # both are the normal course of things: information, not a warning an on-call person chases
    said = {r.getMessage(): r.levelname for r in caplog.records if r.name == beat.log.name}
    assert said == {"scheduler lock taken: this scheduler is active": "INFO",
                    "scheduler lock held by another scheduler: standing by": "INFO"}
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
    subprocess.run([PUSHSYNC, "db", "upgrade"], env=env, check=True, capture_output=True)
    procs = [subprocess.Popen([PUSHSYNC, "scheduler"], env=env, stdout=open(tmp_path / f"s{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in range(2)]
    try:
        deadline = time.time() + 20
        while client.get(beat.LOCK_KEY) is None and time.time() < deadline:
            time.sleep(0.2)
        holder = client.get(beat.LOCK_KEY).decode()
        # a due retry is moved once, by the holder, onto the queue; a malformed entry before it
        # is dead-lettered and does not stop the pump
        client.zadd(retry.RETRY_KEY, {b'{"kind": "deliver", "payload": {"items": 5}}': time.time() - 1})
        retry.schedule(client, "deliver", retry_batch("GCM", 1), time.time())
        deadline = time.time() + 10
        while client.llen("push.fcm") == 0 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        assert client.llen("push.fcm") == 1
        assert retry.depth(client) == {"retry": 0, "retry_claimed": 0}
        logs = "".join((tmp_path / f"s{i}.log").read_text() for i in range(2))
        # the holder is the beat process that one of the two (supervising) schedulers started
        holder_pid = holder.split(":")[1]
        parent = open(f"/proc/{holder_pid}/stat").read().rsplit(")", 1)[1].split()[1]
        assert "standing by" in logs and parent in {str(p.pid) for p in procs}
        assert all(p.poll() is None for p in procs), logs
        dead = json.loads(subprocess.run([PUSHSYNC, "dlq", "list", "--json"], env=env, capture_output=True,
                                         text=True, check=True).stdout)
        assert [d["reason"][:29] for d in dead] == ["unreadable message: retry set"]
        assert "items" in dead[0]["payload"]["retry_entry"]["raw"]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_record_queue_depths_reports_what_is_waiting(client, monkeypatch):
    from pushsync import settings
    from scheduler import tasks

    monkeypatch.setenv("PUSHSYNC_BROKER_URL", REDIS_URL)
    settings.get_settings.cache_clear()
    try:
        client.rpush("push.apns", "x", "y")
        retry.schedule(client, "deliver", retry_batch("GCM", 1), time.time() + 60)
        depths = tasks.record_queue_depths.run()
        assert depths == {"events": 0, "push.fcm": 0, "push.apns": 2, "retry": 1, "retry_claimed": 0,
                          "in_flight": 0, "flushes": 0, "laned": 0}
        assert client.keys("pushsync:queue_depths*") == []  # a log line, nothing left in Redis
    finally:
        settings.get_settings.cache_clear()
