"""A TCP proxy for fault tests: the store behind it can be cut off or slowed down."""

from __future__ import annotations

import asyncio
import threading


class CuttableProxy:
    """A TCP proxy to a local port that the test can cut (every connection closed, new ones
    refused) or slow down (each chunk forwarded ``delay`` seconds late)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self.delay = 0.0
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
                    if self.delay:
                        await asyncio.sleep(self.delay)
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
