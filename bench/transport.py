"""The transports alone: one process, one sender, against the nginx sink.

    python -m bench.transport [--pushes 20000] [--in-flight 200] [--runs 3]

Each transport (PUSHSYNC_APNS_TRANSPORT: aioapns, curl; PUSHSYNC_FCM_TRANSPORT: aiohttp, curl) sends
the same pushes through pushsync's own ``APNsSender`` or ``FCMSender`` (JWT or OAuth token, headers,
payload and outcome classification included), ``--in-flight`` at a time; APNs on one connection,
FCM over aiohttp on its default pool of 8 HTTP/1.1 connections, over curl on one HTTP/2 connection.
The figures are wall-clock pushes/s and CPU microseconds per push of this process (the sink's CPU is
nginx's, not counted). Needs nginx (``bash scripts/services.sh --bench``). Runs alternate between
the transports, so a noisy machine hurts all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.sink import Sink
from worker.senders.apns import APNsSender
from worker.senders.base import Kind, PushRequest
from worker.senders.fcm import FCMSender

# (platform, transport) in the order they run
TRANSPORTS = (("APNs", "aioapns"), ("APNs", "curl"), ("FCM", "aiohttp"), ("FCM", "curl"))


def _requests(n: int) -> list[PushRequest]:
    ident = f"us-east-1:{uuid.uuid4()}"
    data = {"source": "cognito-sync", "identityPoolId": "us-east-1:ab", "identityId": ident, "datasetName": "notes",
            "syncCount": "1"}
    return [PushRequest(device_id=str(i), token=f"{i:064x}", data=data, dataset="notes", identity_id=ident)
            for i in range(n)]


def _sender(info: dict, platform: str, transport: str):
    if platform == "FCM":
        return FCMSender(json.loads(Path(info["service_account"]).read_text()), fcm_url=info["url"],
                         ca_file=info["ca_file"], connections=8, timeout=10, transport=transport)
    return APNsSender(key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"],
                      team_id=info["apns_team_id"], topic=info["apns_topic"], url=info["url"],
                      ca_file=info["ca_file"], connections=1, timeout=10, transport=transport)


async def _run(info: dict, platform: str, transport: str, pushes: int, in_flight: int) -> tuple[float, float]:
    sender = _sender(info, platform, transport)
    try:
        await sender.send(_requests(10))  # the connection and the token, outside the measure
        requests = _requests(pushes)
        chunks = [requests[i:i + in_flight] for i in range(0, pushes, in_flight)]
        wall, cpu = time.perf_counter(), time.process_time()
        ok = 0
        for chunk in chunks:  # in_flight at a time, as a delivery batch sends them
            ok += sum(o.kind is Kind.OK for o in await sender.send(chunk))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if ok != pushes:
            raise SystemExit(f"{transport}: only {ok} of {pushes} pushes accepted")
        return pushes / wall, cpu / pushes * 1e6
    finally:
        await sender.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {t: [] for t in TRANSPORTS}
    with tempfile.TemporaryDirectory() as tmp, Sink(Path(tmp) / "sink") as sink:
        for _ in range(args.runs):
            for platform, transport in figures:
                figures[platform, transport].append(
                    asyncio.run(_run(sink.info, platform, transport, args.pushes, args.in_flight)))
    print(f"{args.pushes} pushes a transport, {args.in_flight} in flight, one process; "
          f"median of {args.runs} runs (min-max)")
    print("| platform | transport | pushes/s | CPU per push |")
    print("|---|---|---|---|")
    for (platform, transport), runs in figures.items():
        rates, cpus = [r for r, _ in runs], [c for _, c in runs]
        print(f"| {platform} | {transport} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
              f"{statistics.median(cpus):.0f} µs ({min(cpus):.0f}-{max(cpus):.0f}) |")
    for platform, base in (("APNs", "aioapns"), ("FCM", "aiohttp")):
        old, new = (statistics.median(r for r, _ in figures[platform, t]) for t in (base, "curl"))
        print(f"{platform}: curl / {base}: {new / old:.2f}x the pushes per second")


if __name__ == "__main__":
    main()
