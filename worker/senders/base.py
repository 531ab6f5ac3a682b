"""The sender interface: ``send()`` takes push requests and returns one outcome per device.

Outcomes are data, never exceptions, in three kinds besides success: temporary (``RETRY``,
may carry ``retry_after``), permanent, and token invalid (the device is deactivated).
"""

from __future__ import annotations

import hashlib
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Outcome:
    device_id: str
    kind: Kind
    reason: str = ""
    status: int | None = None
    retry_after: float | None = None
    # APNs 410: the moment the token stopped being valid; a device registered after it is kept
    invalid_since: datetime | None = None


class Sender(ABC):
    @abstractmethod
    async def send(self, requests: list[PushRequest]) -> list[Outcome]:
        """Send every request concurrently; one outcome per request, in any order."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most senders hold something to close
        """Release connections. A sender that holds none need not override it."""


def short_token(token: str) -> str:
    """Tokens are secrets: logs and metrics show this prefix only."""
    return token[:8] + "…"


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
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - (time.time() if now is None else now))
