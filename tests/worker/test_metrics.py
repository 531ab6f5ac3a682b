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
