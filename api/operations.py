"""What each API operation does once the caller is known: plain functions over the store's
repository and the producer client (the same the command line calls). They run in a worker
thread; they raise ``ApiError``s or the errors ``api.app`` translates (validation, not found,
store out of reach)."""

from __future__ import annotations

from typing import Any

from api.auth import Principal, pool_platforms, require
from api.errors import InvalidConfiguration, InvalidParameter, Unavailable
from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.settings import get_settings

MAX_EVENTS = 500


def _session():
    from store.db import session_scope

    return session_scope()


def _object(body: Any, what: str) -> dict:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidParameter(f"the body must be a JSON object ({what})")
    return body


def register_device(p: Principal, pool_id: str, identity_id: str, body: Any) -> dict:
    from store import repo

    require(p, "device", identity_id)
    body = _object(body, '{"Platform": ..., "Token": ...}')
    for key in ("Platform", "Token"):
        if key not in body:
            raise ValidationError(key, "is required")
    platform = contract.platform(body["Platform"])
    token = contract.device_token(body["Token"], platform)
    if platform not in pool_platforms(pool_id):
        raise InvalidConfiguration(f"push sync is not configured for {platform} in pool {pool_id}: "
                                   "the pool has no credentials for it")
    with _session() as s:
        device_id = repo.register_device(s, pool_id, identity_id, platform, token)
    return {"DeviceId": device_id}


def subscribe(p: Principal, pool_id: str, identity_id: str, dataset: str, device_id: str, body: Any) -> dict:
    from store import repo

    require(p, "device", identity_id)
    with _session() as s:
        repo.subscribe(s, pool_id, identity_id, [dataset], device_id)
    return {}


def unsubscribe(p: Principal, pool_id: str, identity_id: str, dataset: str, device_id: str, body: Any) -> dict:
    from store import repo

    require(p, "device", identity_id)
    with _session() as s:
        repo.unsubscribe(s, pool_id, identity_id, dataset, device_id)
    return {}


def subscribe_all(p: Principal, pool_id: str, identity_id: str, device_id: str, body: Any) -> dict:
    from store import repo

    require(p, "device", identity_id)
    body = _object(body, '{"DatasetNames": [...]}, optional')
    names = body.get("DatasetNames")
    if names is not None:
        limit = get_settings().max_datasets_per_identity
        if not isinstance(names, list):
            raise ValidationError("DatasetNames", "must be a list of dataset names")
        if len(names) > limit:
            raise contract.LimitExceeded("DatasetNames", f"{len(names)} datasets; an identity may subscribe to "
                                                         f"{limit} (PUSHSYNC_MAX_DATASETS_PER_IDENTITY)")
        names = sorted({contract.dataset_name(n) for n in names})
    with _session() as s:
        datasets = names if names is not None else repo.known_datasets(s, pool_id, identity_id)
        repo.subscribe(s, pool_id, identity_id, datasets, device_id)
    return {}


def _event(item: Any, pool_id: str) -> contract.ChangeEvent:
    if isinstance(item, dict):
        item = dict(item)
        item.setdefault("identityPoolId", pool_id)
        count = item.get("syncCount")
        if "syncCount" in item and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValidationError("syncCount", "must be a JSON integer 0 <= n < 2^63", count)
    event = contract.event(item)
    if event.pool != pool_id:
        raise ValidationError("identityPoolId", f"must be the pool of the path ({pool_id}) or left out")
    return event


def publish_events(p: Principal, pool_id: str, body: Any) -> tuple[int, dict]:
    """202 with how many events went on the queue and why the others did not."""
    from pushsync.client import PublishError, publish_many

    require(p, "producer")
    if isinstance(body, list):
        if len(body) > MAX_EVENTS:
            raise InvalidParameter(f"at most {MAX_EVENTS} events per request, got {len(body)}")
        valid, rejected = [], []
        for index, item in enumerate(body):
            try:
                valid.append(_event(item, pool_id))
            except ValidationError as exc:
                rejected.append({"index": index, "message": str(exc)})
    elif isinstance(body, dict):
        valid, rejected = [_event(body, pool_id)], []
    else:
        raise InvalidParameter("the body must be one change event (a JSON object) or a list of them")
    if not pool_platforms(pool_id):
        raise InvalidConfiguration(f"push sync is not configured for pool {pool_id}: it has no push credentials")
    settings = get_settings()
    try:
        sent = publish_many(valid, chunk_size=min(MAX_EVENTS, settings.max_events_per_message),
                            timeout=settings.api_publish_wait) if valid else 0
    except PublishError as exc:
        raise Unavailable(f"the queue is out of reach: {exc.sent} of {len(valid)} events were enqueued; "
                          "sending them all again is safe (a sync count already taken is dropped)",
                          retry_after=5) from None
    return 202, {"accepted": sent, "rejected": rejected}
