"""The Celery app's configuration and routing, against a real Redis (database 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from pushsync.queues import DELIVER_TASK, INGEST_TASK, QUEUES, queue_for
from worker.app import make_app

URL = "redis://127.0.0.1:6379/7"


def test_messages_land_on_their_own_queue(monkeypatch):
    from pushsync import settings

    monkeypatch.setenv("PUSHSYNC_BROKER_URL", URL)
    settings.get_settings.cache_clear()
    try:
        app = make_app()
        client = redis.Redis.from_url(URL)
        client.flushdb()
        app.send_task(DELIVER_TASK, args=[{}], queue=queue_for("APNS"))
        app.send_task(DELIVER_TASK, args=[{}], queue=queue_for("APNS_SANDBOX"))
        app.send_task(DELIVER_TASK, args=[{}], queue=queue_for("GCM"))
        app.send_task(INGEST_TASK, args=[[]], queue="events")
        assert {q: client.llen(q) for q in QUEUES} == {"events": 1, "push.fcm": 1, "push.apns": 2}
        client.flushdb()
    finally:
        settings.get_settings.cache_clear()


def test_the_settings_that_keep_messages():
    conf = make_app().conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_retry_on_startup is True
    opts = conf.broker_transport_options
    assert opts["visibility_timeout"] > conf.task_time_limit
    assert opts["unacked_restore_interval"] * opts["unacked_restore_throttle"] <= 5


def test_a_pool_process_built_keeps_what_it_holds_out_of_the_collectors_walk(tmp_path):
    """What a pool process holds once built lives as long as the process: Celery's process-init
    signal leaves it frozen, so a full collection (one about every second under load) walks only
    what runs made since, not the hundreds of thousands of start-up objects (worker.tasks)."""
    script = (
        "import gc, json\n"
        "from celery.signals import worker_process_init\n"
        "import worker.tasks\n"
        "before = len(gc.get_objects())\n"
        "worker_process_init.send(sender=None)\n"
        "print(json.dumps([before, gc.get_freeze_count(), len(gc.get_objects())]))\n")
    env = {**os.environ, "PUSHSYNC_BROKER_URL": URL, "PUSHSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/s.db"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, frozen, walked = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > before / 2 and walked < frozen / 20, (before, frozen, walked)
