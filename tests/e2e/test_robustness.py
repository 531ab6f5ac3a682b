"""Workers killed with SIGKILL and Redis restarted while pushes are in flight: nothing is lost.

Each test prints the figures for the issue note: events, pushes expected, delivered,
duplicates, dead-lettered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from ..conftest import POOL
from .harness import Emulator, Pipeline, RedisServer, publish_counts, seed, tally, wait_for

# Short limits so that recovery after a worker's death shows within the test: a task may run
# 10 s at most, and a message un-acked for 15 s goes back to the queue.
ENV = {"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "15", "PUSHSYNC_RETRY_BASE": "0.5",
       "PUSHSYNC_RETRY_CAP": "2", "PUSHSYNC_COUNTDOWN_MAX": "5"}


@pytest.fixture
def emulator(tmp_path):
    emu = Emulator(tmp_path / "emu")
    yield emu
    emu.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _report(name, pipe, emulator, tokens, dataset, events):
    t = tally(emulator.requests(), tokens, dataset, 1)
    dead = [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset]
    print(f"\n[{name}] events {events}, pushes expected {t['expected']}, delivered {t['delivered']}, "
          f"duplicates {t['duplicates']}, dead-lettered {len(dead)}")
    assert t["strays"] == 0 and t["missing"] == [] and dead == []


@pytest.mark.parametrize("whole", [False, True], ids=["child", "whole-worker"])
def test_kill_9_while_5000_pushes_are_in_flight(tmp_path, emulator, whole):
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=10, extra_env=ENV)
    try:
        pipe.create_pool(POOL)
        dataset = "notes"
        tokens = seed(pipe, POOL, 1250, 4, dataset=dataset)
        # slow the services a little so that the kill lands mid-batch
        emulator.fault(service="any", latency=0.3)
        victim = pipe.start_worker("-c", "2")
        events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
        wait_for(lambda: tally(emulator.requests(), tokens, dataset, 1)["delivered"] >= 300, timeout=60,
                 what="pushes under way")
        if whole:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(10)
            pipe.start_worker("-c", "2")
        else:
            kids = _children(victim.pid)
            assert kids, "the worker has no pool processes"
            os.kill(kids[0], signal.SIGKILL)
        emulator.clear_faults()
        wait_for(lambda: tally(emulator.requests(), tokens, dataset, 1)["delivered"] == len(tokens),
                 timeout=120, interval=0.5, what="all 5,000 pushes")
        time.sleep(1)
        _report(f"kill -9 {'whole worker' if whole else 'worker child'}", pipe, emulator, tokens, dataset, events)
    finally:
        pipe.stop_workers()


def test_redis_restart_while_events_flow_loses_nothing(tmp_path, emulator):
    server = RedisServer(tmp_path / "redis")
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url, extra_env=ENV)
    try:
        pipe.create_pool(POOL)
        dataset = "notes"
        tokens = seed(pipe, POOL, 300, 2, dataset=dataset)
        identities = sorted(set(tokens.values()))
        pipe.start_worker("-c", "2")
        sent = []

        def producer():
            # a backend that retries a publish until Redis takes it, as producers should
            for i in range(0, len(identities), 10):
                while True:
                    try:
                        publish_counts(pipe, POOL, identities[i:i + 10], dataset, 1)
                        sent.extend(identities[i:i + 10])
                        break
                    except subprocess.CalledProcessError:
                        time.sleep(0.5)
                time.sleep(0.1)

        thread = threading.Thread(target=producer)
        thread.start()
        wait_for(lambda: len(sent) >= 100, timeout=60, what="events flowing")
        server.stop()
        time.sleep(2)
        server.start()
        thread.join(180)
        assert len(sent) == len(identities)
        wait_for(lambda: tally(emulator.requests(), tokens, dataset, 1)["delivered"] == len(tokens),
                 timeout=120, interval=0.5, what="all pushes after the restart")
        time.sleep(1)
        _report("Redis restart", pipe, emulator, tokens, dataset, len(identities))
    finally:
        pipe.stop_workers()
        server.stop()
