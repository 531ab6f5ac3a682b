"""A pool's APNs window with a real worker, the scheduler (the retry set by Redis's clock) and the
emulators: a dataset changing all the time costs each APNs device one push per window, the
last with the final count, while its FCM devices keep the shipped 1 s window."""

from __future__ import annotations

import time

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for

WINDOW, SECONDS, CHANGES = 3.0, 9.0, 1000


def _publish_spread(pipe: Pipeline, identity: str) -> None:
    """CHANGES counts of one dataset over SECONDS, from a producer process of its own."""
    import subprocess
    import sys

    script = ("import sys, time\nfrom pushsync.client import publish\n"
              f"start = time.time()\nfor n in range(1, {CHANGES + 1}):\n"
              f"    publish('{POOL}', '{identity}', 'notes', n)\n"
              f"    time.sleep(max(0.0, start + n * {SECONDS / CHANGES} - time.time()))\n")
    subprocess.run([sys.executable, "-c", script], env=pipe.env, check=True, timeout=120)


def test_an_apns_window_gives_each_device_one_push_a_window_and_the_final_count_last(tmp_path, own_emulator):
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=11)
    try:
        pipe.create_pool(POOL)
        pipe.cli("pool", "create", POOL, "--apns-window", str(WINDOW))
        ident = new_identity()
        apns = [f"{n:064x}" for n in (1, 2)]
        for token in apns:
            pipe.device(POOL, ident, "APNS", token)
        pipe.device(POOL, ident, "GCM", "fcm-window-1")
        pipe.start_worker()
        pipe.start_scheduler()
        started = time.time()
        _publish_spread(pipe, ident)

        def counts(token):
            return [int(r["data"]["syncCount"]) for r in own_emulator.requests()
                    if r.get("token") == token and r["status"] == 200]
        wait_for(lambda: all(counts(t)[-1:] == [CHANGES] for t in [*apns, "fcm-window-1"]), timeout=60,
                 what="the final count on every device")
        took = time.time() - started
        for token in apns:
            got = counts(token)
            # one a window over the changes' time (a window's end is late by up to the retry set's second
            # and the scheduler's poll, so windows drift), and the one the last window's end sent
            assert len(got) <= int(SECONDS / WINDOW) + 2, (got, took)
            assert got == sorted(got)
        # FCM kept the shipped 1 s window: about one push a second
        assert len(counts("fcm-window-1")) > max(len(counts(t)) for t in apns) + 2, [counts(t) for t in apns]
        assert not pipe.dead_letters()
        assert pipe.stats()["held"].get("window", 0) > 0
    finally:
        pipe.stop_workers()
