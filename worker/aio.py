"""One long-lived asyncio loop per worker process.

Celery tasks are synchronous; the HTTP/2 and HTTP/1.1 connection pools to APNs and FCM live in
this loop, on a daemon thread, so that connections, JWTs and OAuth tokens outlive each task.
Apple treats a burst of new connections as abuse, so a task never opens its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        # A forked child inherits the parent's loop object but not its thread: start its own.
        if _loop is None or _pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="pushsync-aio", daemon=True)
            thread.start()
            _loop, _pid = loop, os.getpid()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the process's loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result(timeout)
