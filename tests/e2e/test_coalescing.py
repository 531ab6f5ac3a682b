"""Coalescing with real workers: a dataset that changes many times a second costs each device at
most two pushes per window, and the window's last count always arrives, also when the worker
that held it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for

WINDOW = 1.0
ENV = {"PUSHSYNC_COALESCE_WINDOW": str(WINDOW), "PUSHSYNC_TASK_TIME_LIMIT": "5",
       "PUSHSYNC_VISIBILITY_TIMEOUT": "8"}
PRODUCER = """
import sys, time
from pushsync.client import publish
pool, identity, first, last, per_second = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
start = time.monotonic()
for n, count in enumerate(range(first, last + 1)):
    time.sleep(max(0.0, start + n / per_second - time.monotonic()))
    publish(pool, identity, "notes", count)
"""


def _produce(pipe: Pipeline, identity: str, first: int, last: int, per_second: int) -> None:
    subprocess.run([sys.executable, "-c", PRODUCER, POOL, identity, str(first), str(last), str(per_second)],
                   env=pipe.env, check=True, timeout=120)


def _devices(pipe: Pipeline, identity: str) -> dict[str, str]:
    tokens = {f"fcm-co-{identity[-6:]}-{k}": "GCM" for k in range(2)}
    tokens[f"{identity[-8:]}".rjust(64, "a")] = "APNS"
    for tok, plat in tokens.items():
        pipe.device(POOL, identity, plat, tok)
    return tokens


def _pushes(emulator, tokens) -> dict[str, list[tuple[float, int]]]:
    out: dict[str, list[tuple[float, int]]] = {t: [] for t in tokens}
    for r in emulator.requests():
        if r.get("token") in out and r["status"] == 200:
            out[r["token"]].append((r["time"], int(r["data"]["syncCount"])))
    return {t: sorted(v) for t, v in out.items()}


def _most_in_a_window(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + WINDOW) for t in times)


def test_a_dataset_changed_30_times_a_second_costs_two_pushes_a_window_and_ends_on_its_last_count(
        tmp_path, own_emulator):
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=13, extra_env=ENV)
    try:
        pipe.create_pool(POOL)
        identity = new_identity()
        tokens = _devices(pipe, identity)
        pipe.start_worker("-c", "2")
        _produce(pipe, identity, 1, 90, 30)  # 3 s of changes
        wait_for(lambda: all(p and p[-1][1] == 90 for p in _pushes(own_emulator, tokens).values()), timeout=30,
                 what="the last count on every device")
        time.sleep(WINDOW * 2)  # nothing more comes after it
        pushes = _pushes(own_emulator, tokens)
        for tok, got in pushes.items():
            counts = [c for _t, c in got]
            assert counts[-1] == 90 and counts == sorted(counts), (tok, counts)
            # 3 s of changes open at most 4 windows one after another: a leading push and a flush each
            assert len(got) <= 2 * 4, (tok, counts)
            # any one second sees at most a window's flush, the next one's leading push and, when
            # that one opened right at the end of the first, its flush: 3, against 30 changes
            assert _most_in_a_window([t for t, _c in got]) <= 3, (tok, got)
        print(f"[coalescing] 90 changes in 3 s: pushes per device {sorted(len(v) for v in pushes.values())}")
    finally:
        pipe.stop_workers()


def test_the_held_count_arrives_when_the_worker_holding_the_window_is_killed(tmp_path, own_emulator):
    # a 3 s window, so that the kill surely lands while the count is held
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=13,
                    extra_env={**ENV, "PUSHSYNC_COALESCE_WINDOW": "3"})
    try:
        pipe.create_pool(POOL)
        identity = new_identity()
        tokens = _devices(pipe, identity)
        worker = pipe.start_worker("-c", "2")
        _produce(pipe, identity, 1, 1, 1)
        wait_for(lambda: all(p for p in _pushes(own_emulator, tokens).values()), timeout=20, what="the first push")
        _produce(pipe, identity, 2, 6, 50)  # inside the window: held
        os.killpg(worker.pid, signal.SIGKILL)  # the worker, its pump and whatever it had taken, at once
        worker.wait(10)
        time.sleep(3.5)  # the window has ended, with no worker to flush it
        assert not any(c == 6 for p in _pushes(own_emulator, tokens).values() for _t, c in p)
        pipe.workers.clear()
        pipe.start_worker("-c", "1")
        wait_for(lambda: all(p and p[-1][1] == 6 for p in _pushes(own_emulator, tokens).values()), timeout=40,
                 what="the held count 6 after the kill")
    finally:
        pipe.stop_workers()
