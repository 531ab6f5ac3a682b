"""``GET``/``POST /identitypools/{pool}/configuration``: the pool's push settings (admin scope).
Key material is accepted, sealed like the command line seals it, and never returned."""

from __future__ import annotations

from typing import Any

from api.auth import Principal, pool_changed, require
from api.errors import InvalidParameter
from pushsync.contract import ValidationError
from pushsync.settings import get_settings


def _public(summary: dict) -> dict:
    fcm, apns = summary.get("fcm"), summary.get("apns")
    push: dict[str, Any] = {}
    if fcm:
        push["FCM"] = {"ProjectId": fcm.get("project_id"), "ClientEmail": fcm.get("client_email"),
                       "Stored": fcm.get("stored")}
    if apns:
        push["APNS"] = {"KeyId": apns.get("key_id"), "TeamId": apns.get("team_id"), "Topic": apns.get("topic"),
                        "Stored": apns.get("stored")}
    return {"IdentityPoolId": summary["identityPoolId"], "PushSync": push,
            "Platforms": sorted(p for p, on in summary["pushSync"].items() if on)}


def get_configuration(p: Principal, pool_id: str, body: Any) -> dict:
    from store import repo
    from store.db import session_scope

    require(p, "admin")
    with session_scope() as s:
        return _public(repo.pool_summary(s, pool_id))


def _parse(body: Any) -> tuple[dict | None, dict | None]:
    from pushsync.credentials import check_apns_key, check_fcm_service_account

    if not isinstance(body, dict) or not isinstance(body.get("PushSync"), dict):
        raise InvalidParameter('the body must be {"PushSync": {"FCM": {...}, "APNS": {...}}}')
    push = body["PushSync"]
    unknown = set(push) - {"FCM", "APNS"}
    if unknown or not push:
        raise InvalidParameter("PushSync takes FCM and/or APNS")
    fcm = apns = None
    if "FCM" in push:
        section = push["FCM"]
        if not isinstance(section, dict) or "ServiceAccount" not in section:
            raise ValidationError("FCM", 'must be {"ServiceAccount": {the service account JSON}}')
        fcm = check_fcm_service_account(section["ServiceAccount"], get_settings().allow_insecure_endpoints,
                                        "FCM.ServiceAccount")
    if "APNS" in push:
        section = push["APNS"]
        if not isinstance(section, dict):
            raise ValidationError("APNS", 'must be {"Key", "KeyId", "TeamId", "Topic"}')
        apns = check_apns_key(section.get("Key"), section.get("KeyId"), section.get("TeamId"), section.get("Topic"),
                              names=("APNS.Key", "APNS.KeyId", "APNS.TeamId", "APNS.Topic"))
    return fcm, apns


def set_configuration(p: Principal, pool_id: str, body: Any) -> dict:
    from store import repo
    from store.db import session_scope

    require(p, "admin")
    fcm, apns = _parse(body)
    with session_scope() as s:
        repo.require_pool(s, pool_id)
        repo.upsert_pool(s, pool_id, fcm_service_account=fcm, apns=apns)
        summary = _public(repo.pool_summary(s, pool_id))
    pool_changed(pool_id)
    return summary
