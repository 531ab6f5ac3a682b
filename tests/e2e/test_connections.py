"""1,000 events to 100 devices through one worker process: connections are pooled.

The worker runs one process (-c 1) with pools of 3 FCM connections and 2 HTTP/2 connections
per APNs host; the emulators count every TLS connection they accept.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for

FCM_POOL, APNS_POOL = 3, 2


def test_thousand_events_to_hundred_devices_reuse_pooled_connections(tmp_path, own_emulator):
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=14,
                    extra_env={"PUSHSYNC_FCM_CONNECTIONS": str(FCM_POOL), "PUSHSYNC_APNS_CONNECTIONS": str(APNS_POOL)})
    try:
        pipe.create_pool(POOL)
        identities = [new_identity() for _ in range(10)]
        datasets = [f"ds{i}" for i in range(10)]
        lines, tokens = [], []
        for n, ident in enumerate(identities):
            for k in range(10):  # 10 devices per identity: 100 devices, all three platforms
                plat = ("GCM", "APNS", "APNS_SANDBOX")[(n * 10 + k) % 3]
                tok = f"fcm-{n}-{k}" if plat == "GCM" else f"{n:04x}{k:04x}" + "ab" * 28
                tokens.append(tok)
                lines.append(json.dumps({"identityPoolId": POOL, "identityId": ident, "platform": plat,
                                         "token": tok, "datasets": datasets}))
        r = pipe.cli("device", "import", "-", input="\n".join(lines) + "\n")
        assert "imported 100 devices" in r.stdout
        pipe.start_worker("-c", "1")
        # 1,000 events: 10 sync counts for each of 10 datasets of 10 identities, 10 events a message
        script = ("import sys, json\nfrom pushsync.client import publish_many\n"
                  "publish_many(json.loads(sys.stdin.read()), chunk_size=10)\n")
        events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": c}
                  for c in range(1, 11) for ident in identities for ds in datasets]
        assert len(events) == 1000
        subprocess.run([sys.executable, "-c", script], input=json.dumps(events), env=pipe.env, check=True,
                       text=True, timeout=120)

        def all_final():
            latest = {}
            for req in own_emulator.requests():
                if req["status"] == 200:
                    key = (req["token"], req["data"]["datasetName"])
                    latest[key] = max(latest.get(key, 0), int(req["data"]["syncCount"]))
            return len(latest) == 1000 and all(v == 10 for v in latest.values())

        wait_for(all_final, timeout=120, interval=0.5, what="count 10 of every dataset on every device")
        stats = own_emulator.stats()
        delivered = sum(n for k, n in stats["requests"].items() if k.endswith(":200"))
        print(f"\npushes accepted: {delivered}; connections opened: {stats['connections']}")
        assert delivered >= 1000  # every device got count 10 of each dataset, most got earlier ones too
        # the OAuth token endpoint is served on the same port: its connection is counted apart
        assert 1 <= stats["connections"]["fcm-send-peers"] <= FCM_POOL
        assert stats["connections"]["fcm"] <= FCM_POOL + stats["connections"]["fcm-token-peers"]
        assert 1 <= stats["connections"]["apns-production"] <= APNS_POOL
        assert 1 <= stats["connections"]["apns-sandbox"] <= APNS_POOL
        assert stats["oauth_tokens_issued"] == 1
    finally:
        pipe.stop_workers()
