"""Keeping ingest runs coming while there is work: a thread in the main process of every worker that
ingests.

Runs take their messages themselves (``worker.intake``), so something must start them: this
thread publishes a run trigger (``pushsync.ingest_run`` on ``events.runs``, a message that
carries nothing) when ``events`` holds messages, a retry or a coalescing flush is due, and no
trigger is waiting already. A run that leaves work behind publishes the next trigger itself, so
under load the pool processes follow each other without waiting for this thread. While idle the
thread blocks on Redis (``Intake.wait``) and wakes as a message arrives; while a trigger waits for
a free pool process it looks again after a short, growing pause. A trigger that is lost costs a
moment, never a message: the messages stay on the list or in flight until a run takes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.intake import Intake

log = logging.getLogger("pushsync.worker")

IDLE_WAIT = 1.0  # the longest block on Redis while there is nothing to do
PAUSE_MIN, PAUSE_MAX = 0.002, 0.05
# after a trigger, the time a run gets to take the work before another trigger is sent for it
# (Celery's consumer takes a trigger at once, before a pool process has started its run)
GRACE = 0.01


class Dispatcher(threading.Thread):
    def __init__(self, intake: Intake, trigger: Callable[[], bool]):
        super().__init__(name="pushsync-dispatch", daemon=True)
        self.intake, self.trigger = intake, trigger
        self.stopping = threading.Event()
        self._warned = 0.0

    def step(self, pause: float) -> float:
        """One look at Redis; returns the pause before the next one."""
        work, waiting, next_due = self.intake.status()
        if work and not waiting:
            if not self.trigger():  # the broker refuses: look again in a second, not in a loop
                self.stopping.wait(1.0)
                return PAUSE_MIN
            self.stopping.wait(GRACE)
            return PAUSE_MIN
        if work:  # a trigger waits for a free pool process
            self.stopping.wait(pause)
            return min(pause * 2, PAUSE_MAX)
        self.intake.wait(min(IDLE_WAIT, next_due) if next_due is not None else IDLE_WAIT)
        return PAUSE_MIN

    def run(self) -> None:
        pause = PAUSE_MIN
        while not self.stopping.is_set():
            try:
                pause = self.step(pause)
            except Exception as exc:  # Redis or the broker away: look again in a second
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("ingest dispatcher: %s (%s); trying again", type(exc).__name__, exc)
                self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()

