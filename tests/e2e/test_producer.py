"""Producers through a broker outage: `publish` and `publish_many` keep trying for
PUSHSYNC_PUBLISH_TIMEOUT seconds, so an event is either on the queue or its caller got an
exception. The producers here do nothing special: a loop of plain calls."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from ..conftest import POOL
from .harness import Pipeline, RedisServer, seed, tally, wait_for
from .producers import start_producer

PRODUCER = """
import json, sys, time
from pushsync.client import publish, publish_many
events = json.loads(sys.stdin.read())
for e in events[:len(events) // 2]:          # one event at a time, as a request handler would
    publish(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"])
    time.sleep(0.01)
rest = events[len(events) // 2:]
for i in range(0, len(rest), 5):             # and small batches
    publish_many(rest[i:i + 5], chunk_size=2)
    time.sleep(0.02)
print("published", len(events))
"""


def test_a_redis_restart_mid_publish_loses_no_event(tmp_path, own_emulator):
    """The producer's promise alone: Redis SIGKILLed for 2 s while a plain loop publishes, and
    every event ends on the queue. The worker starts once Redis is back, so that what it shows
    is the producer's doing; workers meeting Redis kills are the robustness tests' part."""
    server = RedisServer(tmp_path / "redis")
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url,
                    extra_env={"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "15"})
    try:
        pipe.create_pool(POOL)
        tokens = seed(pipe, POOL, 300, 1, dataset="notes")
        events = sorted(set(tokens.values()))
        producer = start_producer(pipe, PRODUCER, POOL, events)
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: client.llen("events") >= 30, timeout=60, what="events on the queue")
        server.kill()
        time.sleep(2)
        assert producer.poll() is None, "the producer finished before the outage: the test proves nothing"
        server.start()
        producer.wait(120)
        out, err = producer.stdout.read(), producer.stderr.read()
        assert producer.returncode == 0 and f"published {len(events)}" in out, err
        assert "broker unreachable" in err  # it did meet the outage, and rode it out
        pipe.start_worker("-c", "2")
        wait_for(lambda: tally(own_emulator.requests(), tokens, "notes", 1)["delivered"] == len(tokens),
                 timeout=90, interval=0.5, what="every event published across the restart")
        t = tally(own_emulator.requests(), tokens, "notes", 1)
        print(f"\n[Redis SIGKILL mid-publish] events {len(events)}, pushes expected {t['expected']}, "
              f"delivered {t['delivered']}, duplicates {t['duplicates']}")
        assert t["strays"] == 0
    finally:
        pipe.stop_workers()
        server.stop()


def test_publish_gives_up_after_the_publish_timeout_and_says_how_many_went(tmp_path):
    server = RedisServer(tmp_path / "redis")
    script = """
import json, sys, time
from pushsync.client import PublishError, publish_many
events = [{"identityPoolId": sys.argv[1], "identityId": "us-east-1:0000000" + str(i), "datasetName": "d",
           "syncCount": 1} for i in range(10)]
publish_many(events[:4], chunk_size=2)
open(sys.argv[2], "w").close()               # tell the test to stop Redis
time.sleep(1.0)
started = time.monotonic()
try:
    publish_many(events, chunk_size=3)
except PublishError as exc:
    print(json.dumps({"sent": exc.sent, "waited": time.monotonic() - started, "message": str(exc)}))
"""
    env = {**Pipeline.base_env(), "PUSHSYNC_BROKER_URL": server.url, "PUSHSYNC_PUBLISH_TIMEOUT": "1.5",
           "PUSHSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/unused.db"}
    flag = tmp_path / "stop-redis"
    proc = subprocess.Popen([sys.executable, "-c", script, POOL, str(flag)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(flag.exists, timeout=30, what="the first publish")
    server.kill()
    out, err = proc.communicate(timeout=60)
    result = json.loads(out)
    assert result["sent"] == 0 and 1.4 <= result["waited"] < 10, result
    assert "PUSHSYNC_PUBLISH_TIMEOUT" in result["message"] and "0 of 10 events" in result["message"]


@pytest.mark.parametrize("chunk", [-1, 0, 1001, 2.5, True])
def test_publish_many_refuses_a_chunk_size_outside_1_to_the_message_limit(chunk):
    from pushsync.client import publish_many
    from pushsync.contract import ValidationError

    with pytest.raises(ValidationError, match="chunk_size"):
        publish_many([{"identityPoolId": POOL, "identityId": POOL, "datasetName": "d", "syncCount": 1}],
                     chunk_size=chunk)
