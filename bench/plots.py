"""The benchmark's plots: throughput against worker processes, the latency CDF, the CPU budget."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def plot(res: dict, out: Path) -> None:
    workers = res.get("workers", {})
    if workers:
        xs = sorted(int(c) for c in workers)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [workers[str(c)]["pushes_per_s"] for c in xs], marker="o", label="pushsync, one event a message")
        if "naive" in res:
            ax.axhline(res["naive"]["pushes_per_s"], color="grey", linestyle="--", label="one task per push (naive)")
        ax.set_xlabel("worker pool processes (-c)")
        ax.set_ylabel("pushes/s accepted by the sink")
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.set_title("Throughput on 2 cores (sink included)")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
    if res.get("budget"):
        _budget(res["budget"], out)
    runs = [(res[k]["rate"], res[k]["cdf_ms"]) for k in ("latency", "latency_half") if res.get(k, {}).get("cdf_ms")]
    if runs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for rate, lat in runs:
            ax.plot(lat, [i / (len(lat) - 1) for i in range(len(lat))], label=f"{rate:,} events/s")
        ax.legend()
        ax.set_xscale("log")
        ax.set_xlabel("publish to push accepted (ms, log scale)")
        ax.set_ylabel("fraction of pushes")
        ax.set_title("Latency CDF, one event per message, 5 pushes each")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=100)
        plt.close(fig)


def _budget(budget: dict, out: Path) -> None:
    """One bar a stage, one colour a transport: where a push's CPU goes."""
    from bench.budget import ROWS

    names = list(budget)
    labels = [label.split(":")[0].split(" (")[0] for _key, label in ROWS]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    height = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [k + i * height for k in range(len(ROWS))]
        ax.barh(ys, [budget[name]["us_per_push"][key] for key, _ in ROWS], height=height,
                label=f"{name}: {budget[name]['us_per_push']['worker_total']:.0f} µs/push in the worker")
    ax.set_yticks([k + height * (len(names) - 1) / 2 for k in range(len(ROWS))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("µs of CPU per push")
    ax.set_title("CPU per push, stage by stage (one event per message)")
    ax.legend(loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "budget.png", dpi=100)
    plt.close(fig)
