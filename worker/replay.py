"""Replaying dead letters through the normal path.

An event goes back to ingest, so a sync count that is stale by now is dropped there. A
delivery goes back to its platform's queue unless a newer sync count of its dataset has
been planned since (the device will have got that one instead, or it is dead-lettered too);
deliver checks again at send time that the device is still the identity's. A dead letter that
holds no usable event or delivery (a message that did not parse) is left in the store and
counted: it is there to be read, not sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from pushsync.contract import Key
from pushsync.messages import DeliveryBatch, MessageError, from_dead_letter
from store import repo
from store.db import session_scope


@dataclass
class ReplayResult:
    events: int = 0
    deliveries: int = 0
    stale: int = 0
    missing: int = 0
    unusable: int = 0


Send = Callable[[str, object, str], None]  # (task name, argument, queue)


def replay(ids: list[int] | None, send: Send, *, batch_size: int = 500,
           progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay the dead letters ``ids`` (all when None), a page at a time; each page's letters
    are deleted once their messages are on the queue."""
    from pushsync.queues import DELIVER_TASK, EVENTS_QUEUE, INGEST_TASK, queue_for

    res = ReplayResult()
    after = 0
    done = 0
    while True:
        with session_scope() as s:
            page = repo.dead_letters_by_id(s, ids, after_id=after, limit=batch_size)
            if not page:
                break
            after = page[-1]["id"]
            batches: dict[tuple[str, str], list] = defaultdict(list)
            sent_ids = []
            for d in page:
                p = d["payload"]
                if d["kind"] == "event":
                    send(INGEST_TASK, [p], EVENTS_QUEUE)
                    res.events += 1
                    sent_ids.append(d["id"])
                    continue
                try:
                    pool, platform, item = from_dead_letter(p)
                except MessageError:
                    res.unusable += 1
                    continue
                sent_ids.append(d["id"])
                _accepted, last = repo.counts(s, Key(pool, item.identity_id, item.dataset))
                if last is not None and last > item.sync_count:
                    res.stale += 1
                    continue
                batches[(pool, platform)].append(item)
            for (pool, platform), items in batches.items():
                for start in range(0, len(items), batch_size):
                    chunk = tuple(items[start:start + batch_size])
                    send(DELIVER_TASK, DeliveryBatch(pool, platform, chunk).to_json(), queue_for(platform))
                    res.deliveries += len(chunk)
            repo.delete_dead_letters(s, sent_ids)
        done += len(page)
        if progress:
            progress(done)
    if ids is not None:
        res.missing = len(set(ids)) - done
    return res
