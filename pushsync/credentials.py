"""Checks for a pool's push credentials, done when they are registered rather than at the
first push, so that a wrong file is refused at the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pushsync.contract import ValidationError

_APPLE_ID_RE = re.compile(r"[A-Z0-9]{10}")
_BUNDLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}")


def _read(path: str, field: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ValidationError(field, f"cannot read {path}: {exc.strerror}") from None


def load_fcm_service_account(path: str, allow_http: bool = False) -> dict:
    field = "--fcm-service-account"
    try:
        account = json.loads(_read(path, field))
    except json.JSONDecodeError:
        raise ValidationError(field, f"{path} is not a JSON service account file") from None
    return check_fcm_service_account(account, allow_http, field, f"{path}: ")


def check_fcm_service_account(account: object, allow_http: bool = False, field: str = "ServiceAccount",
                              where: str = "") -> dict:
    """The service account as given (a file's content or an API body), checked."""
    if not isinstance(account, dict) or account.get("type") != "service_account":
        raise ValidationError(field, f"{where}not a service account (type must be service_account)")
    for key in ("project_id", "private_key", "client_email", "token_uri"):
        if not isinstance(account.get(key), str) or not account[key]:
            raise ValidationError(field, f"{where}has no {key}")
    if not account["token_uri"].startswith(("https://", "http://") if allow_http else "https://"):
        raise ValidationError(field, f"{where}token_uri must be an https:// URL (http:// only with "
                                     "PUSHSYNC_ALLOW_INSECURE_ENDPOINTS=true, for development)")
    try:
        private = load_pem_private_key(account["private_key"].encode(), password=None)
    except Exception:  # noqa: BLE001 - hostile PEMs raise more than ValueError (cryptography's InternalError)
        raise ValidationError(field, f"{where}private_key is not a PEM private key") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValidationError(field, f"{where}private_key must be an RSA key")
    return account


def load_apns_key(path: str | None, key_id: str | None, team_id: str | None, topic: str | None) -> dict:
    given = {"--apns-key": path, "--apns-key-id": key_id, "--apns-team-id": team_id, "--apns-topic": topic}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValidationError(missing[0], "APNs token authentication needs --apns-key, --apns-key-id, "
                                          "--apns-team-id and --apns-topic together")
    assert path is not None  # in missing otherwise
    pem = _read(path, "--apns-key")
    return check_apns_key(pem, key_id, team_id, topic, names=("--apns-key", "--apns-key-id", "--apns-team-id",
                                                              "--apns-topic"), where=f"{path} ")


def check_apns_key(pem: object, key_id: object, team_id: object, topic: object,
                   names: tuple[str, str, str, str] = ("Key", "KeyId", "TeamId", "Topic"), where: str = "") -> dict:
    """An APNs token-auth key (PEM text) with its ids, checked."""
    key_field, id_field, team_field, topic_field = names
    try:
        if not isinstance(pem, str):
            raise ValueError
        key = load_pem_private_key(pem.encode(), password=None)
    except Exception:  # noqa: BLE001 - as above
        raise ValidationError(key_field, f"{where}is not a PEM private key (.p8)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValidationError(key_field, f"{where}must be an EC P-256 key, as Apple issues")
    if not isinstance(key_id, str) or not _APPLE_ID_RE.fullmatch(key_id):
        raise ValidationError(id_field, "must be Apple's 10-character key id", key_id)
    if not isinstance(team_id, str) or not _APPLE_ID_RE.fullmatch(team_id):
        raise ValidationError(team_field, "must be Apple's 10-character team id", team_id)
    if not isinstance(topic, str) or not _BUNDLE_RE.fullmatch(topic):
        raise ValidationError(topic_field, "must be the app's bundle id", topic)
    return {"key": pem, "key_id": key_id, "team_id": team_id, "topic": topic}
