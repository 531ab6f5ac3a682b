"""Pools and their push credentials."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from pushsync import secrets
from pushsync.contract import DEFAULT_FCM_RATE
from pushsync.secrets import Keyring, SecretError
from pushsync.settings import get_settings
from store.models import Device, Pool, utcnow
from store.repo.common import NotFound


@dataclass(frozen=True)
class PoolCredentials:
    """What a sender needs of a pool. Lives only in worker memory, never in a message."""

    pool_id: str
    updated_at: datetime
    fcm_service_account: dict | None
    fcm_project_id: str | None
    apns_key: str | None
    apns_key_id: str | None
    apns_team_id: str | None
    apns_topic: str | None
    # why the credentials could not be opened (no key opens them, a key file is gone): the pool
    # then has none, and what needs them is dead-lettered with this reason
    error: str | None = None
    # FCM pushes a minute for this pool's project (``pool create --fcm-rate``; worker.budget)
    fcm_rate: int = DEFAULT_FCM_RATE
    # the pool's own coalescing window per platform, seconds (``--apns-window``, ``--fcm-window``;
    # None: PUSHSYNC_COALESCE_WINDOW's); one wider than ingest's is kept at send time (worker.pacing)
    apns_window: float | None = None
    fcm_window: float | None = None

    def has(self, platform: str) -> bool:
        if self.error:
            return False
        if platform == "GCM":
            return self.fcm_service_account is not None
        return self.apns_key is not None


def upsert_pool(session: Session, pool_id: str, *, fcm_service_account: dict | None = None,
                apns: dict | None = None, keyring: Keyring | None = None,
                fcm_reference: str | None = None, apns_reference: str | None = None,
                fcm_rate: int | None = None, windows: dict[str, float] | None = None) -> bool:
    """Create the pool or update the credentials, the FCM rate and the windows (platform "APNS" or
    "GCM" -> seconds) given; returns True if it was created.

    Key material is sealed with ``keyring`` (default: PUSHSYNC_SECRET_KEY) and refused without
    a key (``SecretError``); with a ``*_reference`` (a file path) only the path is stored."""
    keyring = get_settings().keyring() if keyring is None else keyring
    fcm_stored = apns_stored = None
    if fcm_service_account is not None:
        fcm_stored = (secrets.reference(fcm_reference) if fcm_reference
                      else keyring.seal(json.dumps(fcm_service_account)))
    if apns is not None:
        apns_stored = secrets.reference(apns_reference) if apns_reference else keyring.seal(apns["key"])
    pool = session.get(Pool, pool_id)
    created = pool is None
    if pool is None:
        pool = Pool(id=pool_id)
        session.add(pool)
    if fcm_service_account is not None:
        pool.fcm_service_account = fcm_stored
        pool.fcm_project_id = fcm_service_account["project_id"]
    if apns is not None:
        pool.apns_key = apns_stored
        pool.apns_key_id = apns["key_id"]
        pool.apns_team_id = apns["team_id"]
        pool.apns_topic = apns["topic"]
    if fcm_rate is not None:
        pool.fcm_rate = fcm_rate
    for platform, seconds in (windows or {}).items():
        setattr(pool, "fcm_window" if platform == "GCM" else "apns_window", seconds)
    pool.updated_at = utcnow()
    session.flush()
    return created


def _fcm_rate(pool: Pool) -> int:
    """The pool's FCM budget a minute: its own, or FCM's default quota when it set none."""
    return pool.fcm_rate or DEFAULT_FCM_RATE


def _window(own: float | None) -> float:
    """A pool's window as it works: its own, or the deployment's PUSHSYNC_COALESCE_WINDOW."""
    ingest = get_settings().coalesce_window
    return max(own, ingest) if own is not None else ingest


def pool_summary(session: Session, pool_id: str) -> dict:
    """The pool's settings with every secret left out (safe to print)."""
    pool = session.get(Pool, pool_id)
    if pool is None:
        raise NotFound(f"unknown pool {pool_id}")
    keyring = get_settings().keyring()
    fcm = None
    if pool.fcm_service_account:
        fcm = {"project_id": pool.fcm_project_id, "private_key": "***",
               "stored": secrets.storage(pool.fcm_service_account)}
        try:
            account = json.loads(keyring.open(pool.fcm_service_account))
            fcm.update(client_email=account.get("client_email"), token_uri=account.get("token_uri"))
        except (SecretError, ValueError) as exc:
            fcm["error"] = str(exc) if isinstance(exc, SecretError) else "not a JSON service account"
    apns = None
    if pool.apns_key:
        apns = {"key": "***", "key_id": pool.apns_key_id, "team_id": pool.apns_team_id,
                "topic": pool.apns_topic, "stored": secrets.storage(pool.apns_key)}
        try:
            keyring.open(pool.apns_key)  # whether a worker with these settings can, as for FCM's
        except SecretError as exc:
            apns["error"] = str(exc)
    devices = session.execute(
        select(Device.platform, Device.active, func.count()).where(Device.pool_id == pool_id)
        .group_by(Device.platform, Device.active)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for plat, active, n in devices:
        counts.setdefault(plat, {"active": 0, "inactive": 0})["active" if active else "inactive"] += n
    return {
        "identityPoolId": pool.id,
        "pushSync": {"GCM": fcm is not None, "APNS": apns is not None},
        "fcm": fcm,
        "apns": apns,
        "devices": counts,
        "fcmRatePerMinute": _fcm_rate(pool),
        "windowSeconds": {"APNS": _window(pool.apns_window), "GCM": _window(pool.fcm_window)},
        "createdAt": pool.created_at.isoformat(),
        "updatedAt": pool.updated_at.isoformat(),
    }


def pool_credentials(session: Session, pool_id: str, keyring: Keyring | None = None) -> PoolCredentials | None:
    """The pool's credentials opened; ``SecretError`` when they cannot be (no key that opens
    them, an unreadable key file, a stored value that is not what it should be)."""
    pool = session.get(Pool, pool_id)
    if pool is None:
        return None
    keyring = get_settings().keyring() if keyring is None else keyring
    account = None
    if pool.fcm_service_account:
        opened = keyring.open(pool.fcm_service_account)
        try:
            account = json.loads(opened)
        except ValueError:
            raise SecretError("the pool's FCM service account is not JSON") from None
        if not isinstance(account, dict):
            raise SecretError("the pool's FCM service account is not a JSON object")
    return PoolCredentials(
        pool_id=pool.id,
        updated_at=pool.updated_at,
        fcm_service_account=account,
        fcm_project_id=pool.fcm_project_id,
        apns_key=keyring.open(pool.apns_key) if pool.apns_key else None,
        apns_key_id=pool.apns_key_id,
        apns_team_id=pool.apns_team_id,
        apns_topic=pool.apns_topic,
        fcm_rate=_fcm_rate(pool),
        apns_window=pool.apns_window,
        fcm_window=pool.fcm_window,
    )


def rekey_pools(session: Session, keyring: Keyring) -> dict[str, int]:
    """Seal every pool's key material under the first key of ``keyring`` (plain text from older
    versions too); file references stay as they are. All or nothing: a value that no key opens
    raises ``SecretError`` and the caller's transaction rolls back. The pools' ``updated_at`` does
    not move, so workers keep the credentials they hold (which are the same)."""
    counts = {"pools": 0, "sealed": 0, "references": 0}
    for pool in session.execute(select(Pool).order_by(Pool.id).with_for_update()).scalars():
        counts["pools"] += 1
        for column in ("fcm_service_account", "apns_key", "token_secret"):
            stored = getattr(pool, column)
            if stored is None:
                continue
            if stored.startswith(secrets.REFERENCE):
                counts["references"] += 1
                continue
            try:
                sealed = keyring.reseal(stored)
            except SecretError as exc:
                raise SecretError(f"pool {pool.id}: {exc}") from None
            session.execute(cast(Table, Pool.__table__).update().where(Pool.id == pool.id).values(
                {column: sealed, "updated_at": pool.updated_at}))
            counts["sealed"] += 1
    return counts


def pool_versions(session: Session, pool_ids: Iterable[str]) -> dict[str, datetime]:
    rows = session.execute(select(Pool.id, Pool.updated_at).where(Pool.id.in_(list(pool_ids))))
    return dict(rows.all())


def require_pool(session: Session, pool_id: str) -> None:
    if session.get(Pool, pool_id) is None:
        raise NotFound(f"unknown pool {pool_id}")


def pool_platforms(session: Session, pool_id: str) -> set[str]:
    """The platforms the pool has push credentials for (``NotFound`` for an unknown pool)."""
    row = session.execute(select(Pool.fcm_service_account.is_not(None), Pool.apns_key.is_not(None))
                          .where(Pool.id == pool_id)).first()
    if row is None:
        raise NotFound(f"unknown pool {pool_id}")
    return ({"GCM"} if row[0] else set()) | ({"APNS", "APNS_SANDBOX"} if row[1] else set())
