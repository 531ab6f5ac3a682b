"""Coalescing's promise, as a property, with the default window (PUSHSYNC_COALESCE_WINDOW 1 s):
once changes to a dataset stop, its newest count accepted reaches every device subscribed to it
within the window plus a bounded delay, whatever came before: duplicate and stale arrivals, late
ones just after a window ended, the store failing transactions (the run defers its messages),
runs killed with their messages (their leases run out), and runs that come late behind a
backlog. And no push ever reaches a device that the pushed identity does not own at send time,
nor carries an older count to a device after a newer one.

The service runs as a worker runs it (``tests/worker/harness.py``): messages published onto
``events``, the runs that take them with the due flushes, the windows in Redis, the store, inline
delivery or a queued batch. Time is the test's clock (windows, leases and retry waits read it), so
that a window ends when the test says and an example is the same on a slow machine. What the test
knows of the service is the contract: which events were sent, which devices exist and how each
token answers; it computes the newest count per dataset itself."""

from __future__ import annotations

import os

import sqlalchemy.exc
from hypothesis import strategies as st

from store import repo
from store.db import engine_for, session_scope
from worker.senders.base import Kind

from . import harness
from .test_isolation import CREDS, DATASETS, IDENTITIES, TOKENS

EXAMPLES = int(os.environ.get("PUSHSYNC_COALESCING_EXAMPLES", "4000"))
POOLS = ("us-east-1:00000000-0000-4000-8000-0000000000c1", "eu-west-1:00000000-0000-4000-8000-0000000000c2")
PLATFORMS = ("GCM", "APNS", "APNS_SANDBOX")
ANSWERS = ("ok", "ok", "ok", "ok", "retry_once", "retry_once", "invalid")
KEYS = [(p, i, d) for p in range(len(POOLS)) for i in range(len(IDENTITIES)) for d in range(len(DATASETS))]

# (a device whose key it names, or a key at random), count, from a device
by_device = st.integers(0, 3).map(lambda n: ("device", n))
event = st.tuples(st.one_of(by_device, by_device, st.integers(0, len(KEYS) - 1).map(lambda n: ("key", n))),
                  st.integers(0, 6), st.booleans())
message = st.tuples(st.just("message"), st.lists(event, min_size=1, max_size=3),
                    st.sampled_from(["now", "now", "later"]))  # later: it waits behind a backlog
STEPS = {
    "message": message,
    "again": st.tuples(st.just("again"), st.integers(0, 20)),  # a producer sends an earlier message again
    "fail": st.tuples(st.just("fail"), st.integers(1, 3)),  # the next transactions raise
    "tick": st.tuples(st.just("tick"), st.sampled_from([0.2, 0.5, 0.9, 1.0, 1.1, 1.5, 3.0])),
    "wait": st.tuples(st.just("wait"), st.sampled_from([31.0, 125.0])),  # past retry waits; past leases
    "kill": st.tuples(st.just("kill")),  # a run takes what waits and dies
    "move": st.tuples(st.just("move"), st.integers(0, 30)),  # a phone changes user
    "retries": st.tuples(st.just("retries")),
}
WEIGHTS = ["message"] * 5 + ["again"] * 2 + ["tick"] * 3 + ["kill"] * 2 + ["fail", "wait", "move", "retries"]
step = st.sampled_from(WEIGHTS).flatmap(lambda kind: STEPS[kind])
scenario = st.fixed_dictionaries({
    "answers": st.fixed_dictionaries({t: st.sampled_from(ANSWERS) for t in TOKENS}),
    # devices: (key's pool, identity, platform, token, datasets)
    "devices": st.lists(st.tuples(st.integers(0, len(POOLS) - 1), st.integers(0, len(IDENTITIES) - 1),
                                  st.sampled_from(PLATFORMS), st.sampled_from(TOKENS),
                                  st.lists(st.sampled_from(DATASETS), min_size=1, max_size=2, unique=True)),
                        min_size=1, max_size=4),
    # a change to start with and one more at the end, whatever comes between
    "steps": st.tuples(message, st.lists(step, max_size=12), message).map(lambda t: [t[0], *t[1], t[2]]),
})


class Player:
    def __init__(self, run: harness.Run, data: dict):
        self.run, self.data = run, data
        self.engine = engine_for(run.url)
        self.sent: list[tuple[dict, list]] = []  # messages published: (events, their keys)
        self.failures = 0
        self.in_runs = False
        self.seen_retry: set = set()
        self.moved: set[str] = set()
        self.owner: dict[str, tuple] = {}  # device id -> (pool, identity, platform, token)
        self.counts: dict[tuple, int] = {}  # key -> the newest count sent
        self.origins: dict[tuple, set] = {}  # (key, count) -> devices that sent it
        self.flags = {"killed": 0, "held": 0, "flushed": 0}
        run.answer = self.answer
        self._real_scope = run.store_scope  # the store's own (each example's player wraps that one)
        run.ctx.session_scope = self.scope

    def scope(self):
        if self.failures and self.in_runs:  # the ingest runs' transactions: deliveries have their own tests
            self.failures -= 1
            raise sqlalchemy.exc.OperationalError("BEGIN", {}, ConnectionResetError("the store went away"))
        return self._real_scope()

    def answer(self, push: harness.Push) -> Kind:
        # at send time the device is the pushed identity's, in the pushed pool, on its platform
        pool, identity, platform, token = self.owner[push.device_id]
        assert (push.pool, push.data["identityPoolId"], push.data["identityId"], push.platform, push.token) == \
            (pool, pool, identity, platform, token), "a push reached a device its identity does not own"
        a = self.data["answers"][push.token]
        if a == "retry_once":
            key = (push.device_id, push.data["datasetName"], push.data["syncCount"])
            if key not in self.seen_retry:
                self.seen_retry.add(key)
                return Kind.RETRY
            return Kind.OK
        return Kind.OK if a == "ok" else Kind.TOKEN_INVALID

    def setup(self):
        rows = [(POOLS[p], IDENTITIES[i], plat, tok, ds) for p, i, plat, tok, ds in self.data["devices"]]
        with session_scope(self.engine) as s:
            ids = repo.import_devices(s, rows)
        self.ids = list(dict.fromkeys(ids))
        with engine_for(self.run.url).connect() as conn:
            from sqlalchemy import text

            for dev, pool, ident, plat, tok in conn.execute(text(
                    "SELECT id, pool_id, identity_id, platform, token FROM devices")):
                self.owner[dev] = (pool, ident, plat, tok)

    def _runs(self):
        self.in_runs = True
        try:
            total = self.run.runs()
        finally:
            self.in_runs = False
            self.failures = 0  # failures are for the next runs only
        self.flags["held"] += total.get("held", 0)
        self.flags["flushed"] += total.get("window_flushed", 0)
        while self.run.queued:
            self.run.deliver(self.run.queued.pop(0))

    def message(self, _kind, events, when):
        body = []
        for (how, k), n, from_device in events:
            if how == "device":  # the key of a device of the set-up (most events reach someone)
                p, i, _plat, _tok, datasets = self.data["devices"][k % len(self.data["devices"])]
                pool, ident, ds = POOLS[p], IDENTITIES[i], datasets[n % len(datasets)]
            else:
                pool, ident, ds = POOLS[KEYS[k][0]], IDENTITIES[KEYS[k][1]], DATASETS[KEYS[k][2]]
            origin = self.ids[n % len(self.ids)] if from_device else None
            body.append({"identityPoolId": pool, "identityId": ident, "datasetName": ds, "syncCount": n,
                         **({"originDeviceId": origin} if origin else {})})
            self.counts[(pool, ident, ds)] = max(n, self.counts.get((pool, ident, ds), -1))
            self.origins.setdefault(((pool, ident, ds), n), set()).add(origin)
        self.sent.append(body)
        self.run.publish(body)
        if when == "now":
            self._runs()

    def again(self, _kind, i):
        if self.sent:
            self.run.publish(self.sent[i % len(self.sent)])  # its events are known already
            self._runs()

    def fail(self, _kind, n):
        self.failures = n

    def tick(self, _kind, seconds):
        self.run.clock.advance(seconds)
        self._runs()

    wait = tick

    def kill(self, _kind):
        taken = self.run.ctx.intake.take(self.run.ctx.settings.ingest_batch_max, 500)
        self.flags["killed"] += bool(taken.messages or taken.flushes)

    def move(self, _kind, n):
        dev = self.ids[n % len(self.ids)]
        pool, ident, plat, tok = self.owner[dev]
        other = IDENTITIES[1 - IDENTITIES.index(ident)]
        with session_scope(self.engine) as s:
            repo.register_device(s, pool, other, plat, tok)
        self.owner[dev] = (pool, other, plat, tok)
        self.moved.add(dev)

    def retries(self, _kind="retries"):
        while self.run.retries:
            self.run.deliver(self.run.retries.pop(0))

    def finish(self):
        """Changes stop; time passes past every window, retry wait and lease; runs run until no work."""
        self.failures = 0
        for _ in range(4):
            self.run.clock.advance(130)
            self._runs()
            self.run.drain()

    def check(self):
        deferred = self.run.ctx.redis.hlen("pushsync:inflight:attempts")
        assert deferred == 0, "messages still wait to be taken again"
        got: dict[tuple, list[int]] = {}
        for p in self.run.delivered:
            got.setdefault((p.device_id, p.data["identityId"], p.data["datasetName"]), []).append(
                int(p.data["syncCount"]))
        for key, counts in got.items():
            assert counts == sorted(counts), f"{key} got an older count after a newer one: {counts}"
        for p, _i, plat, tok, datasets in self.data["devices"]:
            dev = next(d for d, o in self.owner.items() if o[3] == tok and o[2] == plat and o[0] == POOLS[p])
            if dev in self.moved or self.data["answers"][tok] == "invalid":
                continue
            pool, ident = self.owner[dev][:2]
            for ds in datasets:
                newest = self.counts.get((pool, ident, ds))
                if newest is None or dev in self.origins.get(((pool, ident, ds), newest), ()):
                    continue
                if ds not in self._subscriptions(dev):
                    continue  # a token listed twice: the later row moved it
                assert newest in got.get((dev, ident, ds), []), \
                    f"device {dev} ({plat}) never got {ds}'s newest count {newest}; it got {got.get((dev, ident, ds))}"

    def _subscriptions(self, dev) -> set:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return set(conn.execute(text("SELECT dataset_name FROM subscriptions WHERE device_id = :d"),
                                    {"d": dev}).scalars())


def _prepare(run: harness.Run) -> dict:
    with session_scope(engine_for(run.url)) as s:
        for pool in POOLS:
            repo.upsert_pool(s, pool, fcm_service_account=CREDS["GCM"], apns=CREDS["APNS"])
    return {}


def _example(run: harness.Run, counts: dict, data: dict) -> None:
    run.reset(keep_pools=True)
    player = Player(run, data)
    player.setup()
    for s in data["steps"]:
        getattr(player, s[0])(*s)
    player.finish()
    player.check()
    counts["flushed"] = counts.get("flushed", 0) + bool(player.flags["flushed"])
    counts["failed"] = counts.get("failed", 0) + any(s[0] == "fail" for s in data["steps"])
    counts["killed"] = counts.get("killed", 0) + bool(player.flags["killed"])
    counts["pushed"] = counts.get("pushed", 0) + bool(run.delivered)


def _child(seed_value: int, examples: int, redis_db: int) -> dict:
    return harness.run_examples(seed_value, examples, {"data": scenario}, _example, _prepare, redis_db=redis_db,
                                clock=harness.Clock(), PUSHSYNC_COALESCE_WINDOW="1",
                                PUSHSYNC_INLINE_DELIVERY_MAX="2000")


def test_the_newest_count_reaches_every_subscribed_device_with_the_default_window():
    results = harness.run_in_processes(_child, EXAMPLES)
    examples = sum(r["examples"] for r in results)
    totals = {k: sum(r.get(k, 0) for r in results) for k in ("flushed", "failed", "killed", "pushed")}
    print(f"{examples} examples: {totals}")
    assert examples >= EXAMPLES
    # not a vacuous pass: the interleavings that matter happened often
    assert totals["pushed"] >= examples // 2 and totals["flushed"] >= examples // 10
    assert totals["failed"] >= examples // 10 and totals["killed"] >= examples // 30
