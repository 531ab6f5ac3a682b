"""The producer's start-up (pushsync.client.prepare): a process that prepares publishing has its
broker connection open before its first publish, so that publish opens nothing (it was about 70 ms
of the first event's latency); a broker out of reach or silent is a warning from prepare's own
thread, and the start-up does not wait for it. Each test runs in a process of its own, against a
redis-server of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.harness import RedisServer

POOL = "us-east-1:0b0b0b0b-0000-4000-8000-00000000000b"
IDENT = "us-east-1:00000000-0000-4000-8000-000000000001"

SCRIPT = f"""
import json, os, sys
import redis
from pushsync import client
watch = redis.Redis.from_url(os.environ["PUSHSYNC_BROKER_URL"])
def opened():
    return watch.info("stats")["total_connections_received"]
watch.ping()
start = opened()
if sys.argv[1] == "prepare":
    client.prepare().join(10)
prepared = opened()
client.publish("{POOL}", "{IDENT}", "notes", 1)
print(json.dumps([prepared - start, opened() - prepared, watch.llen("events")]))
"""


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def _python(url: str, script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh process with the shipped settings, but the broker at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
    env["PUSHSYNC_BROKER_URL"] = url
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60)


def test_after_prepare_the_first_publish_opens_no_connection(own_redis):
    out = _python(own_redis.url, SCRIPT, "prepare")
    assert out.returncode == 0, out.stderr
    by_prepare, by_publish, queued = json.loads(out.stdout)
    assert by_prepare >= 1 and by_publish == 0 and queued == 1
    # without it, the first publish is the one that connects
    out = _python(own_redis.url, SCRIPT, "cold")
    assert out.returncode == 0, out.stderr
    by_prepare, by_publish, queued = json.loads(out.stdout)
    assert by_prepare == 0 and by_publish >= 1 and queued == 2


PREPARE = ("import logging, sys, time\nfrom pushsync import client\nlogging.basicConfig()\n"
           "t = time.monotonic()\nthread = client.prepare()\nreturned = time.monotonic() - t\n"
           "thread.join(float(sys.argv[1]))\nprint(round(returned, 2), thread.is_alive())\n")


def _prepare(url: str, join: float) -> tuple[float, bool, str]:
    out = _python(url, PREPARE, str(join))
    assert out.returncode == 0, out.stderr
    returned, alive = out.stdout.split()
    return float(returned), alive == "True", out.stderr


def test_prepare_with_the_broker_out_of_reach_warns_and_returns():
    returned, alive, err = _prepare("redis://127.0.0.1:1/0", 3)
    assert returned < 2 and not alive  # refused: one try, not the publishes' retries
    assert "could not reach the broker to prepare publishing" in err


def test_a_silent_broker_does_not_hold_up_the_start_up(own_redis):
    """Blackholed (connections accepted, nothing answered): prepare returns at once; its thread
    gives up within the connection's bounds and says so."""
    from pushsync.broker import REDIS_CONNECT_TIMEOUT, REDIS_TIMEOUT
    from tests.e2e.proxy import CuttableProxy

    proxy = CuttableProxy(own_redis.port)
    try:
        proxy.blackhole(True)
        returned, alive, err = _prepare(f"redis://127.0.0.1:{proxy.port}/0", REDIS_CONNECT_TIMEOUT + REDIS_TIMEOUT + 2)
        assert returned < 2 and not alive
        assert "could not reach the broker to prepare publishing" in err
    finally:
        proxy.blackhole(False)
        proxy.close()
