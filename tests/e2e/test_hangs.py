"""A dependency that stops answering without closing, through real processes: the wait is bounded,
and what waited is retried, not dead-lettered."""

from __future__ import annotations

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for


def test_a_push_endpoint_that_stalls_past_the_soft_time_limit_costs_a_retry_not_a_dead_letter(tmp_path, emulator):
    """FCM holds the first push 8 s, longer than the delivery's soft time limit (5 s here) and
    shorter than its send timeout: the delivery gives up within its bound, the batch is retried, the
    push arrives, and nothing is dead-lettered (a soft time limit used to dead-letter the batch)."""
    env = {"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "20", "PUSHSYNC_SEND_TIMEOUT": "30",
           "PUSHSYNC_INLINE_DELIVERY_MAX": "0"}  # every batch through the deliver task
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=5, extra_env=env)
    try:
        emulator.reset()
        pipe.create_pool(POOL, apns=False)
        ident = new_identity()
        token = f"fcm-stall-{ident[-8:]}"
        pipe.device(POOL, ident, "GCM", token)
        pipe.start_worker("-c", "2")
        emulator.fault(service="fcm", latency=8.0, count=1)
        pipe.cli("publish", POOL, ident, "notes", "1")
        wait_for(lambda: any(r.get("token") == token and r["status"] == 200 for r in emulator.requests()),
                 60, 0.3, what="the push after the stalled one")
        assert pipe.dead_letters() == []
    finally:
        emulator.clear_faults()
        pipe.stop_workers()
