"""What the trail (worker.trail) costs: single-event throughput, the benchmark's own scenario
(``scenarios.throughput``, one event per message, `pushsync worker -c 2`, PostgreSQL), with the
trail on (the defaults) and off (PUSHSYNC_TRAIL_ENTRIES=0), runs alternating in one session; and
the trail's bytes in Redis: per event of the run (every trail key's MEMORY USAGE over the events)
and per entry of a full trail (one of the run's entries written 100 times, the default PUSHSYNC_TRAIL_ENTRIES).

    python -m bench.trail_cost [--pairs N] [--events N]
    python -m bench.trail_cost --cpu [--pairs N] [--events N]

With --cpu: the CPU each push costs (µs, ``bench.budget``: the worker's processes, Redis,
PostgreSQL), trail on and off alternating; CPU per push moves far less than throughput on a
shared machine, where another tenant's load slows the run but does not add to its CPU time.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from bench import scenarios
from bench.env import Env
from bench.sink import Sink
from worker import trail

BYTES: dict = {}


class Measured(Env):
    """The scenario's world, whose trail keys are measured before it goes."""

    def close(self) -> None:
        keys = list(self.redis.scan_iter(match=trail.TRAIL + "*", count=1000))
        if keys and not BYTES:
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=0)
            total = sum(pipe.execute())
            entry = self.redis.lindex(keys[0], 0)
            BYTES.update({"trail_keys": len(keys), "bytes_per_event": round(total / len(keys), 1),
                          "entry_bytes": len(entry)})
            full = trail.TRAIL + "bench/full"
            tr = trail.Trail()
            tr.entries, tr.ttl = 100, 7 * 86400
            for _ in range(tr.entries):
                tr.lines[full] = [entry.decode().partition("\n")[2]]
                pipe = self.redis.pipeline(transaction=False)
                tr.write(pipe)
                pipe.execute()
            BYTES["full_trail_bytes"] = self.redis.memory_usage(full, samples=0)
            BYTES["bytes_per_entry_full"] = round(BYTES["full_trail_bytes"] / self.redis.llen(full), 1)
        super().close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--cpu", action="store_true", help="CPU per push (bench.budget) instead of throughput")
    args = ap.parse_args()
    if args.cpu:
        return cpu(args.pairs, args.events)
    tmp = Path(tempfile.mkdtemp(prefix="pushsync-trail-cost-"))
    rates: dict[str, list[int]] = {"on": [], "off": []}
    try:
        with Sink(tmp / "sink") as sink:
            for i in range(args.pairs):
                for label in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    extra = {} if label == "on" else {"PUSHSYNC_TRAIL_ENTRIES": "0"}
                    scenarios.Env = functools.partial(Measured, extra=extra)
                    out = scenarios.throughput(sink, tmp / f"{label}-{i}", events=args.events, concurrency=2,
                                               many=False, db="postgresql")
                    rates[label].append(out["pushes_per_s"])
                    print(f"[{label} {i}] {json.dumps(out)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(json.dumps({"on": rates["on"], "off": rates["off"], "median_on": on, "median_off": off,
                      "ratio": round(on / off, 4), **BYTES}))


def cpu(pairs: int, events: int) -> None:
    from bench.budget import run_one

    tmp = Path(tempfile.mkdtemp(prefix="pushsync-trail-cpu-"))
    got: dict[str, list[dict]] = {"on": [], "off": []}
    try:
        with Sink(tmp / "sink") as sink:
            for i in range(pairs):
                for label in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    extra = {} if label == "on" else {"PUSHSYNC_TRAIL_ENTRIES": "0"}
                    out = run_one(sink, tmp / f"{label}-{i}", events=events, db="postgresql", transport="curl",
                                  extra=extra)
                    us = out["us_per_push"]
                    got[label].append({k: us[k] for k in ("worker_total", "redis", "postgres", "all_total")})
                    print(f"[{label} {i}] {json.dumps(got[label][-1])} ({out['seconds']} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for key in ("worker_total", "redis", "all_total"):
        on = statistics.median(r[key] for r in got["on"])
        off = statistics.median(r[key] for r in got["off"])
        summary[key] = {"on": on, "off": off, "ratio": round(on / off, 4)}
    print(json.dumps({"us_per_push_median": summary, "runs": got}))


if __name__ == "__main__":
    main()
