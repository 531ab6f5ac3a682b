"""Delivery: one batch of devices of one pool and platform, sent concurrently.

Senders are cached per process (in the process's event loop), keyed by pool and platform and
rebuilt when the pool's credentials change, so connections and tokens are reused across tasks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from pushsync import contract
from pushsync.settings import Settings
from store import repo
from store.repo import PoolCredentials
from worker import aio, pools, retry
from worker.senders.apns import APNsSender
from worker.senders.base import Kind, Outcome, PushRequest, Sender
from worker.senders.fcm import FCMSender

_senders: dict[tuple[str, str], tuple[object, Sender]] = {}


def _build_sender(creds: PoolCredentials, platform: str, settings: Settings) -> Sender:
    if platform == "GCM":
        return FCMSender(creds.fcm_service_account, fcm_url=settings.fcm_url, ca_file=settings.ca_file,
                         connections=settings.fcm_connections, timeout=settings.send_timeout)
    url = settings.apns_sandbox_url if platform == "APNS_SANDBOX" else settings.apns_production_url
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
    skipped_inactive: int = 0
    deactivated: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    retry_batch: dict | None = None
    retry_in: float = 0.0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out.pop("retry_batch")
        return out


def load(session: Session, batch: dict) -> tuple[PoolCredentials | None, dict[str, str]]:
    creds = pools.credentials(session, [batch["pool"]])[batch["pool"]]
    tokens = repo.active_tokens(session, [item[0] for item in batch["items"]])
    return creds, tokens


def send_batch(creds: PoolCredentials, batch: dict, tokens: dict[str, str], settings: Settings) -> list[Outcome]:
    requests = [
        PushRequest(device_id=dev, token=tokens[dev], dataset=dataset, identity_id=identity,
                    data=contract.push_data(batch["pool"], identity, dataset, count))
        for dev, identity, dataset, count in batch["items"] if dev in tokens
    ]
    if not requests:
        return []
    return aio.run(_send(creds, batch["platform"], requests, settings),
                   timeout=settings.send_timeout * 3 + 30)


def record(session: Session, batch: dict, outcomes: list[Outcome], result: DeliveryResult,
           settings: Settings) -> DeliveryResult:
    """Write what happened to each device: deactivations, dead letters, the retry batch.

    Only the devices that failed with a temporary error are retried, in one batch that waits
    for the longest Retry-After among them and at least a jittered exponential backoff."""
    items = {item[0]: item for item in batch["items"]}
    invalid: dict[object, list[str]] = defaultdict(list)
    again: list[list] = []
    wait = 0.0
    attempt = batch.get("attempt", 1)
    for o in outcomes:
        result.reasons[o.reason or o.kind.value] = result.reasons.get(o.reason or o.kind.value, 0) + 1
        if o.kind is Kind.OK:
            result.sent += 1
        elif o.kind is Kind.TOKEN_INVALID:
            invalid[(o.reason, o.invalid_since)].append(o.device_id)
        elif o.kind is Kind.RETRY and attempt < settings.max_attempts:
            again.append(items[o.device_id])
            wait = max(wait, o.retry_after or 0.0)
        else:
            why = "retries exhausted" if o.kind is Kind.RETRY else "permanent error"
            result.dead_lettered += 1
            dead_letter_item(session, batch, items[o.device_id], f"{why}: {o.reason}",
                             last_error=f"HTTP {o.status}" if o.status else o.reason, attempts=attempt)
    for (reason, since), device_ids in invalid.items():
        result.deactivated += repo.deactivate_devices(session, device_ids, reason, not_registered_after=since)
    if again:
        result.retried = len(again)
        result.retry_batch = {**batch, "items": again, "attempt": attempt + 1}
        result.retry_in = retry.backoff(attempt, base=settings.retry_base, cap=settings.retry_cap,
                                        retry_after=wait)
    return result


def dead_letter_item(session: Session, batch: dict, item: list, reason: str, *, last_error: str | None = None,
                     attempts: int = 1) -> None:
    """One device's push into the dead-letter store, in the shape `dlq replay` reads back."""
    dev, identity, dataset, count = item
    repo.add_dead_letter(session, "delivery", reason, {
        "pool": batch["pool"], "platform": batch["platform"], "deviceId": dev, "identityId": identity,
        "datasetName": dataset, "syncCount": count}, last_error=last_error, pool_id=batch["pool"],
        platform=batch["platform"], attempts=attempts)


def dead_letter_batch(session: Session, batch: dict, reason: str) -> int:
    for item in batch["items"]:
        dead_letter_item(session, batch, item, reason, attempts=batch.get("attempt", 1))
    return len(batch["items"])
