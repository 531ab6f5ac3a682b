"""The process's senders: one per (pool, platform), kept across tasks in the worker's event loop,
so that connections, the APNs JWT and the FCM OAuth token are reused (Apple treats a burst of new
connections as abuse)."""

from __future__ import annotations

import asyncio
from typing import Any

from pushsync.settings import Settings
from store.repo import PoolCredentials
from worker.senders.apns import APNsSender
from worker.senders.base import Outcome, PushRequest, Sender
from worker.senders.fcm import FCMSender

# an old sender goes on serving the pushes it has in flight this long before it is closed
CLOSE_GRACE = 30.0


def _build_sender(creds: PoolCredentials, platform: str, settings: Settings) -> Sender:
    """A new sender of the pool's credentials for the platform, which the caller found it has
    (``PoolCredentials.has``)."""
    if platform == "GCM":
        if creds.fcm_service_account is None:
            raise ValueError(f"pool {creds.pool_id} has no FCM credentials")
        return FCMSender(creds.fcm_service_account, fcm_url=settings.fcm_url, ca_file=settings.ca_file,
                         connections=settings.fcm_connections, timeout=settings.send_timeout,
                         transport=settings.fcm_transport)
    # each platform names its host exactly; DeliveryBatch refuses any other platform name
    url = {"APNS": settings.apns_production_url, "APNS_SANDBOX": settings.apns_sandbox_url}[platform]
    key, key_id, team_id, topic = creds.apns_key, creds.apns_key_id, creds.apns_team_id, creds.apns_topic
    if key is None or key_id is None or team_id is None or topic is None:
        raise ValueError(f"pool {creds.pool_id} has no APNs credentials")
    return APNsSender(key=key, key_id=key_id, team_id=team_id, topic=topic, url=url, ca_file=settings.ca_file,
                      connections=settings.apns_connections, timeout=settings.send_timeout,
                      transport=settings.apns_transport)


class Senders:
    """The process's senders, one per (pool, platform), living in its event loop. A pool whose
    credentials changed gets a new one; two batches that find that at once build it once (a lock
    per key), and the old one is closed after its pushes in flight had time to finish."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._senders: dict[tuple[str, str], tuple[Any, Sender]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def send(self, creds: PoolCredentials, platform: str, requests: list[PushRequest]) -> list[Outcome]:
        key = (creds.pool_id, platform)
        cached = self._senders.get(key)
        if cached is None or cached[0] != creds.updated_at:
            async with self._locks.setdefault(key, asyncio.Lock()):
                cached = self._senders.get(key)
                if cached is None or cached[0] != creds.updated_at:
                    self._senders[key] = (creds.updated_at, _build_sender(creds, platform, self.settings))
                    if cached is not None:
                        asyncio.get_running_loop().call_later(CLOSE_GRACE, asyncio.ensure_future, cached[1].close())
        return await self._senders[key][1].send(requests)

    async def close(self) -> None:
        for _version, sender in list(self._senders.values()):
            await sender.close()
        self._senders.clear()
