"""`pushsync demo`, the README's main job, run as a user runs it: it must show every expected
push arrive, and must leave alone a Redis that PUSHSYNC_BROKER_URL names (a production shell)."""

from __future__ import annotations

import subprocess

import redis

from ..conftest import PUSHSYNC
from ..e2e.harness import Pipeline

NAMED = "redis://127.0.0.1:6379/15"


def test_demo_shows_the_pushes_and_leaves_the_named_redis_alone(tmp_path):
    live = redis.Redis.from_url(NAMED)
    live.flushdb()
    live.rpush("events", "a message some worker has yet to take")
    live.zadd("pushsync:retry", {"a retry that is waiting": 1})
    try:
        env = {**Pipeline.base_env(), "PUSHSYNC_BROKER_URL": NAMED}
        r = subprocess.run([PUSHSYNC, "demo", "--state-dir", str(tmp_path / "demo")], env=env, capture_output=True,
                           text=True, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "All 6 expected pushes arrived" in r.stdout and "leaves that Redis alone" in r.stdout
        assert live.lrange("events", 0, -1) == [b"a message some worker has yet to take"]
        assert live.zcard("pushsync:retry") == 1 and live.dbsize() == 2
    finally:
        live.flushdb()


def test_make_demo_installs_the_runtime_only_and_says_what_it_does(tmp_path):
    """`make demo` on a fresh clone: pushsync without its test tools, and no package but redis-server."""
    from ..conftest import ROOT

    plan = subprocess.run(["make", "-n", "-B", "demo", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert plan.returncode == 0, plan.stderr
    steps = plan.stdout.splitlines()
    assert any(s.endswith("bash scripts/install.sh runtime") for s in steps), steps
    assert "bash scripts/services.sh --demo" in steps and "[test" not in plan.stdout
    # the installer's failure is one clear line, not a silent stop (a Python that does not exist)
    r = subprocess.run(["bash", "scripts/install.sh", "runtime"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "v2"),
                                        "PYTHON": "/no/such/python3"})
    assert r.returncode != 0 and "install: creating the virtual environment" in r.stdout
    # the demo's own service step only looks for redis-server (here it is installed: nothing to do, exit 0)
    r = subprocess.run(["bash", "scripts/services.sh", "--demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
