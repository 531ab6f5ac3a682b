"""The figures in Redis and the Prometheus page `pushsync metrics` makes of them through
prometheus_client: the names and types the rules read, labels escaped, the server's bounds (a
real HTTP server on Redis database 7)."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from worker import exporter, metrics

from ..e2e.harness import free_port

URL = "redis://127.0.0.1:6379/7"
# a sample line of the text exposition format: name{label="escaped value",...} number
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\\n]|\\.)*"(?:,[a-z_]+="(?:[^"\\\n]|\\.)*")*\})? [-+0-9.e]+$')
# every family the hand-written page had before prometheus_client, with its type: the alert rules,
# the dashboard and the e2e tests read these names
BEFORE = {
    "pushsync_pushes_sent_total": "counter", "pushsync_pushes_failed_total": "counter",
    "pushsync_tokens_invalidated_total": "counter", "pushsync_events_total": "counter",
    "pushsync_dead_lettered_total": "counter", "pushsync_pushes_skipped_total": "counter",
    "pushsync_dead_letters": "gauge", "pushsync_store_up": "gauge", "pushsync_workers_alive": "gauge",
    "pushsync_workers_stuck": "gauge", "pushsync_scheduler_lock_held": "gauge", "pushsync_queue_depth": "gauge",
    "pushsync_push_latency_seconds": "histogram",
}


def _snap(**over):
    snap = {"sent": {}, "failed": {}, "invalidated": {}, "events": {}, "dead_lettered": {}, "skipped": {},
            "latency": {}, "queues": {"events": 0}, "dead_letters": 0, "store": {"up": True},
            "workers": {"alive": 1, "stuck": 0}, "scheduler_lock_held": 1}
    snap.update(over)
    return snap


def _samples(page: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, read by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def test_the_families_keep_their_names_and_types_and_the_pool_key_gauge_and_held_counter_are_new():
    page = exporter.prometheus(_snap(sent={"GCM": 1}, events={"received": 2}, held={"fcm_budget": 3}))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
    assert types == {**BEFORE, "pushsync_pools_key_unreadable": "gauge", "pushsync_pushes_held_total": "counter"}
    samples = _samples(page)
    assert samples[("pushsync_pushes_sent_total", (("platform", "GCM"),))] == 1
    assert samples[("pushsync_events_total", (("outcome", "received"),))] == 2
    assert samples[("pushsync_pushes_held_total", (("why", "fcm_budget"),))] == 3
    assert not any(name.endswith("_created") for name, _ in samples)  # no extra series per counter


def test_every_label_is_escaped_the_histograms_too():
    page = exporter.prometheus(_snap(failed={"GCM": {'evil"} 1\n#': 2}},
                                     latency={'GCM"} 9\nfake_metric 1 #': {"count": 1, "sum": 0.1, "le=0.25": 1}}))
    assert "\nfake_metric 1" not in page
    samples = [line for line in page.splitlines() if not line.startswith("#")]
    assert samples and all(SAMPLE.match(line) for line in samples), [x for x in samples if not SAMPLE.match(x)]
    assert sum(line.startswith("pushsync_push_latency_seconds") for line in samples) == 15
    parsed = _samples(page)
    assert parsed[("pushsync_pushes_failed_total", (("platform", "GCM"), ("reason", 'evil"} 1\n#')))] == 2


def test_the_histogram_is_cumulative_with_the_same_bounds():
    page = exporter.prometheus(_snap(latency={"GCM": {"le=0.1": 2, "le=5.0": 1, "le=+Inf": 1, "count": 4,
                                                      "sum": 400.5}}))
    s = _samples(page)

    def bucket(le):
        return s[("pushsync_push_latency_seconds_bucket", (("le", le), ("platform", "GCM")))]
    assert [bucket(b) for b in ("0.05", "0.1", "2.5", "5.0", "1800.0", "+Inf")] == [0, 2, 2, 3, 3, 4]
    assert s[("pushsync_push_latency_seconds_count", (("platform", "GCM"),))] == 4
    assert s[("pushsync_push_latency_seconds_sum", (("platform", "GCM"),))] == 400.5


def test_skips_are_exported_by_reason():
    s = _samples(exporter.prometheus(_snap(skipped={"not_owned": 3, "stale": 1})))
    assert s[("pushsync_pushes_skipped_total", (("why", "not_owned"),))] == 3
    assert s[("pushsync_pushes_skipped_total", (("why", "stale"),))] == 1


@pytest.fixture
def client():
    c = redis.Redis.from_url(URL)
    c.flushdb()
    yield c
    c.flushdb()


def test_figures_from_many_tasks_add_up_in_redis_and_read_back(client):
    for _ in range(3):  # three tasks, perhaps in three processes
        rec = metrics.Recorder()
        rec.add("sent", "GCM", n=10)
        rec.add("failed", "APNS", "TooManyRequests")
        rec.add("skipped", "stale", n=2)
        rec.observe("GCM", 0.2, n=10)
        rec.flush(client)
    snap = metrics.snapshot(client, ["events"], dead_letters=4)
    assert snap["sent"] == {"GCM": 30} and snap["failed"] == {"APNS": {"TooManyRequests": 3}}
    assert snap["skipped"] == {"stale": 6} and snap["dead_letters"] == 4
    assert snap["latency"]["GCM"]["count"] == 30 and snap["latency"]["GCM"]["le=0.25"] == 30
    assert snap["queues"]["events"] == 0
    lines = {line.split(":", 1)[0]: " ".join(line.split(":", 1)[1].split()) for line in metrics.summary_lines(snap)}
    assert lines["GCM"].startswith("sent 30, failed 0") and lines["skipped"] == "stale 6"
    # fields that are not ours (not a number, no label, an unknown kind, bytes that are not text) are
    # counted and left out: the page and `stats` go on showing the rest
    client.hset(metrics.COUNTERS_KEY, mapping={"sent|GCM|x": 1, "sent": 2, "failed|GCM": 3, "sent|FCM": "lots",
                                               b"\xff": 4, "nonsense|a": 5})
    client.hset(metrics.LATENCY_KEY, mapping={"nolabel": 1.0, "GCM|sum": "nan"})
    snap = metrics.snapshot(client, ["events"], dead_letters=4)
    assert snap["sent"] == {"GCM": 30} and snap["failed"] == {"APNS": {"TooManyRequests": 3}}
    assert snap["unreadable_fields"] == 8 and snap["latency"]["GCM"]["count"] == 30
    assert metrics.summary_lines(snap)


def test_pool_key_figures_of_gone_workers_and_junk_are_left_out(client):
    now = time.time()
    client.hset(metrics.POOL_KEYS_KEY, mapping={
        "fresh@a": f"2 {now - 5}", "ok@b": f"0 {now}", "gone@c": f"3 {now - metrics.POOL_KEYS_FRESH - 1}",
        "junk@d": "lots", "nan@e": f"nan {now}", "three@f": f"1 {now} x", "future-inf@g": "1 inf"})
    snap = metrics.snapshot(client, ["events"], dead_letters=None)
    assert snap["pools_key_unreadable"] == {"fresh@a": 2, "ok@b": 0}
    assert "pool keys:     fresh@a cannot open the credentials of 2 pool(s)" in "\n".join(metrics.summary_lines(snap))
    s = _samples(exporter.prometheus(snap))
    assert s[("pushsync_pools_key_unreadable", (("worker", "fresh@a"),))] == 2
    assert s[("pushsync_pools_key_unreadable", (("worker", "ok@b"),))] == 0
    assert len([k for k in s if k[0] == "pushsync_pools_key_unreadable"]) == 2


@pytest.fixture
def serving(monkeypatch):
    """The exporter's real HTTP server in a thread, with a short connection timeout."""
    monkeypatch.setattr(exporter._Handler, "timeout", 1.0)
    servers = []

    def start(take):
        server = exporter.make("127.0.0.1", 0, take)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_server_serves_redis_figures_and_a_silent_scraper_holds_up_no_one(client, serving):
    rec = metrics.Recorder()
    rec.add("sent", "APNS", n=7)
    rec.flush(client)
    base = serving(lambda: metrics.snapshot(client, ["events"], dead_letters=None))
    silent = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    silent.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    try:
        started = time.monotonic()
        status, page = _get(base + "/metrics")
        assert status == 200 and time.monotonic() - started < 2
        assert _samples(page)[("pushsync_pushes_sent_total", (("platform", "APNS"),))] == 7
        assert _get(base + "/")[0] == 200 and _get(base + "/other")[0] == 404
        silent.settimeout(5)
        assert silent.recv(1024) == b""  # let go after the connection timeout (1 s here)
    finally:
        silent.close()


def test_redis_out_of_reach_answers_503_in_one_line_and_the_server_keeps_serving(serving):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    up = {"now": False}

    def take():
        return _snap() if up["now"] else metrics.snapshot(dead, ["events"], dead_letters=None)
    base = serving(take)
    started = time.monotonic()
    status, body = _get(base + "/metrics")
    assert status == 503 and time.monotonic() - started < 5
    assert body.startswith("# pushsync metrics unavailable: ConnectionError") and body.count("\n") == 1
    up["now"] = True
    assert _get(base + "/metrics")[0] == 200
