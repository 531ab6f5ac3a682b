"""A real worker started with a PUSHSYNC_SECRET_KEY that does not open a pool's credentials says so
at ERROR, naming the pool, and `pushsync metrics` shows it (pushsync_pools_key_unreadable 1); the
same worker restarted with the right key shows 0. Redis is a redis-server of the test's own."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pushsync.secrets import new_key

from ..conftest import POOL, PUSHSYNC, TEST_SECRET_KEY
from .harness import Emulator, Pipeline, RedisServer, free_port, wait_for


@pytest.fixture
def pipe(tmp_path):
    server = RedisServer(tmp_path / "redis")
    emu = Emulator(tmp_path / "emu")
    p = Pipeline(tmp_path, emu, f"sqlite:///{tmp_path}/store.db", broker_url=server.url)
    port = free_port()
    exporter = subprocess.Popen([PUSHSYNC, "metrics", "--port", str(port)], env=p.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    p.metrics_url = f"http://127.0.0.1:{port}/metrics"
    try:
        yield p
    finally:
        p.stop_workers()
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(10)
        emu.stop()
        server.stop()


def _unreadable(url: str) -> dict[str, float] | None:
    """worker -> pushsync_pools_key_unreadable on the real page, None while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            page = r.read().decode()
    except OSError:
        return None
    return {s.labels["worker"]: s.value for f in text_string_to_metric_families(page)
            if f.name == "pushsync_pools_key_unreadable" for s in f.samples}


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_worker_with_another_key_names_the_pool_at_error_and_the_metric_shows_it(pipe):
    pipe.create_pool(POOL)  # sealed with the tests' key
    wrong = new_key()
    pipe.env["PUSHSYNC_SECRET_KEY"] = wrong
    pipe.start_worker("-c", "1", name="wrongkey@%h")
    log = pipe.dir / "worker-0.log"

    def error_line():
        found = [r for r in _records(log) if r["level"] == "error" and POOL in r["message"]]
        return found[0] if found else None
    line = wait_for(error_line, 60, 0.3, "the worker's ERROR line naming the pool")
    assert "do not open with any key of PUSHSYNC_SECRET_KEY" in line["message"], line
    assert wrong not in log.read_text() and TEST_SECRET_KEY not in log.read_text()
    got = wait_for(lambda: {w: n for w, n in (_unreadable(pipe.metrics_url) or {}).items()
                            if w.startswith("wrongkey@")}, 30, 0.3, "the metric of the wrong-key worker")
    assert list(got.values()) == [1.0], got

    pipe.stop_workers()  # a clean stop takes its figure away
    pipe.env["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY
    pipe.start_worker("-c", "1", name="rightkey@%h")
    got = wait_for(lambda: (lambda m: m if m and any(w.startswith("rightkey@") for w in m) else None)(
        _unreadable(pipe.metrics_url)), 60, 0.3, "the metric of the right-key worker")
    assert list(got.values()) == [0.0] and all(w.startswith("rightkey@") for w in got), got
    records = _records(log)  # the harness numbers the logs of the running workers: worker-0.log again
    assert not [r for r in records if r["level"] == "error"]
    assert any("open with this worker's PUSHSYNC_SECRET_KEY" in r["message"] for r in records)
