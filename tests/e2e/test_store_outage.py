"""The store out of reach for a while: tasks wait and run again, nothing vanishes.

The worker reaches PostgreSQL through a TCP proxy that the test cuts (closing every
connection and refusing new ones) for several seconds while events flow.
"""

from __future__ import annotations

import asyncio
import threading
import time

from ..conftest import PG_URL, POOL, _prepare_pg
from .harness import Emulator, Pipeline, publish_counts, seed, tally, wait_for


class CuttableProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self.loop = asyncio.new_event_loop()
        self.writers: set = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer):
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def set_cut(self, cut: bool) -> None:
        def apply():
            self.cut = cut
            if cut:
                for w in list(self.writers):
                    w.transport.abort()
                self.writers.clear()
        self.loop.call_soon_threadsafe(apply)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)


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
        assert "Retry in" in log, "no task waited for the store"
    finally:
        pipe.stop_workers()
        emulator.stop()
        proxy.close()
