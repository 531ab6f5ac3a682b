"""Delivery: one batch of devices of one pool and platform, sent concurrently.

At send time one query reads the tokens of the batch's devices that still belong to the
batch's pool, identity and platform, are active and are subscribed to the item's dataset,
together with the dataset's last notified sync count. Everything else in the batch is skipped
and counted: a phone that changed user, a device of another pool named by a forged batch, a
count that a newer one has overtaken while this one waited for a retry.

Senders are cached per process (in the process's event loop), keyed by pool and platform and
rebuilt when the pool's credentials change, so connections and tokens are reused across tasks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from pushsync import contract
from pushsync.messages import DeliveryBatch, Item, dead_letter_payload
from pushsync.settings import Settings
from store import repo
from store.models import utcnow
from store.repo import PoolCredentials, Target
from worker import aio, pools, retry
from worker.senders.apns import POOL_CONFIG_ERRORS, APNsSender
from worker.senders.base import Kind, Outcome, PushRequest, Sender
from worker.senders.fcm import FCMSender

_senders: dict[tuple[str, str], tuple[object, Sender]] = {}


def _build_sender(creds: PoolCredentials, platform: str, settings: Settings) -> Sender:
    if platform == "GCM":
        return FCMSender(creds.fcm_service_account, fcm_url=settings.fcm_url, ca_file=settings.ca_file,
                         connections=settings.fcm_connections, timeout=settings.send_timeout)
    # each platform names its host exactly; DeliveryBatch refuses any other platform name
    url = {"APNS": settings.apns_production_url, "APNS_SANDBOX": settings.apns_sandbox_url}[platform]
    return APNsSender(key=creds.apns_key, key_id=creds.apns_key_id, team_id=creds.apns_team_id,
                      topic=creds.apns_topic, url=url, ca_file=settings.ca_file,
                      connections=settings.apns_connections, timeout=settings.send_timeout)


async def _send(creds: PoolCredentials, platform: str, requests: list[PushRequest], settings: Settings):
    key = (creds.pool_id, platform)
    cached = _senders.get(key)
    if cached is None or cached[0] != creds.updated_at:
        if cached is not None:
            await cached[1].close()
        _senders[key] = (creds.updated_at, _build_sender(creds, platform, settings))
    return await _senders[key][1].send(requests)


async def _close_all() -> None:
    for _version, sender in list(_senders.values()):
        await sender.close()
    _senders.clear()


def close_senders() -> None:
    aio.run(_close_all(), timeout=10)


@dataclass
class DeliveryResult:
    sent: int = 0
    skipped: int = 0  # not (or no longer) the batch's: moved, unregistered, inactive, unsubscribed
    stale: int = 0  # a newer sync count of the dataset was notified since
    deactivated: int = 0
    retried: int = 0
    dead_lettered: int = 0
    retry_batch: DeliveryBatch | None = None
    retry_in: float = 0.0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out.pop("retry_batch")
        return out


def load(session: Session, batch: DeliveryBatch) -> tuple[PoolCredentials | None, dict[tuple[str, str], Target]]:
    creds = pools.credentials(session, [batch.pool])[batch.pool]
    targets = repo.delivery_targets(session, batch.pool, batch.platform, [i.key for i in batch.items])
    return creds, targets


def plan(batch: DeliveryBatch, targets: dict[tuple[str, str], Target],
         result: DeliveryResult) -> list[PushRequest]:
    """The pushes to send now: items whose device is still the batch identity's and whose count
    is not below the dataset's last notified one. Counts the rest as skipped or stale."""
    requests = []
    for item in batch.items:
        target = targets.get(item.key)
        if target is None or target.identity_id != item.identity_id:
            result.skipped += 1
            continue
        if target.last_sync_count is not None and item.sync_count < target.last_sync_count:
            result.stale += 1
            continue
        requests.append(PushRequest(device_id=item.device_id, token=target.token, dataset=item.dataset,
                                    identity_id=item.identity_id,
                                    data=contract.push_data(batch.pool, item.identity_id, item.dataset,
                                                            item.sync_count)))
    return requests


def send_batch(creds: PoolCredentials, platform: str, requests: list[PushRequest],
               settings: Settings) -> list[Outcome]:
    if not requests:
        return []
    return aio.run(_send(creds, platform, requests, settings), timeout=settings.send_timeout * 3 + 30)


def record(session: Session, batch: DeliveryBatch, outcomes: list[Outcome], result: DeliveryResult,
           settings: Settings) -> DeliveryResult:
    """Write what happened to each push: deactivations, dead letters, the retry batch.

    Outcomes are matched to items by (device, dataset). Only the pushes that failed with a
    temporary error are retried, in one batch that waits for the longest Retry-After among
    them and at least a jittered exponential backoff."""
    items = {item.key: item for item in batch.items}
    invalid: dict[object, list[str]] = defaultdict(list)
    again: list[Item] = []
    wait = 0.0
    for o in outcomes:
        item = items.get(o.key)
        if item is None:
            continue
        if o.kind is Kind.OK:
            result.sent += 1
        elif o.kind is Kind.TOKEN_INVALID:
            invalid[(o.reason, o.invalid_since)].append(o.device_id)
        elif o.kind is Kind.RETRY and batch.attempt < settings.max_attempts:
            again.append(item)
            wait = max(wait, o.retry_after or 0.0)
        else:
            why = "retries exhausted" if o.kind is Kind.RETRY else "permanent error"
            hint = POOL_CONFIG_ERRORS.get(o.reason)
            result.dead_lettered += 1
            dead_letter_item(session, batch.pool, batch.platform, item,
                             f"{why}: {o.reason}" + (f" ({hint})" if hint else ""),
                             last_error=f"HTTP {o.status}" if o.status else o.reason, attempts=batch.attempt)
    for (reason, since), device_ids in invalid.items():
        result.deactivated += repo.deactivate_devices(session, device_ids, reason, not_registered_after=since)
    if again:
        result.retried = len(again)
        result.retry_batch = batch.again(again)
        result.retry_in = retry.backoff(batch.attempt, base=settings.retry_base, cap=settings.retry_cap,
                                        retry_after=wait)
    return result


def deliver(batch: DeliveryBatch, settings: Settings, *, session_scope: Callable,
            schedule_retry: Callable[[DeliveryBatch, float], None],
            send: Callable[..., list[Outcome]] = send_batch) -> tuple[DeliveryResult, list[Outcome]]:
    """The whole of one delivery: read (one transaction), send (none open), record (one)."""
    result = DeliveryResult()
    with session_scope() as session:
        for bad in batch.rejected:
            result.dead_lettered += 1
            repo.add_dead_letter(session, "message", bad.reason, {"item": bad.raw}, pool_id=batch.pool,
                                 platform=batch.platform, attempts=batch.attempt)
        creds, targets = load(session, batch)
    requests = plan(batch, targets, result)
    if requests and (creds is None or not creds.has(batch.platform)):
        why = ("unknown pool" if creds is None
               else creds.error or f"pool has no {_service(batch.platform)} credentials")
        sending = {r.key for r in requests}
        with session_scope() as session:
            for item in batch.items:
                if item.key in sending:
                    dead_letter_item(session, batch.pool, batch.platform, item, why, attempts=batch.attempt)
            repo.settle_outbox(session, batch.id)
        result.dead_lettered += len(sending)
        return result, []
    outcomes = send(creds, batch.platform, requests, settings) if requests else []
    with session_scope() as session:
        record(session, batch, outcomes, result, settings)
        if result.retry_batch is None:
            repo.settle_outbox(session, batch.id)
        else:
            # the outbox row follows the retry, due only well after the retry's own time
            repo.reschedule_outbox(session, batch.id, result.retry_batch.to_json(), utcnow() + timedelta(
                seconds=result.retry_in + settings.redeliver_after))
            # queued before the outcomes commit: a failure in between re-sends, never loses
            schedule_retry(result.retry_batch, result.retry_in)
    return result, outcomes


def _service(platform: str) -> str:
    return "FCM" if platform == "GCM" else "APNs"


def dead_letter_item(session: Session, pool: str, platform: str, item: Item, reason: str, *,
                     last_error: str | None = None, attempts: int = 1) -> None:
    """One push into the dead-letter store, in the shape `dlq replay` reads back."""
    repo.add_dead_letter(session, "delivery", reason, dead_letter_payload(pool, platform, item),
                         last_error=last_error, pool_id=pool, platform=platform, attempts=attempts)


def dead_letter_batch(session: Session, batch: DeliveryBatch, reason: str) -> int:
    for item in batch.items:
        dead_letter_item(session, batch.pool, batch.platform, item, reason, attempts=batch.attempt)
    return len(batch.items)
