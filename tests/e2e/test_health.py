"""`pushsync worker --health`: a worker that is up but consumes nothing is reported, an idle one
is not, a killed one is. The worker is a real `pushsync worker` on a redis-server of the test's
own; its consumer is stopped with Celery's own control command (`cancel_consumer`), which leaves
the process running and answering pings, as a consumer that never came back after a broker
outage does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from worker import health

from ..conftest import POOL
from .harness import Pipeline, RedisServer, new_identity, wait_for

NODE = "health1@%h"
STALL = "3"
# the check waits at least the task time limit (a long task is not a stall): 5 s, the least allowed
ENV = {"PUSHSYNC_HEALTH_STALL": STALL, "PUSHSYNC_TASK_TIME_LIMIT": "5", "PUSHSYNC_VISIBILITY_TIMEOUT": "10"}
EFFECTIVE = 5.0

CONTROL = """
import sys
from worker.app import app
node, action, *queues = sys.argv[1:]
for q in queues:
    if action == "cancel":
        print(app.control.cancel_consumer(q, destination=[node], reply=True, timeout=5))
    else:
        print(app.control.add_consumer(q, destination=[node], reply=True, timeout=5))
"""


@pytest.fixture
def pipe(tmp_path, own_emulator):
    server = RedisServer(tmp_path / "redis")
    p = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url,
                 extra_env=ENV)
    p.create_pool(POOL, apns=False)
    yield p
    p.stop_workers()
    server.stop()


def _health(pipe) -> subprocess.CompletedProcess:
    return pipe.cli("worker", "--health", "-n", NODE, check=False)


def _control(pipe, action: str, *queues: str) -> None:
    node = NODE.replace("%h", socket.gethostname())
    r = subprocess.run([sys.executable, "-c", CONTROL, node, action, *queues], env=pipe.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def _pushed(pipe, token: str, count: int) -> bool:
    return any(r.get("token") == token and (r.get("data") or {}).get("syncCount") == str(count)
               for r in pipe.emulator.requests())


def test_a_worker_whose_consumer_stopped_is_unhealthy_while_an_idle_one_is_not(pipe):
    ident = new_identity()
    token = "fcm-health-" + ident[-12:]
    pipe.device(POOL, ident, "GCM", token)
    worker = pipe.start_worker("-c", "1", name=NODE)
    wait_for(lambda: _health(pipe).returncode == 0, 40, 0.5, "the worker's first heartbeat")
    pipe.cli("publish", POOL, ident, "notes", "1")
    wait_for(lambda: _pushed(pipe, token, 1), 30, 0.3, "a push while consuming")

    # what Celery consumes for ingest: the run triggers (the runs take from events themselves)
    _control(pipe, "cancel", "events.runs", "push.fcm", "push.apns")
    time.sleep(EFFECTIVE + 1.5)
    idle = _health(pipe)
    assert idle.returncode == 0 and "idle" in idle.stdout, idle.stdout + idle.stderr  # empty queues: no alarm

    pipe.cli("publish", POOL, ident, "notes", "2")
    stuck = wait_for(lambda: (lambda r: r if r.returncode == 1 else None)(_health(pipe)), 15, 0.5,
                     "the health check to see the stuck consumer")
    assert "stuck" in stuck.stderr and "events holds 1" in stuck.stderr, stuck.stderr
    assert worker.poll() is None  # the process is up all along: only progress could tell
    assert not _pushed(pipe, token, 2)

    _control(pipe, "add", "events.runs", "push.fcm")
    wait_for(lambda: _pushed(pipe, token, 2), 30, 0.3, "the push once consuming again")
    wait_for(lambda: _health(pipe).returncode == 0, 15, 0.5, "healthy again")

    os.killpg(worker.pid, signal.SIGKILL)  # a crash: no shutdown handler clears the beat
    worker.wait(10)
    gone = wait_for(lambda: (lambda r: r if r.returncode == 1 else None)(_health(pipe)), 15, 0.5,
                    "the health check to see the killed worker")
    assert "last beat" in gone.stderr, gone.stderr


def test_a_busy_worker_whose_queue_stays_full_for_longer_than_the_stall_is_healthy(tmp_path, own_emulator):
    """The false alarm that would restart healthy workers under load: the events queue holds
    messages for three times the stall while the worker takes them one at a time (one message per
    ingest run, each push answered after 0.5 s); every check during it passes."""
    server = RedisServer(tmp_path / "redis")
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url,
                    extra_env={**ENV, "PUSHSYNC_INGEST_BATCH_MAX": "1", "PUSHSYNC_INLINE_DELIVERY_MAX": "0"})
    try:
        pipe.create_pool(POOL, apns=False)
        idents = [new_identity() for _ in range(40)]
        for ident in idents:
            pipe.device(POOL, ident, "GCM", "fcm-busy-" + ident[-12:])
        pipe.start_worker("-c", "1", name=NODE)
        wait_for(lambda: _health(pipe).returncode == 0, 40, 0.5, "the worker's first heartbeat")
        own_emulator.fault(service="fcm", latency=0.5)
        script = ("import sys\nfrom pushsync.client import publish\n"
                  "for i in sys.argv[2:]: publish(sys.argv[1], i, 'notes', 1)\n")
        subprocess.run([sys.executable, "-c", script, POOL, *idents], env=pipe.env, check=True, timeout=60)
        client = redis.Redis.from_url(pipe.broker_url)
        checks, end = [], time.monotonic() + 3 * EFFECTIVE
        while time.monotonic() < end:
            waiting = client.llen("events") + health.lane_depth(client) + client.llen("push.fcm")
            assert waiting > 0, "the queues ran dry: the test proves nothing"
            r = _health(pipe)
            checks.append(r.returncode)
            assert r.returncode == 0, r.stderr
        assert len(checks) >= 5
    finally:
        pipe.stop_workers()
        server.stop()


def test_no_worker_and_no_redis_are_unhealthy_with_a_reason(pipe, tmp_path):
    r = _health(pipe)
    assert r.returncode == 1 and "no heartbeat from health1@" in r.stderr
    pipe.env["PUSHSYNC_BROKER_URL"] = "redis://127.0.0.1:1/0"
    r = _health(pipe)
    assert r.returncode == 1 and "cannot reach Redis" in r.stderr and "Traceback" not in r.stderr


def test_the_rule_on_hand_written_heartbeats_including_garbage(pipe):
    """What Redis holds is untrusted: junk values count as no beat and no progress, not a crash."""
    client = redis.Redis.from_url(pipe.broker_url)
    now = time.time()
    client.hset(health.BEAT_KEY, mapping={"fresh@a": now, "hung@a": now - 60, "junk@a": "not-a-time",
                                          "busy@a": now, "idle@a": now})
    client.hset(health.PROGRESS_KEY, mapping={"fresh@a": now - 100, "busy@a": now - 1, "junk@a": "x",
                                              "idle@a": now - 100})
    client.hset(health.QUEUES_KEY, mapping={"fresh@a": "events,push.fcm", "busy@a": "events",
                                            "idle@a": "push.apns", "junk@a": "events"})
    client.rpush("events", "m1", "m2")
    verdicts = {n: health.judge(client, n, 3.0, now) for n in ("fresh@a", "hung@a", "junk@a", "busy@a", "idle@a")}
    assert not verdicts["fresh@a"].healthy and "events holds 2" in verdicts["fresh@a"].reason
    assert not verdicts["hung@a"].healthy and "last beat 60 s ago" in verdicts["hung@a"].reason
    assert not verdicts["junk@a"].healthy
    assert verdicts["busy@a"].healthy and verdicts["idle@a"].healthy
    assert health.census(client, 3.0, now) == {"alive": 3, "stuck": 1}
    # hostile entries: a time of inf or nan is no beat (not a node alive forever), and a queue list
    # naming another kind of key (a hash) is ignored instead of failing the check and the metrics
    client.hset(health.BEAT_KEY, mapping={"inf@a": "inf", "nan@a": "nan", "odd@a": now})
    client.hset(health.PROGRESS_KEY, "odd@a", now - 100)
    client.hset(health.QUEUES_KEY, "odd@a", f"{health.BEAT_KEY},events")
    assert not health.judge(client, "inf@a", 3.0, now).healthy
    assert not health.judge(client, "nan@a", 3.0, now).healthy
    odd = health.judge(client, "odd@a", 3.0, now)
    assert not odd.healthy and "events holds 2" in odd.reason and health.BEAT_KEY not in odd.reason
    assert health.census(client, 3.0, now) == {"alive": 4, "stuck": 2}
    # a backlog filed in the pools' lanes (worker.lanes) is work waiting too, and not-ours bytes there are not fatal
    client.delete("events")
    client.zadd("pushsync:lanes", {"pool-a": now, b"\xff": now})
    client.rpush("pushsync:lane:pool-a", "m1", "m2", "m3")
    lanes = health.judge(client, "fresh@a", 3.0, now)
    assert not lanes.healthy and "the pools' lanes holds 3" in lanes.reason
    assert health.node_name(["-c", "2", "--hostname=w@example"]) == "w@example"
    assert health.node_name([]) == f"celery@{socket.gethostname()}"
    # a long task is not a stall: the check waits at least the task time limit
    from pushsync.settings import load_settings

    assert health.stall_seconds(load_settings({"PUSHSYNC_HEALTH_STALL": "3"})) == 60.0
    assert health.stall_seconds(load_settings({"PUSHSYNC_HEALTH_STALL": "300"})) == 300.0
