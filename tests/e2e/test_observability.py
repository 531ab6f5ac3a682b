"""Metrics, `pushsync stats` and Flower after a real run."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from celery import Celery

from ..conftest import POOL, PUSHSYNC
from .harness import Emulator, Pipeline, new_identity, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("observe")
    emu = Emulator(directory / "emu")
    pipe = Pipeline(directory, emu, f"sqlite:///{directory}/store.db", broker_db=6)
    try:  # a set-up that fails must not leave its worker consuming for the tests after it
        pipe.create_pool(POOL)
        a, b = new_identity(), new_identity()
        tokens = {"fcm-a": a, "ab" * 32: a, "cd" * 32: a, "dead-fcm-b": b, "fcm-b": b}
        plats = {"fcm-a": "GCM", "ab" * 32: "APNS", "cd" * 32: "APNS_SANDBOX", "dead-fcm-b": "GCM", "fcm-b": "GCM"}
        for tok, ident in tokens.items():
            pipe.device(POOL, ident, plats[tok], tok)
        pipe.start_worker("-c", "2", name="observed@%h")
        wait_for(lambda: pipe.redis.hlen("pushsync:workers:beat"), 30, 0.2, what="the worker to start")
        pipe.cli("publish", POOL, a, "notes", "3")
        pipe.cli("publish", POOL, b, "notes", "1")
        # after 3 was taken, not beside it in one micro-batch (where it would be coalesced, not stale)
        wait_for(lambda: len(emu.requests()) >= 3, what="the first pushes")
        pipe.cli("publish", POOL, a, "notes", "2")  # stale
        client = Celery(broker=pipe.broker_url)
        client.send_task("pushsync.ingest", args=[[{"identityPoolId": POOL, "identityId": a, "datasetName": "x/y",
                                                    "syncCount": 1}]], queue="events")  # invalid
        wait_for(lambda: len(emu.requests()) >= 5, what="five pushes")
        time.sleep(1.5)
        yield pipe, emu, tokens
    finally:
        pipe.stop_workers()
        emu.stop()


def _parse(text: str) -> dict[str, float]:
    """sample -> value, its labels in name order (the order of a sample's labels carries no meaning)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base, _, labels = name.partition("{")
            name = base + ("{" + ",".join(sorted(labels.rstrip("}").split(","))) + "}" if labels else "")
            out[name] = float(value)
    return out


def test_metrics_endpoint_has_the_right_counters(run):
    pipe, emu, tokens = run
    port = _free_port()
    proc = subprocess.Popen([PUSHSYNC, "metrics", "--port", str(port)], env=pipe.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return None
        text = wait_for(scrape, 20, what="metrics endpoint")
    finally:
        proc.terminate()
        proc.wait(10)
    m = _parse(text)
    assert m['pushsync_pushes_sent_total{platform="GCM"}'] == 2  # fcm-a (3), fcm-b (1)
    assert m['pushsync_pushes_sent_total{platform="APNS"}'] == 1
    assert m['pushsync_pushes_sent_total{platform="APNS_SANDBOX"}'] == 1
    assert m['pushsync_pushes_failed_total{platform="GCM",reason="UNREGISTERED"}'] == 1
    assert m['pushsync_tokens_invalidated_total{platform="GCM"}'] == 1
    assert m['pushsync_events_total{outcome="received"}'] == 4
    assert m['pushsync_events_total{outcome="notified"}'] == 2
    assert m['pushsync_events_total{outcome="stale"}'] == 1
    assert m['pushsync_events_total{outcome="invalid"}'] == 1
    assert m['pushsync_dead_lettered_total{kind="event"}'] == 1
    assert m["pushsync_dead_letters"] == 1
    assert m['pushsync_queue_depth{queue="events"}'] == 0
    assert m['pushsync_push_latency_seconds_count{platform="GCM"}'] == 2
    assert m['pushsync_push_latency_seconds_bucket{le="+Inf",platform="GCM"}'] == 2
    assert 0 < m['pushsync_push_latency_seconds_sum{platform="GCM"}'] < 30
    for tok in tokens:
        assert tok not in text and tok[:12] not in text


def test_stats_shows_the_same_figures(run):
    pipe, _emu, _tokens = run
    snap = json.loads(pipe.cli("stats", "--json").stdout)
    assert snap["sent"] == {"GCM": 2, "APNS": 1, "APNS_SANDBOX": 1}
    assert snap["failed"] == {"GCM": {"UNREGISTERED": 1}}
    assert snap["invalidated"] == {"GCM": 1} and snap["dead_letters"] == 1
    text = pipe.cli("stats").stdout
    assert "GCM:" in text and "sent 2, failed 1 (UNREGISTERED 1)" in text and "events" in text
    # which deployment it read, so a shell without the settings is not mistaken for an idle one
    from pushsync.redact import redact_url
    assert text.splitlines()[0] == (f"broker: {redact_url(pipe.env['PUSHSYNC_BROKER_URL'])}  "
                                    f"store: {redact_url(pipe.env['PUSHSYNC_DATABASE_URL'])}")


def test_flower_shows_the_worker_and_the_tasks_by_name(run):
    pipe, _emu, _tokens = run
    port = _free_port()
    login = "ops:a-long-enough-flower-password"
    proc = subprocess.Popen([PUSHSYNC, "flower", "--port", str(port), "--address", "127.0.0.1"],
                            env={**pipe.env, "FLOWER_BASIC_AUTH": login},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    auth = "Basic " + base64.b64encode(login.encode()).decode()

    def get(path, with_auth=True):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": auth} if with_auth
                                     else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return None, None

    try:
        wait_for(lambda: get("/api/workers")[0] == 200, 30, what="Flower")
        assert get("/api/workers", with_auth=False)[0] == 401
        # Flower learns of tasks from events: publish while it listens
        ident = new_identity()
        pipe.device(POOL, ident, "GCM", "fcm-flower")
        pipe.cli("publish", POOL, ident, "notes", "1")

        def seen():
            status, tasks = get("/api/tasks")
            names = {t.get("name") for t in (tasks or {}).values()}
            # the run that sent this one push (a small fan-out is sent by the ingest run itself)
            return names if "pushsync.ingest_run" in names else None
        wait_for(seen, 30, interval=0.5, what="tasks in Flower")
        status, workers = get("/api/workers?refresh=1")
        assert status == 200 and any(re.match(r"observed@", name) for name in workers)
    finally:
        proc.terminate()
        proc.wait(10)


def test_worker_logs_are_json_lines_with_task_and_delivery_fields(run):
    pipe, _emu, tokens = run
    text = (pipe.dir / "worker-0.log").read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, "no JSON log lines"
    delivered = [r for r in records if r["message"].startswith("delivered")]
    # a small fan-out is sent by the ingest run itself; a larger one by deliver tasks
    assert delivered and all(r["task"] in ("pushsync.deliver", "pushsync.ingest_run") and r["task_id"]
                             and r["pool"] == POOL and r["platform"] in ("GCM", "APNS", "APNS_SANDBOX")
                             for r in delivered)
    ingested = [r for r in records if r["message"].startswith("ingested")]
    assert ingested and all(r["task"] == "pushsync.ingest_run" for r in ingested)
    for tok in tokens:
        assert tok not in text
