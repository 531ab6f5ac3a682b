"""The producer client (CONTRACT section 5).

    from pushsync.client import publish, publish_many
    publish(pool_id, identity_id, "myDataset", 42)

Both validate before sending (a ``ValueError`` naming the field) and use PUSHSYNC_BROKER_URL.
When the broker cannot be reached they keep trying, with backoff, for up to
PUSHSYNC_PUBLISH_TIMEOUT seconds (default 20) of one outage, then raise ``PublishError``. So an
event is either on the queue or its caller got an exception; after one, publishing the same
events again is safe (a sync count that was already taken is dropped as stale).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from pushsync import contract
from pushsync.settings import get_settings

log = logging.getLogger("pushsync.client")


class PublishError(Exception):
    """The broker stayed out of reach for PUSHSYNC_PUBLISH_TIMEOUT seconds.

    ``sent`` events (the first ones, in order) are on the queue; the rest are not. Keep them
    and publish them again later (all of them again is fine too: duplicates are dropped)."""

    def __init__(self, message: str, sent: int):
        super().__init__(message)
        self.sent = sent


_producer = None
_producer_lock = threading.Lock()


def _app():
    global _producer
    if _producer is None:
        # under a lock: threads that publish at once (the HTTP API's) would otherwise each build an
        # app, and Celery's lazy imports fail when two threads run them at the same time
        with _producer_lock:
            if _producer is None:
                from pushsync.queues import producer_app

                _producer = producer_app()
    return _producer


def prepare() -> threading.Thread:
    """Build the producer now, and open its broker connection in a thread of its own, so that the
    first publish waits for neither (about 70 ms on the benchmark's machine, against 1 ms for the
    next; a server calls this at start-up). The start-up itself waits for no broker: one that is
    out of reach, or stops answering, costs that thread its bounds (pushsync/broker.py) and a
    warning; publishes ride out outages themselves. Returns the thread (join it to wait)."""
    from pushsync.queues import EVENTS_QUEUE

    app = _app()
    # what Celery builds lazily is built here, in the caller's thread, not in two threads at once
    queue = app.amqp.queues[EVENTS_QUEUE]
    app.producer_pool  # noqa: B018 - a lazy property, built now
    thread = threading.Thread(target=_connect, args=(app, queue), name="pushsync-prepare", daemon=True)
    thread.start()
    return thread


def _connect(app, queue) -> None:
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)  # once: not the publishes' retries
            producer.maybe_declare(queue)  # what the first publish declares, remembered on this connection
    except Exception as exc:  # noqa: BLE001 - a warm-up: whatever stops it, the first publish meets again
        log.warning("could not reach the broker to prepare publishing (%s); the first publish will try", exc)


def _retryable() -> tuple[type[BaseException], ...]:
    import redis.exceptions
    from kombu.exceptions import OperationalError

    return (OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            ConnectionError, TimeoutError)


def _send(app, chunk: list[dict], producer=None) -> None:
    from pushsync.queues import EVENTS_QUEUE, INGEST_TASK

    # enqueued_at feeds the enqueue-to-accepted latency histogram; other clients may leave it out
    app.send_task(INGEST_TASK, args=[chunk], kwargs={"enqueued_at": time.time()}, queue=EVENTS_QUEUE,
                  producer=producer)


def _publish_chunks(chunks: list[list[dict]], timeout: float | None = None) -> int:
    """Send the chunks in order, riding out broker outages of up to the publish timeout each."""
    app = _app()
    timeout = get_settings().publish_timeout if timeout is None else timeout
    retryable = _retryable()
    sent = 0
    i = 0
    outage_ends: float | None = None
    delay = 0.05
    while i < len(chunks):
        try:
            with app.producer_or_acquire() as producer:
                while i < len(chunks):
                    _send(app, chunks[i], producer)
                    sent += len(chunks[i])
                    i += 1
                    outage_ends, delay = None, 0.05
        except retryable as exc:
            now = time.monotonic()
            if outage_ends is None:
                outage_ends = now + timeout
                log.warning("broker unreachable (%s); retrying for up to %.0f s", exc, timeout)
            if now >= outage_ends:
                raise PublishError(f"the broker was unreachable for {timeout:g} s (PUSHSYNC_PUBLISH_TIMEOUT): "
                                   f"{exc}; {sent} of {sum(map(len, chunks))} events were enqueued", sent) from exc
            time.sleep(min(delay, max(0.0, outage_ends - now)))
            delay = min(delay * 2, 2.0)
    return sent


def publish(pool_id: str, identity_id: str, dataset_name: str, sync_count: int, *,
            origin_device_id: str | None = None, event_id: str | None = None) -> dict:
    """Enqueue one change event; returns the event as sent."""
    event = contract.event({k: v for k, v in {
        "identityPoolId": pool_id, "identityId": identity_id, "datasetName": dataset_name,
        "syncCount": sync_count, "originDeviceId": origin_device_id, "eventId": event_id,
    }.items() if v is not None}).to_json()
    _publish_chunks([[event]])
    return event


def publish_many(events: Iterable[dict | contract.ChangeEvent], *, chunk_size: int | None = None,
                 timeout: float | None = None) -> int:
    """Enqueue many events, PUSHSYNC_INGEST_CHUNK (100) to a message, one broker round trip per
    chunk. All events are validated first (a ``ChangeEvent`` is already): one bad event
    (ValueError naming it by position and field) sends nothing. Returns the number of events
    sent. ``timeout`` overrides PUSHSYNC_PUBLISH_TIMEOUT for this call."""
    settings = get_settings()
    size = settings.ingest_chunk if chunk_size is None else chunk_size
    limit = settings.max_events_per_message
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
        raise contract.ValidationError("chunk_size", f"must be an integer from 1 to {limit} "
                                                     "(PUSHSYNC_MAX_EVENTS_PER_MESSAGE)", chunk_size)
    checked = []
    for i, e in enumerate(events):
        try:
            checked.append(contract.event(e).to_json())
        except contract.ValidationError as exc:
            raise contract.ValidationError(exc.field, f"{exc.rule} (event #{i})") from None
    return _publish_chunks([checked[start:start + size] for start in range(0, len(checked), size)], timeout)
