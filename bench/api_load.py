"""Load check of the HTTP API: requests per second and latency percentiles for device
registration and for event batches, against a real `pushsync api` (uvicorn) on PostgreSQL.

    .venv/bin/python -m bench.api_load [--seconds 10] [--concurrency 8 32] [--api-workers 2]

The client (asyncio, aiohttp, keep-alive connections) runs on the same machine as the server, so
the figures are a floor for the server alone. Events go to the Redis queue; no worker runs, so
what is measured is the API's part: check, authenticate, rate-limit, validate, enqueue.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx  # the readiness poll only

from bench.env import EXE, POOL, Env, identity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emulator(directory: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([EXE, "emulator", "--dir", str(directory), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    info = directory / "emulator.json"
    for _ in range(200):
        if info.exists():
            return proc, json.loads(info.read_text())
        time.sleep(0.1)
    raise RuntimeError("the emulator did not start")


def _api(env: Env, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(env.tmp / "api.log", "w")
    proc = subprocess.Popen([EXE, "api", "--port", str(port), "--workers", str(workers)], env=env.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not start")


async def _drive(url: str, make_request, seconds: float, concurrency: int) -> dict:
    """``concurrency`` loops, each sending its next request when the last is answered (aiohttp,
    keep-alive: httpx's client spent more CPU than the server, and it shares the 2 cores)."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = itertools.count()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:
        async def one_loop():
            while time.perf_counter() < deadline:
                method, path, body, key = make_request(next(counter))
                data = json.dumps(body).encode() if body is not None else None
                started = time.perf_counter()
                async with session.request(method, path, data=data, headers={
                        "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as r:
                    await r.read()
                latencies.append(time.perf_counter() - started)
                statuses[r.status] = statuses.get(r.status, 0) + 1
        started = time.perf_counter()
        await asyncio.gather(*(one_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "statuses": statuses}


def scenarios(keys: dict) -> dict:
    def register(i: int):
        return ("POST", f"/identitypools/{POOL}/identity/{identity(i % 50_000)}/device",
                {"Platform": "GCM", "Token": f"load-{i}"}, keys["device"])

    def batch(size: int):
        def make(i: int):
            events = [{"identityId": identity((i * size + k) % 50_000), "datasetName": "notes", "syncCount": i + 1}
                      for k in range(size)]
            return "POST", f"/identitypools/{POOL}/events", events, keys["producer"]
        return make

    return {"register device": (register, 1), "events, 1 per request": (batch(1), 1),
            "events, 100 per request": (batch(100), 100), "events, 500 per request": (batch(500), 500)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32],
                    help="requests in flight (each figure is measured at each level)")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--api-threads", type=int, default=16, help="PUSHSYNC_API_THREADS of the server")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pushsync-api-load-"))
    emulator, info = _emulator(tmp / "emulator")
    env = Env(tmp / "env", info, extra={"PUSHSYNC_API_KEY_RATE": "1000000",
                                        "PUSHSYNC_API_THREADS": str(args.api_threads)})
    keys = {s: env.run("apikey", "create", POOL, "--scope", s).strip() for s in ("device", "producer")}
    api, url = _api(env, args.api_workers)
    try:
        print(f"API: {args.api_workers} uvicorn processes of {args.api_threads} threads on PostgreSQL; "
              f"{args.seconds:g} s per figure")
        for concurrency in args.concurrency:
            print(f"-- {concurrency} requests in flight")
            for name, (make, per_request) in scenarios(keys).items():
                env.redis.flushdb()
                res = asyncio.run(_drive(url, make, args.seconds, concurrency))
                print(f"{name:26} {res['requests_per_s']:8.1f} req/s {res['requests_per_s'] * per_request:9.0f} "
                      f"items/s  p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  statuses {res['statuses']}")
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(20)
        emulator.terminate()
        emulator.wait(10)
        env.redis.flushdb()


if __name__ == "__main__":
    main()
