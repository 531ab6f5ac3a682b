"""One long-lived asyncio loop per worker process, on a daemon thread.

Celery tasks are synchronous; the HTTP/2 and HTTP/1.1 connection pools to APNs and FCM live in
this loop, so that connections, JWTs and OAuth tokens outlive each task. Apple treats a burst of
new connections as abuse, so a task never opens its own. The worker's context holds the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from worker import stages
from worker.errors import Stalled

T = TypeVar("T")


class Loop:
    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # A forked child inherits the parent's loop object but not its thread: start its own.
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="pushsync-aio", daemon=True)
                thread.start()
                assert thread.ident is not None  # a started thread has one
                stages.sending_thread(thread.ident)
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the process's loop and wait for its result (at most ``timeout``).
        Past the bound the coroutine is cancelled and ``Stalled`` raised: a transient failure,
        retried like a refused connection, never a dead letter of its own."""
        future = asyncio.run_coroutine_threadsafe(coro, self.get())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Stalled(f"the send did not finish within {timeout:.0f} s") from None
