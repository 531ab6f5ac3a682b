"""The store out of reach for a while: tasks wait and run again, nothing vanishes.

The worker reaches PostgreSQL through a TCP proxy that the test cuts (closing every
connection and refusing new ones) for several seconds while events flow.
"""

from __future__ import annotations

import time

from ..conftest import PG_URL, POOL, _prepare_pg
from .harness import Emulator, Pipeline, publish_counts, seed, tally, wait_for
from .proxy import CuttableProxy


def test_a_store_briefly_unreachable_makes_tasks_retry_not_vanish(tmp_path):
    _prepare_pg()
    emulator = Emulator(tmp_path / "emu")
    proxy = CuttableProxy(5432)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    pipe = Pipeline(tmp_path, emulator, url, broker_db=8)
    try:
        pipe.create_pool(POOL)
        dataset = "notes"
        tokens = seed(pipe, POOL, 200, 3, dataset=dataset)
        identities = sorted(set(tokens.values()))
        pipe.start_worker("-c", "2")
        publish_counts(pipe, POOL, identities[:100], dataset, 1, chunk=10)
        wait_for(lambda: tally(emulator.requests(), tokens, dataset, 1)["delivered"] > 0, what="first pushes")
        proxy.set_cut(True)
        publish_counts(pipe, POOL, identities[100:], dataset, 1, chunk=10)  # Redis takes them meanwhile
        time.sleep(6)
        during = tally(emulator.requests(), tokens, dataset, 1)["delivered"]
        proxy.set_cut(False)
        wait_for(lambda: tally(emulator.requests(), tokens, dataset, 1)["delivered"] == len(tokens),
                 timeout=120, interval=0.5, what="all pushes once the store is back")
        time.sleep(1)
        t = tally(emulator.requests(), tokens, dataset, 1)
        dead = [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset]
        print(f"\n[store outage 6 s] events {len(identities)}, pushes expected {t['expected']}, delivered "
              f"{t['delivered']} ({during} before the store came back), duplicates {t['duplicates']}, "
              f"dead-lettered {len(dead)}")
        assert t["strays"] == 0 and t["missing"] == [] and dead == []
        assert during < len(tokens)
        log = (tmp_path / "worker-0.log").read_text()
        # an ingest run defers its messages, a delivery is retried by Celery: either way, something waited
        assert "Retry in" in log or "go again later" in log, "no task waited for the store"
    finally:
        pipe.stop_workers()
        emulator.stop()
        proxy.close()
