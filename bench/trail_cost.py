"""What the trail (worker.trail) costs: single-event throughput, the benchmark's own scenario
(``scenarios.throughput``, one event per message, `pushsync worker -c 2`, PostgreSQL), with the
trail on (the defaults) and off (PUSHSYNC_TRAIL_ENTRIES=0), runs alternating in one session; and
the trail's bytes in Redis: per event of the run (every trail key's MEMORY USAGE over the events)
and per entry of a full trail (one of the run's entries written 100 times, the default PUSHSYNC_TRAIL_ENTRIES).

    python -m bench.trail_cost [--pairs N] [--events N]
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
