"""The form of a Redis Sentinel broker URL: ``sentinel://[[user]:password@]host:port[/db]``,
``;``-separated, one address per sentinel. The settings check it; ``pushsync.broker`` connects."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``sentinel://[[user]:password@]host:port[/db];sentinel://host:port;...``; a ``ValueError``
    says what is wrong (without the password)."""
    sentinels: list[tuple[str, int]] = []
    username = password = None
    db = 0
    parts_list = [p.strip() for p in url.split(";") if p.strip()]
    for i, part in enumerate(parts_list):
        parts = urlsplit(part)
        if parts.scheme.lower() != "sentinel":
            raise ValueError(f"address {i + 1} is not sentinel:// (every address in the list must be)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"address {i + 1} has a bad port") from None
        if not parts.hostname or port is None:
            raise ValueError(f"address {i + 1} needs a host and a port (sentinel://host:26379)")
        sentinels.append((parts.hostname, port))
        if i == 0:
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ValueError(f"the database must be a number, got {path!r}")
                db = int(path)
    if not sentinels:
        raise ValueError("no sentinel address")
    return SentinelAddress(tuple(sentinels), username, password, db)
