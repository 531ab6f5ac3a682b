"""Pools and their push credentials."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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

    def has(self, platform: str) -> bool:
        if platform == "GCM":
            return self.fcm_service_account is not None
        return self.apns_key is not None


def upsert_pool(session: Session, pool_id: str, *, fcm_service_account: dict | None = None,
                apns: dict | None = None) -> bool:
    """Create the pool or update the credentials given; returns True if it was created."""
    pool = session.get(Pool, pool_id)
    created = pool is None
    if created:
        pool = Pool(id=pool_id)
        session.add(pool)
    if fcm_service_account is not None:
        pool.fcm_service_account = json.dumps(fcm_service_account)
        pool.fcm_project_id = fcm_service_account["project_id"]
    if apns is not None:
        pool.apns_key = apns["key"]
        pool.apns_key_id = apns["key_id"]
        pool.apns_team_id = apns["team_id"]
        pool.apns_topic = apns["topic"]
    pool.updated_at = utcnow()
    session.flush()
    return created


def pool_summary(session: Session, pool_id: str) -> dict:
    """The pool's settings with every secret left out (safe to print)."""
    pool = session.get(Pool, pool_id)
    if pool is None:
        raise NotFound(f"unknown pool {pool_id}")
    fcm = None
    if pool.fcm_service_account:
        account = json.loads(pool.fcm_service_account)
        fcm = {
            "project_id": pool.fcm_project_id,
            "client_email": account.get("client_email"),
            "private_key": "***",
            "token_uri": account.get("token_uri"),
        }
    apns = None
    if pool.apns_key:
        apns = {"key": "***", "key_id": pool.apns_key_id, "team_id": pool.apns_team_id,
                "topic": pool.apns_topic}
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
        "createdAt": pool.created_at.isoformat(),
        "updatedAt": pool.updated_at.isoformat(),
    }


def pool_credentials(session: Session, pool_id: str) -> PoolCredentials | None:
    pool = session.get(Pool, pool_id)
    if pool is None:
        return None
    return PoolCredentials(
        pool_id=pool.id,
        updated_at=pool.updated_at,
        fcm_service_account=json.loads(pool.fcm_service_account) if pool.fcm_service_account else None,
        fcm_project_id=pool.fcm_project_id,
        apns_key=pool.apns_key,
        apns_key_id=pool.apns_key_id,
        apns_team_id=pool.apns_team_id,
        apns_topic=pool.apns_topic,
    )


def pool_versions(session: Session, pool_ids: Iterable[str]) -> dict[str, datetime]:
    rows = session.execute(select(Pool.id, Pool.updated_at).where(Pool.id.in_(list(pool_ids))))
    return dict(rows.all())


def require_pool(session: Session, pool_id: str) -> None:
    if session.get(Pool, pool_id) is None:
        raise NotFound(f"unknown pool {pool_id}")
