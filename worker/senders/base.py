"""The sender interface: ``send()`` takes push requests and returns one outcome per device.

Outcomes are data, never exceptions, in three kinds besides success: temporary (``RETRY``,
may carry ``retry_after``), permanent, and token invalid (the device is deactivated).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class Kind(StrEnum):
    OK = "ok"
    TOKEN_INVALID = "token_invalid"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class PushRequest:
    device_id: str
    token: str
    data: dict[str, str]  # the five keys of CONTRACT section 3
    dataset: str
    identity_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.device_id, self.dataset)


@dataclass(frozen=True)
class Outcome:
    device_id: str
    kind: Kind
    reason: str = ""
    status: int | None = None
    retry_after: float | None = None
    # APNs 410: the moment the token stopped being valid; a device registered after it is kept
    invalid_since: datetime | None = None
    dataset: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """(device, dataset): a device subscribed to two datasets gets two pushes in one batch."""
        return (self.device_id, self.dataset)


# The longest Retry-After taken at its word; a larger or absurd value is cut to this.
MAX_RETRY_AFTER = 3600.0
log = logging.getLogger("pushsync.senders")


class Sender(ABC):
    async def prepare(self, requests: list[PushRequest]) -> list[Outcome] | None:
        """Work shared by the whole batch (an OAuth token); outcomes for all if it fails."""
        return None

    @abstractmethod
    async def send_one(self, req: PushRequest) -> Outcome:
        """Send one push and classify the answer."""

    async def send(self, requests: list[PushRequest]) -> list[Outcome]:
        """Send every request concurrently; one outcome per request, in the requests' order.

        Whatever goes wrong with one push (a malformed answer, a field of an odd type, a bug in
        a library's parser) becomes that push's temporary outcome, with the reason; it never
        escapes to fail the pushes beside it, some of which the service has already accepted."""
        early = await self.prepare(requests)
        if early is not None:
            return [replace(o, dataset=r.dataset) for r, o in zip(requests, early, strict=True)]
        results = await asyncio.gather(*(self.send_one(r) for r in requests), return_exceptions=True)
        return [_settle(r, res) for r, res in zip(requests, results, strict=True)]

    async def close(self) -> None:  # noqa: B027 - optional hook: most senders hold something to close
        """Release connections. A sender that holds none need not override it."""


def _settle(req: PushRequest, result: object) -> Outcome:
    if isinstance(result, Outcome):
        return replace(result, device_id=req.device_id, dataset=req.dataset)
    reason = f"bad answer: {type(result).__name__}: {str(result)[:120]}"
    log.warning("push to device %s: %s", req.device_id, reason)
    return Outcome(req.device_id, Kind.RETRY, reason=reason, dataset=req.dataset)


def collapse_id(dataset: str) -> str:
    """apns-collapse-id: at most 64 bytes. A device belongs to one identity, so the dataset
    name is already stable per identity and dataset; a longer name is hashed to 64 hex chars."""
    return dataset if len(dataset.encode()) <= 64 else hashlib.sha256(dataset.encode()).hexdigest()


def tls_context(ca_file: str | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    """System CAs plus PUSHSYNC_CA_FILE, hostname checked."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds or as an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
        import time

        return min(max(0.0, when.timestamp() - (time.time() if now is None else now)), MAX_RETRY_AFTER)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
