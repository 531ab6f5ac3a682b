"""The APNs transports alone: one process, one sender, against the nginx sink.

    python -m bench.transport [--pushes 20000] [--in-flight 200] [--runs 3]

Each transport (PUSHSYNC_APNS_TRANSPORT: aioapns, curl) sends the same pushes through pushsync's own
``APNsSender`` (its JWT, headers, payload and outcome classification included), ``--in-flight``
at a time, on one connection; the figures are wall-clock pushes/s and CPU microseconds per push of
this process (the sink's CPU is nginx's, not counted). Needs nginx (``bash scripts/services.sh
--bench``). Runs alternate between the transports, so a noisy machine hurts both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.sink import Sink
from worker.senders.apns import APNsSender
from worker.senders.base import Kind, PushRequest


def _requests(n: int) -> list[PushRequest]:
    ident = f"us-east-1:{uuid.uuid4()}"
    data = {"source": "cognito-sync", "identityPoolId": "us-east-1:ab", "identityId": ident, "datasetName": "notes",
            "syncCount": "1"}
    return [PushRequest(device_id=str(i), token=f"{i:064x}", data=data, dataset="notes", identity_id=ident)
            for i in range(n)]


async def _run(info: dict, transport: str, pushes: int, in_flight: int) -> tuple[float, float]:
    sender = APNsSender(key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"],
                        team_id=info["apns_team_id"], topic=info["apns_topic"], url=info["url"],
                        ca_file=info["ca_file"], connections=1, timeout=10, transport=transport)
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
    figures: dict[str, list[tuple[float, float]]] = {"aioapns": [], "curl": []}
    with tempfile.TemporaryDirectory() as tmp, Sink(Path(tmp) / "sink") as sink:
        for _ in range(args.runs):
            for transport in figures:
                figures[transport].append(asyncio.run(_run(sink.info, transport, args.pushes, args.in_flight)))
    print(f"{args.pushes} APNs pushes, {args.in_flight} in flight, one connection, one process; "
          f"median of {args.runs} runs (min-max)")
    print("| transport | pushes/s | CPU per push |")
    print("|---|---|---|")
    for transport, runs in figures.items():
        rates, cpus = [r for r, _ in runs], [c for _, c in runs]
        print(f"| {transport} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
              f"{statistics.median(cpus):.0f} µs ({min(cpus):.0f}-{max(cpus):.0f}) |")
    base, new = (statistics.median(r for r, _ in figures[t]) for t in ("aioapns", "curl"))
    print(f"curl / aioapns: {new / base:.2f}x the pushes per second")


if __name__ == "__main__":
    main()
