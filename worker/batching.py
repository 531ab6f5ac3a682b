"""Micro-batches: many task messages, one run (celery-batches, with pushsync's guarantees).

celery-batches buffers a task's messages in the worker's main process and hands them to a pool
process as one list when ``flush_every`` have arrived or ``flush_interval`` seconds have passed.
As shipped it acknowledges the messages when the run returns, whatever happened, and gives a
run no time limit. ``MicroBatches`` changes three things:

- a run returning ``{"requeue": True}`` has its messages given back to their queue instead of
  acknowledged (the run could neither finish nor hand the work on, for instance with Redis
  away: nothing is lost, the messages come back);
- a pool process that dies or is killed for its time limit mid-run gives the messages back too
  (as ``task_reject_on_worker_lost`` does for plain tasks); a main process that dies leaves
  them unacknowledged, and Redis hands them out again after the visibility timeout;
- one set of Flower events per run (received, started, succeeded/failed), named by the batch's
  id, instead of none: a run of 200 messages costs three events, not 600.

Messages are acknowledged only when the run that holds them has returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

log = logging.getLogger("pushsync.batching")

REQUEUE = "requeue"


def batch_id(requests: Collection) -> str:
    """A run's id: its first message's, marked as a batch (logs and Flower events share it)."""
    first = next(iter(requests))
    return f"batch-{first.id}"


class MicroBatches(Batches):
    abstract = True

    def Strategy(self, task, app, consumer):
        self._eventer = consumer.event_dispatcher
        return super().Strategy(task, app, consumer)

    def _event(self, kind: str, uuid: str, **fields) -> None:
        eventer = getattr(self, "_eventer", None)
        if eventer is None or not eventer.enabled:
            return
        try:
            eventer.send(kind, uuid=uuid, **fields)
        except Exception as exc:  # events feed a dashboard; the messages matter more
            log.debug("could not send %s: %s", kind, exc)

    def flush(self, requests: Collection):
        requests = list(requests)
        if not requests:
            return None
        run_id = batch_id(requests)
        started = time.monotonic()
        self._event("task-received", run_id, name=self.name, args=f"[{len(requests)} messages]", kwargs="{}",
                    retries=0, eta=None, root_id=run_id, parent_id=None)

        def settle(requeue: bool) -> None:
            for req in requests:
                try:
                    req.reject(requeue=True) if requeue else req.acknowledge()
                except Exception as exc:  # Redis away: the message stays unacknowledged and comes back
                    log.warning("could not %s message %s: %s", "requeue" if requeue else "acknowledge", req.id, exc)

        def on_accepted(pid: int, _time_accepted: float) -> None:
            self._event("task-started", run_id, pid=pid)

        def on_return(result) -> None:
            requeue = isinstance(result, dict) and bool(result.get(REQUEUE))
            settle(requeue)
            if requeue:
                self._event("task-retried", run_id, exception="requeued", traceback="")
            else:
                self._event("task-succeeded", run_id, result=repr(result)[:1000],
                            runtime=time.monotonic() - started)

        def on_error(exc_info) -> None:
            # the pool process died or hit the time limit: the messages go back to their queue
            exc = getattr(exc_info, "exception", exc_info)
            log.error("ingest run %s of %d messages ended with %r: messages requeued", run_id, len(requests), exc)
            settle(True)
            self._event("task-failed", run_id, exception=repr(exc), traceback="")

        limit = self.app.conf.task_time_limit
        return self._pool.apply_async(
            apply_batches_task, (self, ([SimpleRequest.from_request(r) for r in requests],), 0, None),
            accept_callback=on_accepted, callback=on_return, error_callback=on_error,
            timeout=limit, soft_timeout=max(1, limit - 5) if limit else None)
