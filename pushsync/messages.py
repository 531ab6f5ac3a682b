"""Typed task messages: what travels on the queues, checked when it comes off them.

Nothing read from Redis is trusted (a forged Flower call, a hand-built Celery message, a
retry-set entry written by an older version). ``DeliveryBatch.from_json`` and
``RetryEntry.from_json`` turn such data into typed values or raise ``MessageError`` with a
reason; an item that is wrong on its own is set aside with its reason, and the rest of its
batch goes on.

Wire shape of a delivery batch (queue ``push.fcm`` or ``push.apns``)::

    {"pool": POOL_ID, "platform": "GCM" | "APNS" | "APNS_SANDBOX", "attempt": 1,
     "items": [[device_id, identity_id, dataset_name, sync_count], ...],
     "enqueued_at": 1700000000.0}          # optional, for the latency histogram
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

from pushsync import contract
from pushsync.contract import ValidationError

# A batch is made of at most PUSHSYNC_BATCH_SIZE items by fan-out; this is the hard ceiling
# for anything that comes off a queue, whatever the settings of the process that wrote it.
MAX_BATCH_ITEMS = 10_000
# A retry counter beyond this is not one pushsync wrote.
MAX_ATTEMPT = 1_000
RETRY_KINDS = ("deliver",)
# How much of a message that cannot be read a dead letter keeps (its length is kept too).
RAW_KEPT = 16_384


class MessageError(ValueError):
    """A task message that cannot be used at all; the text says why."""


@dataclass(frozen=True)
class Item:
    """One push: this device, of this identity, is to be told this dataset's sync count."""

    device_id: str
    identity_id: str
    dataset: str
    sync_count: int

    @property
    def key(self) -> tuple[str, str]:
        """Outcomes are keyed by (device, dataset): one device may get two datasets' pushes."""
        return (self.device_id, self.dataset)

    def to_json(self) -> list:
        return [self.device_id, self.identity_id, self.dataset, self.sync_count]

    @classmethod
    def from_json(cls, raw: Any) -> Item:
        if not isinstance(raw, (list, tuple)) or len(raw) != 4:
            raise ValidationError("item", "must be [device_id, identity_id, dataset_name, sync_count]",
                                  type(raw).__name__)
        dev, identity, dataset, count = raw
        if not isinstance(count, int):  # a number, not the numeric string producers may send
            raise ValidationError("syncCount", "must be an integer 0 <= n < 2^63", count)
        return cls(contract.device_id(dev), contract.identity_id(identity), contract.dataset_name(dataset),
                   contract.sync_count(count))


@dataclass(frozen=True)
class Rejected:
    """An item of a batch that could not be read, kept (as it came) for the dead-letter store."""

    raw: Any
    reason: str


@dataclass(frozen=True)
class DeliveryBatch:
    pool: str
    platform: str
    items: tuple[Item, ...]
    attempt: int = 1
    enqueued_at: float | None = None
    rejected: tuple[Rejected, ...] = field(default=(), compare=False)
    duplicates: int = field(default=0, compare=False)
    id: str | None = None  # its row in the store's outbox, settled once its outcomes are recorded
    # its pushes hold FCM budget slots already (worker.budget): they waited for them, they go
    budgeted: bool = False

    def to_json(self) -> dict:
        out: dict[str, Any] = {"pool": self.pool, "platform": self.platform,
                               "items": [i.to_json() for i in self.items], "attempt": self.attempt}
        if self.enqueued_at is not None:
            out["enqueued_at"] = self.enqueued_at
        if self.id is not None:
            out["id"] = self.id
        if self.budgeted:
            out["budgeted"] = True
        return out

    def again(self, items: list[Item]) -> DeliveryBatch:
        """The same batch for a later attempt, with only ``items``."""
        return DeliveryBatch(self.pool, self.platform, tuple(items), self.attempt + 1, self.enqueued_at, id=self.id)

    def held(self, items: list[Item], batch_id: str, budgeted: bool = True) -> DeliveryBatch:
        """The same attempt of ``items``, in an outbox row of its own: its budget slots reserved
        (``budgeted``), or waiting for the end of its pool's window (``worker.pacing``)."""
        return DeliveryBatch(self.pool, self.platform, tuple(items), self.attempt, self.enqueued_at, id=batch_id,
                             budgeted=budgeted)

    @classmethod
    def from_json(cls, raw: Any) -> DeliveryBatch:
        if not isinstance(raw, dict):
            raise MessageError(f"a delivery batch must be a JSON object, got {type(raw).__name__}")
        unknown = set(raw) - {"pool", "platform", "items", "attempt", "enqueued_at", "id", "budgeted"}
        if unknown:
            raise MessageError(f"unknown keys in a delivery batch: {sorted(map(str, unknown))[:5]}")
        try:
            pool = contract.pool_id(raw.get("pool"))
            platform = raw.get("platform")
            # the queue's platform must be named exactly: an alias or a typo must not route
            # a push to another service (anything not GCM once went to APNs production)
            if platform not in contract.PLATFORMS:
                raise ValidationError("platform", f"must be one of {', '.join(contract.PLATFORMS)}", platform)
        except ValidationError as exc:
            raise MessageError(f"bad delivery batch: {exc}") from None
        attempt = raw.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
            raise MessageError(f"bad delivery batch: attempt must be an integer 1-{MAX_ATTEMPT}, got {attempt!r:.40}")
        enqueued_at = raw.get("enqueued_at")
        if enqueued_at is not None and (isinstance(enqueued_at, bool) or not isinstance(enqueued_at, (int, float))
                                        or not math.isfinite(enqueued_at)):
            enqueued_at = None  # only feeds a histogram: ignore rather than refuse
        items_raw = raw.get("items")
        if not isinstance(items_raw, list) or not items_raw:
            raise MessageError("bad delivery batch: items must be a non-empty list")
        if len(items_raw) > MAX_BATCH_ITEMS:
            raise MessageError(f"bad delivery batch: {len(items_raw)} items, at most {MAX_BATCH_ITEMS}")
        chosen: dict[tuple[str, str], Item] = {}
        rejected: list[Rejected] = []
        duplicates = 0
        for entry in items_raw:
            try:
                item = Item.from_json(entry)
            except ValidationError as exc:
                rejected.append(Rejected(entry, f"bad delivery item: {exc}"))
                continue
            old = chosen.get(item.key)
            if old is not None:
                duplicates += 1
                if old.sync_count >= item.sync_count:
                    continue
            chosen[item.key] = item
        batch_id = raw.get("id")
        try:
            batch_id = None if batch_id is None else contract.device_id(batch_id, "id")  # a UUID either way
        except ValidationError:
            batch_id = None  # only names an outbox row: ignore rather than refuse
        return cls(pool, platform, tuple(chosen.values()), attempt, enqueued_at, tuple(rejected), duplicates,
                   batch_id, raw.get("budgeted") is True)


@dataclass(frozen=True)
class RetryEntry:
    """A member of the Redis retry set: a task argument waiting for its time."""

    kind: str
    payload: Any
    id: str = ""

    @classmethod
    def from_json(cls, member: str | bytes) -> RetryEntry:
        try:
            data = json.loads(member)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise MessageError("retry-set entry is not JSON") from None
        if not isinstance(data, dict) or data.get("kind") not in RETRY_KINDS or "payload" not in data:
            raise MessageError("retry-set entry must be an object with kind deliver and a payload")
        return cls(data["kind"], data["payload"], str(data.get("id", "")))

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "kind": self.kind, "payload": self.payload}, separators=(",", ":"))


def dead_letter_payload(pool: str, platform: str, item: Item) -> dict:
    """One push as the dead-letter store keeps it, in the shape replay reads back."""
    return {"pool": pool, "platform": platform, "deviceId": item.device_id, "identityId": item.identity_id,
            "datasetName": item.dataset, "syncCount": item.sync_count}


def raw_text(raw: Any) -> dict:
    """Bytes or a value nobody could read, as a dead letter keeps it: at most ``RAW_KEPT``
    characters of it, and its full length."""
    if isinstance(raw, bytes):
        text = raw[:RAW_KEPT * 4].decode("utf-8", errors="backslashreplace")
        size = len(raw)
    elif isinstance(raw, str):
        text, size = raw, len(raw)
    else:
        text = reprlib.repr(raw)  # bounded, also for a value nested past the recursion limit
        size = len(text)
    return {"raw": text[:RAW_KEPT], "length": size}


# The causes a dead letter's reason starts with ("<cause>: <detail>"), so that `dlq list` reads
# the same whatever wrote it.
CAUSES = ("invalid event", "unknown pool", "no credentials", "unreadable message", "not an ingest task",
          "too many events", "refused by the store", "out of tries", "run never finished", "failed",
          "permanent error", "retries exhausted")


@dataclass(frozen=True)
class DeadLetter:
    """One item for the dead-letter store: what it was (``kind``: event, delivery or message),
    why (one of ``CAUSES`` and a detail) and what it carried, in the shape `dlq replay` reads."""

    kind: str
    cause: str
    detail: str
    payload: Any
    pool: str | None = None
    platform: str | None = None
    attempts: int = 1
    last_error: str | None = None

    def __post_init__(self):
        if self.cause not in CAUSES or self.kind not in ("event", "delivery", "message"):
            raise ValueError(f"not a dead letter pushsync writes: {self.kind} / {self.cause}")

    @property
    def reason(self) -> str:
        return f"{self.cause}: {self.detail}" if self.detail else self.cause

    @classmethod
    def event(cls, raw: Any, cause: str, detail: str = "", attempts: int = 1) -> DeadLetter:
        """A change event, as it came (a dict from a message) or as parsed."""
        if hasattr(raw, "to_json"):
            raw = raw.to_json()
        pool = raw.get("identityPoolId") if isinstance(raw, dict) else None
        return cls("event", cause, detail, raw if isinstance(raw, dict) else {"event": raw},
                   pool if isinstance(pool, str) else None, attempts=attempts)

    @classmethod
    def delivery(cls, pool: str, platform: str, item: Item, cause: str, detail: str = "", *,
                 attempts: int = 1, last_error: str | None = None) -> DeadLetter:
        """One push, at the count it carried: replayed once the cause is mended."""
        return cls("delivery", cause, detail, dead_letter_payload(pool, platform, item), pool, platform,
                   attempts, last_error)

    @classmethod
    def message(cls, raw: Any, cause: str, detail: str = "", *, field: str = "message", pool: str | None = None,
                platform: str | None = None, attempts: int = 1) -> DeadLetter:
        """A message (or a part of one) that cannot be used: kept to be read, never replayed. Bytes
        and text are kept bounded (``raw_text``); a parsed value as it is."""
        kept = raw_text(raw) if isinstance(raw, (bytes, str)) else raw
        return cls("message", cause, detail, {field: kept}, pool, platform, attempts)


def exception_text(exc: BaseException) -> str:
    """An error in a dead letter's words: its class and the start of its message."""
    return f"{type(exc).__name__}: {str(exc)[:150]}"


def from_dead_letter(payload: Any) -> tuple[str, str, Item]:
    """(pool, platform, item) of a delivery dead letter; ``MessageError`` if it is not one."""
    if not isinstance(payload, dict):
        raise MessageError("a delivery dead letter must be a JSON object")
    try:
        pool = contract.pool_id(payload.get("pool"))
        platform = payload.get("platform")
        if platform not in contract.PLATFORMS:
            raise ValidationError("platform", f"must be one of {', '.join(contract.PLATFORMS)}", platform)
        item = Item.from_json([payload.get("deviceId"), payload.get("identityId"), payload.get("datasetName"),
                               payload.get("syncCount")])
    except ValidationError as exc:
        raise MessageError(f"bad delivery dead letter: {exc}") from None
    return pool, platform, item
