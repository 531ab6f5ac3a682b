"""Validation of everything that enters from outside (CONTRACT section 1 and 2).

Each check returns the normalised value or raises ``ValidationError`` naming the field and
its rule, so that the CLI, the Python client and the worker all refuse the same things.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

SOURCE = "cognito-sync"
PLATFORMS = ("GCM", "APNS", "APNS_SANDBOX")
_PLATFORM_ALIASES = {"GCM": "GCM", "FCM": "GCM", "APNS": "APNS", "APNS_SANDBOX": "APNS_SANDBOX"}
MAX_SYNC_COUNT = 2**63
# FCM's default quota: 600,000 messages a minute per Firebase project; a pool's budget unless set
DEFAULT_FCM_RATE = 600_000
MAX_FCM_RATE = 100_000_000

_ID_RE = re.compile(r"[\w-]+:[0-9a-fA-F-]+", re.ASCII)
_DATASET_RE = re.compile(r"[a-zA-Z0-9_.:-]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


class ValidationError(ValueError):
    def __init__(self, field: str, rule: str, value: Any = None):
        self.field = field
        self.rule = rule
        shown = "" if value is None else f" (got {_short(value)})"
        super().__init__(f"{field}: {rule}{shown}")


class LimitExceeded(ValidationError):
    """A registration or subscription that would take an identity past a configured limit."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _identifier(field: str, value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 55 or not _ID_RE.fullmatch(value):
        raise ValidationError(field, "must be 1-55 characters of the form REGION:HEX-UUID", value)
    # accepted in any case, stored and compared lower-case: "US-EAST-1:ABC..." is the same
    # identity as "us-east-1:abc...", never a second one
    return value.lower()


def pool_id(value: Any) -> str:
    return _identifier("identityPoolId", value)


def identity_id(value: Any) -> str:
    return _identifier("identityId", value)


def dataset_name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not _DATASET_RE.fullmatch(value):
        raise ValidationError("datasetName", "must be 1-128 characters from [a-zA-Z0-9_.:-]", value)
    return value


def sync_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError("syncCount", "must be an integer 0 <= n < 2^63", value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value.strip()):
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < MAX_SYNC_COUNT:
        raise ValidationError("syncCount", "must be an integer 0 <= n < 2^63", value)
    return value


def platform(value: Any) -> str:
    if isinstance(value, str) and value.upper() == "ADM":
        raise ValidationError("platform", "ADM (Amazon Device Messaging) is not supported")
    normal = _PLATFORM_ALIASES.get(value.upper()) if isinstance(value, str) else None
    if normal is None:
        raise ValidationError("platform", "must be one of GCM (or FCM), APNS, APNS_SANDBOX", value)
    return normal


def fcm_rate(value: Any) -> int:
    """A pool's FCM budget as ``pool create --fcm-rate`` takes it: ``N/min``, ``N/s`` or ``N`` (a minute)."""
    text = str(value).strip().lower().replace("_", "").replace(",", "")
    per = 1
    for suffix, factor in (("/min", 1), ("/m", 1), ("/s", 60)):
        if text.endswith(suffix):
            text, per = text[: -len(suffix)], factor
            break
    if not text.isdigit() or not 1 <= int(text) * per <= MAX_FCM_RATE:
        raise ValidationError("--fcm-rate", f"must be N/min or N/s, 1 to {MAX_FCM_RATE} a minute", value)
    return int(text) * per


MAX_WINDOW = 86_400.0


def window(value: Any, flag: str) -> float:
    """A pool's coalescing window as ``pool create --apns-window/--fcm-window`` takes it: seconds,
    0 to a day (a width at or below PUSHSYNC_COALESCE_WINDOW leaves ingest's window alone)."""
    try:
        seconds = float(str(value).strip().lower().removesuffix("s"))
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WINDOW:  # NaN fails this too
        raise ValidationError(flag, f"must be seconds from 0 to {MAX_WINDOW:.0f}", value)
    return seconds


def device_token(value: Any, platform_name: str) -> str:
    from pushsync.settings import get_settings

    limit = get_settings().max_token_length
    if isinstance(value, str) and len(value) > limit:
        raise ValidationError("token", f"longer than {limit} characters (PUSHSYNC_MAX_TOKEN_LENGTH)")
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 4096
        or not value.isprintable()
        or value != value.strip()
    ):
        raise ValidationError("token", "must be 1-4096 printable characters without surrounding spaces")
    if platform_name in ("APNS", "APNS_SANDBOX"):
        if not _HEX_RE.fullmatch(value):
            raise ValidationError("token", "an APNs device token must be hexadecimal")
        return value.lower()
    return value


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def device_id(value: Any, field: str = "deviceId") -> str:
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value.lower()):
        raise ValidationError(field, "must be a device id as returned by registration (a UUID)", value)
    return value.lower()


_EVENT_KEYS = {"identityPoolId", "identityId", "datasetName", "syncCount", "originDeviceId", "eventId"}


class Key(NamedTuple):
    """What coalescing, the stored counts and the pushes are kept per: a dataset of an identity."""

    pool: str
    identity: str
    dataset: str

    def text(self) -> str:
        """The key as Redis keeps it. None of the three may hold a space (section 1's rules)."""
        return f"{self.pool} {self.identity} {self.dataset}"

    @classmethod
    def from_text(cls, text: Any) -> Key:
        """A key read back from Redis, checked like anything else from outside."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
        parts = text.split(" ") if isinstance(text, str) else []
        if len(parts) != 3:
            raise ValidationError("key", "must be POOL IDENTITY DATASET", text)
        return cls(pool_id(parts[0]), identity_id(parts[1]), dataset_name(parts[2]))


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change event (section 2), parsed once where it enters and passed on as such."""

    pool: str
    identity: str
    dataset: str
    sync_count: int
    origin: str | None = None  # the device that made the change: it is not notified
    event_id: str | None = None

    @property
    def key(self) -> Key:
        return Key(self.pool, self.identity, self.dataset)

    def to_json(self) -> dict[str, Any]:
        """The wire form producers send, optional keys left out when empty."""
        out: dict[str, Any] = {"identityPoolId": self.pool, "identityId": self.identity,
                               "datasetName": self.dataset, "syncCount": self.sync_count}
        if self.origin is not None:
            out["originDeviceId"] = self.origin
        if self.event_id is not None:
            out["eventId"] = self.event_id
        return out


def event(data: Any) -> ChangeEvent:
    """Check one change event; returns it typed and normalised, or raises ``ValidationError``."""
    if isinstance(data, ChangeEvent):
        return data
    if not isinstance(data, dict):
        raise ValidationError("event", "must be a JSON object", type(data).__name__)
    unknown = set(data) - _EVENT_KEYS
    if unknown:
        raise ValidationError("event", f"unknown keys {sorted(map(str, unknown))}")
    for key in ("identityPoolId", "identityId", "datasetName", "syncCount"):
        if key not in data:
            raise ValidationError(key, "is required")
    origin = data.get("originDeviceId")
    event_id = data.get("eventId")
    if event_id is not None and (not isinstance(event_id, str) or not 1 <= len(event_id) <= 128
                                 or not event_id.isprintable()):
        raise ValidationError("eventId", "must be 1-128 printable characters", event_id)
    return ChangeEvent(pool_id(data["identityPoolId"]), identity_id(data["identityId"]),
                       dataset_name(data["datasetName"]), sync_count(data["syncCount"]),
                       None if origin is None else device_id(origin, "originDeviceId"), event_id)


def printable(text: Any, limit: int = 300) -> str:
    """Text from outside made safe for a terminal or a log line: control characters (terminal
    escapes, NUL, newlines) are shown escaped, and the length is bounded."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def push_data(pool: str, identity: str, dataset: str, count: int) -> dict[str, str]:
    """The five keys every device receives (CONTRACT section 3); all values are strings."""
    return {
        "source": SOURCE,
        "identityPoolId": pool,
        "identityId": identity,
        "datasetName": dataset,
        "syncCount": str(count),
    }
