"""Where a pool process's CPU goes, stage by stage: the benchmark's CPU budget per push.

Off unless PUSHSYNC_STAGE_DIR names a folder (``bench/budget.py`` sets it). Then the CPU time of each
stage (the running thread's own, ``time.thread_time``) adds up per process, beside the CPU of the
process's sending loop thread (the transport: headers, bodies, TLS, HTTP/2, answers), and a thread
of its own writes the totals to DIR/<pid>.json once a second. Off, a stage costs a shared null context.

Not a metric: the figures are for a benchmark run that reads them, not for dashboards; per-push
counters would be the very cost being measured. The stages are disjoint in a thread; what is in
none of them (Celery's task protocol, kombu, the acknowledgements of Celery messages) is what the
benchmark reports as the rest of the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

# every stage's name (bench/budget.py has a row for each)
STAGES = ("take", "read", "window", "commit", "load", "payload", "send_wait", "record", "queue", "ack",
          "metrics")
_NULL = contextlib.nullcontext()
_dir: Path | None = None
_lock = threading.Lock()
_totals: dict[str, float] = {}
_loop_thread: int | None = None
_writer_pid: int | None = None


def configure(directory: str | None) -> None:
    """Called as a process builds its context (each pool process builds its own)."""
    global _dir, _writer_pid
    _dir = Path(directory) if directory else None
    if _dir is None or _writer_pid == os.getpid():
        return
    _dir.mkdir(parents=True, exist_ok=True)
    _writer_pid = os.getpid()
    _totals.clear()  # a forked process starts from nothing of its parent's

    def every_second():
        while True:
            time.sleep(1.0)
            with contextlib.suppress(OSError):
                write()

    threading.Thread(target=every_second, name="pushsync-stages", daemon=True).start()


def sending_thread(ident: int) -> None:
    """The thread of the process's sending loop, whose whole CPU is the transport's."""
    global _loop_thread
    _loop_thread = ident


class _Stage:
    __slots__ = ("name", "started")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.started = time.thread_time()

    def __exit__(self, *_exc):
        spent = time.thread_time() - self.started
        with _lock:
            _totals[self.name] = _totals.get(self.name, 0.0) + spent


def stage(name: str):
    """``with stage("commit"): ...``: that block's CPU counted as the stage's (when on)."""
    return _NULL if _dir is None else _Stage(name)


def write() -> None:
    if _dir is None:
        return
    loop_cpu = 0.0
    if _loop_thread is not None:
        with contextlib.suppress(OSError, ValueError, OverflowError):
            loop_cpu = time.clock_gettime(time.pthread_getcpuclockid(_loop_thread))
    with _lock:
        figures = {"pid": os.getpid(), "stages": dict(_totals), "transport": loop_cpu,
                   "process": time.process_time(), "at": time.time()}
    tmp = _dir / f".{os.getpid()}.json"
    tmp.write_text(json.dumps(figures))
    tmp.replace(_dir / f"{os.getpid()}.json")
