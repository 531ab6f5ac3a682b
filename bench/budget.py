"""The CPU budget per push: microseconds of CPU for each stage of the path, one event per message.

A worker (``-c 2``) runs with PUSHSYNC_STAGE_DIR set: each pool process adds up the CPU of each
stage (``worker/stages.py``) and of its sending loop's thread (the transport). After a warm-up, the
figures of every process are read before and after ``events`` events (one per message, 5 pushes
each) go through; the differences over the pushes the sink accepted are the budget. Beside the
stages: the rest of the pool processes (Celery's task protocol, kombu, threads), the worker's main
process (Celery's consumer, the dispatcher, the supervisor), and, apart, Redis, PostgreSQL and the
sink (nginx), from /proc. Runs once with the reference transports (aioapns, aiohttp) and once with
the default (libcurl), so the table is before and after.

    python -m bench.run --only budget
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.env import PLATFORMS, Env
from bench.scenarios import PRODUCE_ONE
from bench.sink import Sink
from worker.stages import STAGES

TICK = os.sysconf("SC_CLK_TCK")
# (name in the table, what it is); a stage name of worker/stages.py, or a key computed below
ROWS = [
    ("take", "take: messages off the queue under a lease (Redis script)"),
    ("read", "read: messages parsed and typed"),
    ("window", "window: coalescing windows entered (Redis script)"),
    ("commit", "commit: counts compared and set, subscriptions resolved, outbox (store transaction)"),
    ("load", "load: the send-time read of tokens and newest counts (store)"),
    ("payload", "payload: the pushes to send built"),
    ("send_wait", "hand-off to the sending loop and back"),
    ("transport", "transport: the sending loop's thread (tokens, headers, bodies, TLS, HTTP/2, answers)"),
    ("record", "record: outcomes written, outbox settled (store)"),
    ("queue", "queue: run triggers and delivery batches published"),
    ("ack", "ack: messages released from their lease (Redis)"),
    ("metrics", "metrics and log lines"),
    ("pool_rest", "rest of the pool processes (Celery's task protocol, kombu, threads)"),
    ("main", "the worker's main process (Celery's consumer, dispatcher, supervisor)"),
    ("redis", "Redis server"),
    ("postgres", "PostgreSQL server"),
    ("sink", "sink (nginx, HTTP/2 and TLS)"),
]
# one row for every stage the worker counts: worker/stages.py names them
assert set(STAGES) <= {name for name, _ in ROWS}, set(STAGES) - {name for name, _ in ROWS}
WORKER_ROWS = [name for name, _ in ROWS if name not in ("redis", "postgres", "sink")]
TRANSPORTS = {"reference": {"PUSHSYNC_APNS_TRANSPORT": "aioapns", "PUSHSYNC_FCM_TRANSPORT": "aiohttp"},
              "curl": {"PUSHSYNC_APNS_TRANSPORT": "curl", "PUSHSYNC_FCM_TRANSPORT": "curl"}}


def _cpu(pid: int) -> float:
    """Seconds of CPU (user and system) of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _named(comm: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def _worker_pids(env: Env) -> list[int]:
    pids = []
    for p in env.workers:
        out = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
        pids += [int(x) for x in out]
    return pids


def _snapshot(env: Env, stage_dir: Path) -> dict:
    files = {}
    for f in stage_dir.glob("*.json"):
        try:
            files[int(f.stem)] = json.loads(f.read_text())
        except (OSError, ValueError):
            pass
    return {"files": files, "workers": {pid: _cpu(pid) for pid in _worker_pids(env)},
            "redis": sum(_cpu(p) for p in _named("redis-server")),
            "postgres": sum(_cpu(p) for p in _named("postgres")),
            "sink": sum(_cpu(p) for p in _named("nginx"))}


def _budget(before: dict, after: dict, pushes: int) -> dict:
    """µs of CPU per push for each row."""
    per = {name: 0.0 for name, _ in ROWS}
    pool_total = 0.0
    # the pool processes: those that ran stages (the main process writes a file too, of nothing)
    pools = {pid for pid, fig in after["files"].items() if fig["stages"] and pid in after["workers"]}
    for pid in pools:
        fig = after["files"][pid]
        old = before["files"].get(pid, {"stages": {}, "transport": 0.0})
        for name, spent in fig["stages"].items():
            per[name] = per.get(name, 0.0) + spent - old["stages"].get(name, 0.0)
        per["transport"] += fig["transport"] - old["transport"]
        pool_total += after["workers"][pid] - before["workers"].get(pid, 0.0)
    per["pool_rest"] = pool_total - sum(per[n] for n in WORKER_ROWS if n not in ("pool_rest", "main"))
    per["main"] = sum(cpu - before["workers"].get(pid, 0.0) for pid, cpu in after["workers"].items()
                      if pid not in pools)
    for name in ("redis", "postgres", "sink"):
        per[name] = after[name] - before[name]
    out = {name: round(max(per[name], 0.0) / pushes * 1e6, 1) for name, _ in ROWS}
    out["worker_total"] = round(sum(out[n] for n in WORKER_ROWS), 1)
    out["all_total"] = round(out["worker_total"] + out["redis"] + out["postgres"] + out["sink"], 1)
    return out


def run_one(sink: Sink, tmp: Path, *, events: int, db: str, transport: str, extra: dict | None = None) -> dict:
    stage_dir = tmp / "stages"
    env = Env(tmp, sink.info, db=db,
              extra={"PUSHSYNC_STAGE_DIR": str(stage_dir), **TRANSPORTS[transport], **(extra or {})})
    try:
        warm = 200
        env.import_devices(range(events + warm))
        env.start_worker(2)
        sink.reset()
        env.python(PRODUCE_ONE, json.dumps([list(range(events, events + warm)), 1]))
        sink.wait_for(warm * len(PLATFORMS), timeout=300)
        time.sleep(2.5)  # every pool process has written its figures since
        before = _snapshot(env, stage_dir)
        sink.reset()
        started = time.monotonic()
        env.python(PRODUCE_ONE, json.dumps([list(range(events)), 1]))
        pushes = len(sink.wait_for(events * len(PLATFORMS), timeout=900))
        seconds = time.monotonic() - started
        time.sleep(2.5)
        after = _snapshot(env, stage_dir)
        return {"transport": transport, "events": events, "pushes": pushes, "seconds": round(seconds, 2),
                "us_per_push": _budget(before, after, pushes)}
    finally:
        env.close()


def budget(sink: Sink, tmp: Path, *, events: int, db: str) -> dict:
    return {t: run_one(sink, tmp / t, events=events, db=db, transport=t) for t in TRANSPORTS}


def table(res: dict) -> str:
    """The markdown table of a budget result: one row a stage, one column a transport."""
    names = list(res)
    rows = ["| stage | " + " | ".join(f"{n} (µs/push)" for n in names) + " |",
            "|---|" + "---|" * len(names)]
    for key, label in ROWS:
        rows.append(f"| {label} | " + " | ".join(f"{res[n]['us_per_push'][key]:.1f}" for n in names) + " |")
    rows.append("| **the worker, all its processes** | " +
                " | ".join(f"**{res[n]['us_per_push']['worker_total']:.1f}**" for n in names) + " |")
    rows.append("| **everything on the machine** | " +
                " | ".join(f"**{res[n]['us_per_push']['all_total']:.1f}**" for n in names) + " |")
    return "\n".join(rows)
