"""The Prometheus page: counters, skips and the latency histogram, labels escaped (pure logic)."""

from __future__ import annotations

import re

from worker import metrics

# a sample line of the text exposition format: name{label="escaped value",...} number
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\\n]|\\.)*"(?:,[a-z_]+="(?:[^"\\\n]|\\.)*")*\})? [-+0-9.e]+$')


def _snap(**over):
    snap = {"sent": {}, "failed": {}, "invalidated": {}, "events": {}, "dead_lettered": {}, "skipped": {},
            "latency": {}, "queues": {"events": 0}, "dead_letters": 0}
    snap.update(over)
    return snap


def test_every_label_is_escaped_the_histograms_too():
    page = metrics.prometheus(_snap(failed={"GCM": {'evil"} 1\n#': 2}},
                                    latency={'GCM"} 9\nfake_metric 1 #': {"count": 1, "sum": 0.1, "le=0.25": 1}}))
    assert "\nfake_metric 1" not in page
    samples = [line for line in page.splitlines() if not line.startswith("#")]
    assert samples and all(SAMPLE.match(line) for line in samples), [x for x in samples if not SAMPLE.match(x)]
    assert sum(line.startswith("pushsync_push_latency_seconds") for line in samples) == 15


def test_skips_are_exported_by_reason():
    page = metrics.prometheus(_snap(skipped={"not_owned": 3, "stale": 1}))
    assert 'pushsync_pushes_skipped_total{why="not_owned"} 3' in page
    assert 'pushsync_pushes_skipped_total{why="stale"} 1' in page


def test_figures_from_many_tasks_add_up_in_redis_and_read_back():
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/7")
    client.flushdb()
    try:
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
    finally:
        client.flushdb()
