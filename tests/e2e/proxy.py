"""A TCP proxy for fault tests: what is behind it can be cut off, slowed down or blackholed."""

from __future__ import annotations

import asyncio
import threading


class CuttableProxy:
    """A TCP proxy to a local port that the test can cut (every connection closed, new ones
    refused), slow down (each chunk forwarded ``delay`` seconds late) or blackhole: nothing is
    forwarded either way and nothing is closed; new connections are accepted and left silent, as
    a partitioned or frozen server's are (this side's kernel still acknowledges what is sent, so
    keepalives and TCP_USER_TIMEOUT see a live peer). When the blackhole ends, what was held goes
    on as after a healed partition, or, with ``forget``, the connections made before stay silent
    for good while new ones flow (an address that moved, a NAT entry lost: only the client's own
    timeouts end the old ones)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.writers: set = set()
        self.flowing = asyncio.Event()  # new connections, and the ones made since the last forget
        self.flowing.set()
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
        self.writers.add(writer)
        flowing = self.flowing  # this connection's: a forgetting heal replaces it with a new one
        try:
            await flowing.wait()
        except asyncio.CancelledError:
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
                    await flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # the proxy closes
            pass

    def set_cut(self, cut: bool) -> None:
        def apply():
            self.cut = cut
            if cut:
                for w in list(self.writers):
                    w.transport.abort()
                self.writers.clear()
        self.loop.call_soon_threadsafe(apply)

    def blackhole(self, on: bool, forget: bool = False) -> None:
        def apply():
            if on:
                self.flowing.clear()
            elif forget:  # the old event stays clear: what waits on it waits for good
                self.flowing = asyncio.Event()
                self.flowing.set()
            else:
                self.flowing.set()
        self.loop.call_soon_threadsafe(apply)

    def close(self):
        def stop():
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_later(0.05, self.loop.stop)
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)
