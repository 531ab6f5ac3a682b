"""The benchmark's plots: throughput against worker processes, and the latency CDF."""

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
