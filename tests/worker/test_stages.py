"""The CPU budget's two halves: a process's stage figures (worker/stages.py) and the benchmark's
sums of them (bench/budget.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.budget import ROWS, _budget
from worker import stages

PROCESS = """
import sys, threading, time
from worker import stages
stages.configure(sys.argv[1])
def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
with stages.stage("commit"):
    spin(0.3)
with stages.stage("send_wait"):
    time.sleep(0.3)  # waiting costs no CPU
done, stop = threading.Event(), threading.Event()
def sending():
    spin(0.2)
    done.set()
    stop.wait()
loop = threading.Thread(target=sending)
loop.start()
stages.sending_thread(loop.ident)
done.wait()
stages.write()
stop.set()
"""


def test_a_stage_counts_its_own_threads_cpu_and_the_sending_thread_is_the_transport(tmp_path):
    subprocess.run([sys.executable, "-c", PROCESS, str(tmp_path)], check=True, timeout=60)
    [written] = list(tmp_path.glob("*.json"))
    fig = json.loads(written.read_text())
    assert 0.25 <= fig["stages"]["commit"] <= 0.6, fig
    assert fig["stages"]["send_wait"] < 0.05, fig
    assert 0.15 <= fig["transport"] <= 0.5 and fig["process"] >= 0.45, fig


def test_stages_cost_nothing_when_off():
    stages.configure(None)
    assert stages.stage("commit") is stages.stage("take")  # the one shared null context


def _snap(files, workers, redis=0.0, postgres=0.0, sink=0.0):
    return {"files": files, "workers": workers, "redis": redis, "postgres": postgres, "sink": sink}


def test_the_budget_splits_each_process_and_leaves_the_rest_to_celery():
    """Two pool processes (with stage files) and a main process (a file of nothing): the stages
    and the transport per push, the pool's remainder as Celery's, the main process on its own row."""
    before = _snap({1: {"stages": {"commit": 1.0}, "transport": 0.5}, 2: {"stages": {}, "transport": 0.0},
                    9: {"stages": {}, "transport": 0.0}}, {1: 10.0, 2: 0.0, 9: 3.0}, redis=1.0, postgres=2.0)
    after = _snap({1: {"stages": {"commit": 2.0, "take": 0.5}, "transport": 1.5},
                   2: {"stages": {"commit": 1.0}, "transport": 1.0}, 9: {"stages": {}, "transport": 0.0}},
                  {1: 14.0, 2: 3.0, 9: 4.0}, redis=1.5, postgres=4.0, sink=0.5)
    got = _budget(before, after, pushes=1_000_000)  # 1 s of CPU = 1 µs a push
    assert set(got) == {k for k, _ in ROWS} | {"worker_total", "all_total"}
    assert (got["commit"], got["take"], got["transport"]) == (2.0, 0.5, 2.0)
    assert got["pool_rest"] == 7.0 - 4.5  # pool CPU 4 + 3, minus stages 3.5 and transport 2
    assert got["main"] == 1.0 and got["worker_total"] == 8.0
    assert (got["redis"], got["postgres"], got["sink"], got["all_total"]) == (0.5, 2.0, 0.5, 11.0)
