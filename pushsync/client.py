"""The producer client (CONTRACT section 5).

    from pushsync.client import publish, publish_many
    publish(pool_id, identity_id, "myDataset", 42)

Both validate before sending (a ``ValueError`` naming the field) and use PUSHSYNC_BROKER_URL.
"""

from __future__ import annotations

from collections.abc import Iterable

from pushsync import contract
from pushsync.settings import get_settings


def _app():
    from worker.app import app

    return app


def _send(app, chunk: list[dict], producer=None) -> None:
    import time

    from worker.app import EVENTS_QUEUE, INGEST_TASK

    # enqueued_at feeds the enqueue-to-accepted latency histogram; other clients may leave it out
    app.send_task(INGEST_TASK, args=[chunk], kwargs={"enqueued_at": time.time()}, queue=EVENTS_QUEUE,
                  producer=producer)


def _compact(event: dict) -> dict:
    return {k: v for k, v in event.items() if v is not None}


def publish(pool_id: str, identity_id: str, dataset_name: str, sync_count: int, *,
            origin_device_id: str | None = None, event_id: str | None = None) -> dict:
    """Enqueue one change event; returns the event as sent."""
    event = contract.event(_compact({
        "identityPoolId": pool_id, "identityId": identity_id, "datasetName": dataset_name,
        "syncCount": sync_count, "originDeviceId": origin_device_id, "eventId": event_id,
    }))
    _send(_app(), [_compact(event)])
    return _compact(event)


def publish_many(events: Iterable[dict], *, chunk_size: int | None = None) -> int:
    """Enqueue many events, PUSHSYNC_INGEST_CHUNK (100) to a message, one broker round trip per
    chunk. All events are validated first: one bad event (ValueError naming it by position
    and field) sends nothing. Returns the number of events sent."""
    checked = []
    for i, e in enumerate(events):
        try:
            checked.append(_compact(contract.event(e)))
        except contract.ValidationError as exc:
            raise contract.ValidationError(exc.field, f"{exc.rule} (event #{i})") from None
    size = chunk_size or get_settings().ingest_chunk
    app = _app()
    with app.producer_or_acquire() as producer:
        for start in range(0, len(checked), size):
            _send(app, checked[start:start + size], producer)
    return len(checked)
