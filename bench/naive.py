"""The baseline many teams write first: one Celery task per push, a fresh client for each.

    celery -A bench.naive worker -c 2      (the benchmark starts it; BENCH_SINK names sink.json)

Each task builds a sender (TLS handshake, for FCM an OAuth token fetch, for APNs a JWT),
sends one push with it and closes it. The senders are pushsync's own, so the difference from
pushsync's figures is the design, not the HTTP code.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from celery import Celery

from worker.senders.apns import APNsSender
from worker.senders.base import PushRequest
from worker.senders.fcm import FCMSender

BROKER = os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/2")
app = Celery("naive", broker=BROKER)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


def _sink() -> dict:
    return json.loads(Path(os.environ["BENCH_SINK"]).read_text())


async def _send_one(platform: str, token: str, data: dict) -> str:
    info = _sink()
    if platform == "GCM":
        sender = FCMSender(json.loads(Path(info["service_account"]).read_text()), fcm_url=info["fcm_url"],
                           ca_file=info["ca_file"], connections=1, timeout=10, transport="aiohttp")
    else:
        sender = APNsSender(key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"],
                            team_id=info["apns_team_id"], topic=info["apns_topic"], url=info["url"],
                            ca_file=info["ca_file"], connections=1, timeout=10, transport="aioapns")
    try:
        [out] = await sender.send([PushRequest(device_id=token, token=token, dataset="notes", identity_id="i",
                                               data=data)])
        return out.kind.value
    finally:
        await sender.close()


@app.task(name="naive.push")
def push(platform: str, token: str, data: dict) -> str:
    return asyncio.run(_send_one(platform, token, data))
