"""What a Redis failover can lose: writes the master acknowledged but its replica never got.

    python -m bench.failover [--rounds 5] [--writers 4] [--seconds 2] [--stall 2]

A master and a replica of its own (free ports, temporary directories); ``--writers`` threads
push numbered items onto a list as fast as they can, one RPUSH per item as a producer's publish
is; after ``--seconds`` the master is SIGKILLed and the figure is how many acknowledged items the
replica lacks. Run with asynchronous replication (Redis's only kind), with the master's
``min-replicas-to-write 1`` / ``min-replicas-max-lag 1``, and with ``WAIT 1 1000`` after each push
(what a producer would do to know a replica has its write); first with the replica in step, then
with the replica stopped for ``--stall`` seconds before the kill (a lagging replica).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import threading
import time

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp(), *extra], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def one_round(mode: str, writers: int, seconds: float, stall: float) -> tuple[int, int]:
    """Returns (acknowledged, lost). ``stall``: the replica is stopped (SIGSTOP) for that long
    just before the kill, as a replica behind a slow or broken link is."""
    import signal

    a, b = _free_port(), _free_port()
    extra = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1") if mode == "min-replicas" else ()
    master = _server(a, *extra)
    replica = _server(b, "--replicaof", "127.0.0.1", str(a))
    while redis.Redis(port=b).info("replication").get("master_link_status") != "up":
        time.sleep(0.05)
    acked: list[list[str]] = [[] for _ in range(writers)]
    stop = threading.Event()

    def write(k: int) -> None:
        client = redis.Redis(port=a, socket_timeout=2)
        i = 0
        while not stop.is_set():
            item = f"{k}:{i}"
            try:
                client.rpush("events", item)
                if mode == "wait" and client.execute_command("WAIT", 1, 1000) < 1:
                    continue  # no replica has it: the producer was not told "done"
            except redis.ResponseError:  # NOREPLICAS: refused, so not acknowledged
                time.sleep(0.01)
                continue
            except redis.RedisError:
                return
            acked[k].append(item)
            i += 1

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    if stall:
        replica.send_signal(signal.SIGSTOP)
        time.sleep(stall)
    master.kill()
    master.wait(10)
    stop.set()
    if stall:
        replica.send_signal(signal.SIGCONT)
    for t in threads:
        t.join(10)
    have = {x.decode() for x in redis.Redis(port=b).lrange("events", 0, -1)}
    replica.kill()
    replica.wait(10)
    total = sum(len(x) for x in acked)
    return total, sum(1 for x in acked for item in x if item not in have)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--stall", type=float, default=2.0)
    args = ap.parse_args()
    for stall in (0.0, args.stall):
        when = f"stopped for {stall:.1f} s before" if stall else "in step at"
        print(f"-- replica {when} the kill")
        for mode in ("async", "min-replicas", "wait"):
            results = [one_round(mode, args.writers, args.seconds, stall) for _ in range(args.rounds)]
            lost = [lo for _, lo in results]
            rate = sum(ac for ac, _ in results) / (args.rounds * (args.seconds + stall))
            print(f"{mode:<13} {rate:>8.0f} acknowledged writes/s; acknowledged but lost, per round: "
                  f"{', '.join(map(str, lost))}")


if __name__ == "__main__":
    main()
