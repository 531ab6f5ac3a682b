"""Re-sending delivery batches that no worker settled (the store's outbox, migration 0003).

Ingest keeps each delivery batch in the outbox, in the transaction that advances the sync
counts; deliver removes it once the batch's outcomes are recorded (a retry keeps it, due after
the retry's time). A row still there ``redeliver_after`` seconds later (the visibility timeout
plus the task time limit) belongs to a message that no worker ever ran: lost between Redis and
a worker when Redis died. The scheduler puts it on its queue again. While a platform's queue is
not empty its rows are only deferred: they are probably waiting in that queue, and re-sending
them would pile duplicates on a backlog; but not for ever: a row written more than
``OVERDUE_FACTOR`` times ``redeliver_after`` ago is sent again whatever its queue holds (under
sustained load a queue is never empty, and a lost batch would otherwise wait without end).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis

from pushsync.contract import PLATFORMS
from pushsync.messages import DeliveryBatch, MessageError
from pushsync.queues import DELIVER_TASK, EVENTS_QUEUE, QUEUES, queue_for
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from store.models import utcnow

log = logging.getLogger("pushsync.scheduler")

# push.fcm -> GCM, push.apns -> APNS and APNS_SANDBOX, as queue_for routes them
PLATFORMS_BY_QUEUE = {q: tuple(p for p in PLATFORMS if queue_for(p) == q) for q in QUEUES if q != EVENTS_QUEUE}


# A backlog explains a batch waiting up to this many times redeliver_after (30 min by default).
OVERDUE_FACTOR = 10


def sweep(client: redis.Redis, send) -> int:
    """Send again the unsettled batches that are due; returns how many went."""
    now = utcnow()
    after = get_settings().redeliver_after
    next_due = now + timedelta(seconds=after)
    overdue = now - timedelta(seconds=after * OVERDUE_FACTOR)
    idle: list[str] = []
    busy: list[str] = []
    for queue, platforms in PLATFORMS_BY_QUEUE.items():
        (idle if client.llen(queue) == 0 else busy).extend(platforms)
    with session_scope() as session:
        if busy:
            repo.defer_outbox(session, busy, now, next_due, overdue_before=overdue)
        rows = repo.take_due_outbox(session, now, next_due, idle, overdue_before=overdue)
        batches = []
        for batch_id, payload in rows:
            try:
                batch = DeliveryBatch.from_json(payload)
            except MessageError as exc:  # it was written by ingest: should not happen; say so, keep going
                log.error("outbox row %s does not parse (%s); left for an operator", batch_id, exc)
                continue
            # each re-send is an attempt: a batch whose runs never finish (the hard time limit, a
            # worker killed every time) ends as a dead letter after max_attempts, not in a loop
            batch = batch.again(list(batch.items))
            repo.reschedule_outbox(session, batch_id, batch.to_json(), next_due)
            batches.append(batch)
    sent = 0
    for batch in batches:
        send(DELIVER_TASK, batch.to_json(), queue_for(batch.platform))
        sent += 1
    if sent:
        log.warning("sent again %d delivery batches that no worker settled within %.0f s (lost on the way to a "
                    "worker, most likely when Redis died)", sent, get_settings().redeliver_after)
    return sent

