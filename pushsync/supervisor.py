"""Keeps a Celery worker (or the scheduler) running: ``pushsync worker`` and ``pushsync
scheduler`` start it as a child process and start it again when it exits on its own.

Why: Celery and kombu have a family of bugs in which a lost broker connection ends the worker
instead of reconnecting. One seen here: Redis killed while messages were unacknowledged made
kombu's ``restore_unacked_once`` raise ``AttributeError`` on the dropped connection, the worker
logged "Unrecoverable error" and exited, and nothing consumed until someone restarted it.
Restarting the process is the one recovery that works for all of them, and loses nothing:
messages are acknowledged late, so what the dead process held goes back to its queue.

Signals (TERM, INT, QUIT, HUP) are passed to the child, which then shuts down as it would on
its own; the supervisor exits with the child's exit code. If the supervisor itself is killed,
the kernel sends the child SIGTERM (PR_SET_PDEATHSIG), so no orphan keeps consuming.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time

log = logging.getLogger("pushsync.supervisor")

EX_USAGE = 64  # Celery's exit code for bad command-line options: a restart would not help
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
QUICK = 30.0  # a child that ran less than this before exiting counts as a quick failure
MAX_QUICK_FAILURES = 10
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the child may outlive a killed supervisor
        pass


def supervise(command: list[str], what: str, *, max_backoff: float = 10.0) -> int:
    """Run ``command`` until asked to stop; start it again whenever it exits by itself."""
    child: subprocess.Popen | None = None
    stopping: list[int] = []

    def forward(signum, _frame):
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    backoff = 1.0
    quick_failures = 0
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(command, preexec_fn=_die_with_parent)
            code = child.wait()
            if stopping:
                return code
            ran = time.monotonic() - started
            if code == EX_USAGE:
                log.error("%s refused its options (exit %d): not restarting", what, code)
                return code
            quick_failures = quick_failures + 1 if ran < QUICK else 0
            if ran >= QUICK:
                backoff = 1.0
            if quick_failures >= MAX_QUICK_FAILURES:
                log.error("%s exited %d times in a row within %.0f s of starting (last exit code %d): giving up",
                          what, quick_failures, QUICK, code)
                return code or 1
            cause = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.warning("%s (pid %d) stopped by itself after %.0f s (%s), most likely on a lost broker "
                        "connection; starting it again in %.0f s", what, child.pid, ran, cause, backoff)
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not stopping:
                time.sleep(0.1)
            if stopping:
                return code
            backoff = min(backoff * 2, max_backoff)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def child_command(args: list[str]) -> list[str]:
    """The same ``pushsync`` command, run unsupervised in a child process."""
    return [sys.executable, "-m", "pushsync.cli", *args]
