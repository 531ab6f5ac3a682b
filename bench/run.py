"""The benchmark: `make bench` (or `python -m bench.run [--quick] [--only NAME ...]`).

Starts an nginx HTTP/2 sink (bench/sink.py), runs each scenario against it through pushsync's
own commands and client, writes bench/results/results.json, results.md and two PNG plots, and
prints the CPU budget's table (bench/budget.py) and, last, one line:

    pushes_per_s=N single_pushes_per_s=N p99_ms=N naive_ratio=N ceiling_ratio=N worker_cpu_us_per_push=N
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench import baselines, budget, fairness, quota, scenarios
from bench.sink import Sink

RESULTS = Path(__file__).resolve().parent / "results"


def _sizes(quick: bool) -> dict:
    if quick:
        return {"events": 2000, "workers": (1, 2), "latency_s": 5, "store": (1000, 10_000), "memory_s": 30,
                "memory_rate": 200, "queued": 20_000, "naive": 300, "budget": 2000,
                "fairness": (20_000, 10), "quota": 20_000}
    return {"events": 20_000, "workers": (1, 2, 4), "latency_s": 10, "store": (1000, 100_000, 1_000_000),
            "memory_s": 300, "memory_rate": 500, "queued": 1_000_000, "naive": 2000, "budget": 10_000,
            "fairness": (200_000, 30), "quota": 1_000_000}


def run(only: set[str] | None, quick: bool, db: str) -> dict:
    size = _sizes(quick)
    tmp = Path(tempfile.mkdtemp(prefix="pushsync-bench-"))
    res: dict = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                 "quick": quick, "store": db, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    want = (lambda name: only is None or name in only)  # noqa: E731
    try:
        with Sink(tmp / "sink") as sink:
            if want("ceiling"):
                res["ceiling"] = _show("ceiling", baselines.ceiling(sink, tmp / "ceiling"))
            if want("single"):
                res["workers"] = {}
                for c in size["workers"]:
                    out = scenarios.throughput(sink, tmp / f"single-{c}", events=size["events"], concurrency=c,
                                               many=False, db=db)
                    res["workers"][str(c)] = _show(f"single, -c {c}", out)
                res["single"] = res["workers"].get("2") or next(iter(res["workers"].values()))
            if want("batched"):
                res["batched"] = _show("batched", scenarios.throughput(sink, tmp / "batched", events=size["events"],
                                                                       concurrency=2, many=True, db=db))
            if want("latency"):
                res["latency"] = _show("latency", scenarios.latency(sink, tmp / "latency", rate=1000,
                                                                    seconds=size["latency_s"], db=db))
                # and at half that rate, to show what the latency is when the workers are not saturated
                res["latency_half"] = _show("latency, 500/s", scenarios.latency(
                    sink, tmp / "latency-half", rate=500, seconds=size["latency_s"], db=db))
            if want("budget"):
                res["budget"] = _show("budget", budget.budget(sink, tmp / "budget", events=size["budget"], db=db))
            if want("coalescing"):
                res["coalescing"] = _show("coalescing", scenarios.coalescing(sink, tmp / "coalescing", db=db))
            if want("fairness"):
                flood, seconds = size["fairness"]
                res["fairness"] = _show("fairness", fairness.fairness(sink, tmp / "fairness", flood=flood,
                                                                      seconds=seconds, db=db))
            if want("quota"):  # the Python emulator with a quota, not the sink
                res["quota"] = _show("quota", quota.quota(tmp / "quota", pushes=size["quota"], db=db))
            if want("naive"):
                res["naive"] = _show("naive", baselines.naive(sink, tmp / "naive", pushes=size["naive"]))
            if want("store"):
                res["store_scale"] = _show("store", baselines.store_scale(sink, tmp / "store", sizes=size["store"]))
            if want("memory"):
                res["memory"] = _show("memory", baselines.memory(sink, tmp / "memory", seconds=size["memory_s"],
                                                                 rate=size["memory_rate"], queued=size["queued"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _show(name: str, figures: dict) -> dict:
    brief = {k: v for k, v in figures.items() if k not in ("cdf_ms", "samples", "with_flood_samples")}
    print(f"[{name}] {json.dumps(brief)}", flush=True)
    return figures


def summary(res: dict) -> str:
    single = res.get("single", {}).get("pushes_per_s")
    batched = res.get("batched", {}).get("pushes_per_s")
    best = max(x for x in (single, batched, 0) if x is not None) or None
    naive = res.get("naive", {}).get("pushes_per_s")
    ceiling = res.get("ceiling", {}).get("requests_per_s")
    p99 = res.get("latency", {}).get("p99_ms")

    def ratio(a, b):
        return f"{a / b:.3g}" if a and b else "n/a"

    p99 = "n/a" if p99 is None else p99
    cpu = res.get("budget", {}).get("curl", {}).get("us_per_push", {}).get("worker_total", "n/a")
    return (f"pushes_per_s={best or 'n/a'} single_pushes_per_s={single or 'n/a'} p99_ms={p99} "
            f"naive_ratio={ratio(single, naive)} ceiling_ratio={ratio(single, ceiling)} worker_cpu_us_per_push={cpu}")


def write(res: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "results.md").write_text(markdown(res))
    try:
        from bench.plots import plot
    except ImportError as exc:  # matplotlib is the bench extra's
        print(f"no plots: {exc}")
    else:
        plot(res, RESULTS)


def _budget_rows(res: dict) -> list[str]:
    rows = []
    if "fairness" in res:
        f = res["fairness"]
        rows.append(f"| fairness: pool B's event a second, alone and while pool A publishes {f['flood_events']:,} "
                    f"events | p99 {f['alone']['p99_ms']} ms alone, {f['with_flood']['p99_ms']} ms during the flood "
                    f"({f['p99_ratio']}x); p50 {f['alone']['p50_ms']} / {f['with_flood']['p50_ms']} ms |")
    if "quota" in res:
        q = res["quota"]
        rows.append(f"| FCM budget: {q['pushes']:,} pushes, budget and emulator quota {q['quota_per_minute']:,}/min | "
                    f"{q['pushes_per_minute']:,} pushes/min, {q['refused_429']:,} refused ({q['refused_pct']} %), "
                    f"{q['dead_letters']} dead letters, most in any 60 s {q['most_accepted_in_60s']:,} |")
    return rows


def markdown(res: dict) -> str:
    rows = ["| scenario | figure |", "|---|---|"]
    for c, w in res.get("workers", {}).items():
        rows.append(f"| single, one event per message, `-c {c}` | {w['pushes_per_s']:,} pushes/s "
                    f"({w['events']:,} events, {w['pushes']:,} pushes in {w['seconds']} s); producer "
                    f"{w['producer_us']} µs per `publish` |")
    if "batched" in res:
        b = res["batched"]
        rows.append(f"| batched, `publish_many` (100 a message), `-c 2` | {b['pushes_per_s']:,} pushes/s; "
                    f"producer {b['producer_us']} µs per event |")
    for lat in (res[k] for k in ("latency", "latency_half") if k in res):
        rows.append(f"| latency, {lat['rate']:,} events/s one per message, publish to push accepted | "
                    f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms "
                    f"({lat['samples']:,} APNs pushes) |")
    for size, s in res.get("store_scale", {}).items():
        rows.append(f"| store scale: resolve + sync counts, {int(size):,} devices, {s['events']} events | "
                    f"median {s['median_ms']} ms, p90 {s['p90_ms']} ms |")
    if "memory" in res:
        m = res["memory"]
        rows.append(f"| memory: worker RSS after warm-up over the run | {m['steady']['after_warmup_min_mb']}–"
                    f"{m['steady']['after_warmup_max_mb']} MiB ({m['steady']['growth_pct']} %) |")
        if "stalled" in m:
            st = m["stalled"]
            rows.append(f"| memory: the sink stalled {st['stall_s']} s under the same load | {st['rss_mb_before']} MiB "
                        f"before, at most {st['rss_mb_max_stalled']} MiB stalled, {st['rss_mb_max_after']} MiB after "
                        f"({st['growth_pct']:+} %) |")
        rows.append(f"| memory: with {m['backlog']['queued']:,} events waiting | "
                    f"{m['backlog']['rss_mb_after_60s']} MiB after 60 s |")
    if "coalescing" in res:
        co = res["coalescing"]
        rows.append(f"| coalescing: one dataset changed {co['changes']:,} times in {co['seconds']} s | "
                    f"{co['pushes_per_device']} pushes per device |")
    rows += _budget_rows(res)
    if "naive" in res:
        rows.append(f"| baseline: one Celery task per push, fresh client | {res['naive']['pushes_per_s']:,} pushes/s |")
    if "ceiling" in res:
        rows.append(f"| baseline: h2load against the sink | {res['ceiling']['requests_per_s']:,} requests/s |")
    out = "\n".join(rows) + "\n"
    if "budget" in res:
        out += ("\nCPU per push, stage by stage (one event per message, `-c 2`):\n\n"
                + budget.table(res["budget"]) + "\n")
    return out + "\n`" + summary(res) + "`\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a check that it all runs")
    ap.add_argument("--only", nargs="*",
                    help="scenarios: ceiling single batched latency budget coalescing fairness quota naive store "
                         "memory")
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    args = ap.parse_args()
    res = run(set(args.only) if args.only else None, args.quick, args.db)
    if args.only and (RESULTS / "results.json").exists():
        # a partial run replaces its own scenarios and keeps the others' figures
        old = json.loads((RESULTS / "results.json").read_text())
        if old.get("quick") == args.quick:
            res = {**old, **{k: v for k, v in res.items() if k not in ("started",)},
                   "rerun": sorted(set(old.get("rerun", [])) | set(args.only))}
    write(res)
    if "budget" in res:
        print(budget.table(res["budget"]))
    print(summary(res))


if __name__ == "__main__":
    main()
