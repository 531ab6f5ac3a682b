"""Isolation, as a property: over random pools, credentials, identities, devices on every
platform, subscriptions, tokens that move between identities, unsubscribes, unregisters,
answers that ask for a retry or end a token, and sequences of change events, the set of
(pool, platform, token, identity, dataset, sync count) that reached the sender equals what an
independent model of the service computes; and every push went out with its own pool's
credentials.

The service runs as a worker runs it (``tests/worker/harness.py``): the ingest task's body, the
fan-out, inline delivery or a queued batch through the deliver task, retries later, a real
SQLite store, a real Redis. Registrations go through the repository functions the CLI calls.
The model below shares no code with the service."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from store import repo
from store.db import engine_for, session_scope
from worker.senders.base import Kind

from . import harness

POOLS = ("us-east-1:00000000-0000-4000-8000-00000000000a", "eu-west-1:00000000-0000-4000-8000-00000000000b")
IDENTITIES = ("us-east-1:00000000-0000-4000-8000-000000000001", "us-east-1:00000000-0000-4000-8000-000000000002")
PLATFORMS = ("GCM", "APNS", "APNS_SANDBOX")
TOKENS = ("aa01", "bb02", "cc03")
DATASETS = ("notes", "photos")
# how the push service answers a token: kept per token for the whole example
ANSWERS = ("ok", "ok", "retry_once", "retry_once", "invalid", "permanent")
EXAMPLES = int(os.environ.get("PUSHSYNC_PROPERTY_EXAMPLES", "10000"))

CREDS = {"GCM": {"type": "service_account", "project_id": "p", "private_key": "k", "client_email": "e",
                 "token_uri": "https://t"},
         "APNS": {"key": "PEM", "key_id": "K", "team_id": "T", "topic": "t"}}

pool_i = st.integers(0, len(POOLS) - 1)
ident_i = st.integers(0, len(IDENTITIES) - 1)
register = st.tuples(st.just("register"), pool_i, ident_i, st.sampled_from(PLATFORMS), st.sampled_from(TOKENS))
# mostly by the device's own identity (None), sometimes by another one, which must be refused
subscribe = st.tuples(st.just("subscribe"), st.integers(0, 30), st.one_of(st.none(), st.none(), ident_i),
                      st.sampled_from(DATASETS))
# an event names a (pool, identity) at random or, more often, the one of a start-up registration
# (which may have moved since): most events then reach someone
event = st.tuples(pool_i, ident_i, st.sampled_from(DATASETS), st.integers(0, 6),
                  st.one_of(st.none(), st.none(), st.integers(0, 30)), st.one_of(st.none(), st.integers(0, 9)))
message = st.tuples(st.just("message"), st.lists(event, min_size=1, max_size=4), st.booleans())
KINDS = {
    "register": register, "subscribe": subscribe, "message": message,
    "unsubscribe": st.tuples(st.just("unsubscribe"), st.integers(0, 30), st.sampled_from(DATASETS)),
    "unregister": st.tuples(st.just("unregister"), st.integers(0, 30)),
    "retries": st.tuples(st.just("retries")),
    # the phone changes user: its token registers under the other identity, whose app may
    # subscribe to the same datasets at once (what a push still in flight must not reach)
    "move": st.tuples(st.just("move"), st.integers(0, 30), st.booleans()),
}
WEIGHTS = (["register"] * 2 + ["subscribe"] * 3 + ["message"] * 4 + ["move"] * 2
           + ["unsubscribe", "unregister", "retries", "retries"])
op = st.sampled_from(WEIGHTS).flatmap(lambda kind: KINDS[kind])
# a start that has devices subscribed, so that most examples push something
setup = st.lists(st.tuples(register, st.lists(st.sampled_from(DATASETS), min_size=1, max_size=2, unique=True)),
                 min_size=1, max_size=3)
scenario = st.fixed_dictionaries({
    "creds": st.tuples(*[st.sampled_from([("GCM", "APNS"), ("GCM", "APNS"), ("GCM",), ("APNS",), ()])
                         for _ in POOLS]),
    "answers": st.fixed_dictionaries({t: st.sampled_from(ANSWERS) for t in TOKENS}),
    "setup": setup,
    "ops": st.lists(op, max_size=8),
    "finale": st.lists(message, min_size=1, max_size=1),
})


class Model:
    """What the service promises, from the contract alone."""

    def __init__(self, creds, answers):
        self.creds = creds  # pool -> set of "GCM"/"APNS"
        self.answers = answers
        self.devices: dict[tuple, dict] = {}  # (pool, platform, token) -> device
        self.by_id: dict[str, dict] = {}
        self.last: dict[tuple, int] = {}  # (pool, identity, dataset) -> last notified count
        self.pending: list[tuple] = []  # retries: (device id, identity, dataset, count)
        self.retried: set = set()
        self.pushed: set = set()

    def register(self, pool, identity, platform, token, dev_id):
        dev = self.devices.get((pool, platform, token))
        if dev is None:
            dev = {"id": dev_id, "pool": pool, "platform": platform, "token": token, "identity": identity,
                   "active": True, "subs": set()}
            self.devices[(pool, platform, token)] = dev
            self.by_id[dev_id] = dev
        elif dev["identity"] != identity:
            dev.update(identity=identity, active=True, subs=set())
        else:
            dev["active"] = True
        assert dev["id"] == dev_id, "a known token got a new device id"

    def unregister(self, dev_id):
        dev = self.by_id.pop(dev_id)
        del self.devices[(dev["pool"], dev["platform"], dev["token"])]

    def message(self, events):
        newest: dict[tuple, tuple] = {}
        for pool, identity, dataset, count, origin in events:
            key = (pool, identity, dataset)
            if key not in newest or count > newest[key][0]:
                newest[key] = (count, origin)
        for (pool, identity, dataset), (count, origin) in newest.items():
            if not self.creds[pool]:
                continue  # dead-lettered: the pool has no credentials
            if (pool, identity, dataset) in self.last and count <= self.last[(pool, identity, dataset)]:
                continue  # stale or a duplicate
            self.last[(pool, identity, dataset)] = count
            for dev in list(self.by_id.values()):
                if (dev["pool"] == pool and dev["identity"] == identity and dev["active"]
                        and dataset in dev["subs"] and dev["id"] != origin
                        and ("GCM" if dev["platform"] == "GCM" else "APNS") in self.creds[pool]):
                    self._send(dev, identity, dataset, count)

    def _send(self, dev, identity, dataset, count):
        answer = self.answers[dev["token"]]
        attempt = (dev["id"], identity, dataset, count)
        if answer == "ok" or (answer == "retry_once" and attempt in self.retried):
            self.pushed.add((dev["pool"], dev["platform"], dev["token"], identity, dataset, count))
        elif answer == "retry_once":
            self.retried.add(attempt)
            self.pending.append(attempt)
        elif answer == "invalid":
            dev["active"] = False

    def retries(self):
        pending, self.pending = self.pending, []
        for dev_id, identity, dataset, count in pending:
            dev = self.by_id.get(dev_id)
            if (dev is None or dev["identity"] != identity or not dev["active"] or dataset not in dev["subs"]
                    or count < self.last.get((dev["pool"], identity, dataset), -1)):
                continue  # no longer this identity's, or overtaken by a newer count
            self._send(dev, identity, dataset, count)


def _play(run: harness.Run, data: dict) -> None:
    creds = {pool: set(c) for pool, c in zip(POOLS, data["creds"], strict=True)}
    model = Model(creds, data["answers"])
    answers = data["answers"]
    seen_retry: set = set()

    def answer(push: harness.Push) -> Kind:
        a = answers[push.token]
        key = (push.device_id, push.data["identityId"], push.data["datasetName"], int(push.data["syncCount"]))
        if a == "retry_once":
            if key in seen_retry:
                return Kind.OK
            seen_retry.add(key)
            return Kind.RETRY
        return {"ok": Kind.OK, "invalid": Kind.TOKEN_INVALID, "permanent": Kind.PERMANENT}[a]
    run.answer = answer
    engine = engine_for(run.url)
    with session_scope(engine) as s:
        for pool in POOLS:
            repo.upsert_pool(s, pool, fcm_service_account=CREDS["GCM"] if "GCM" in creds[pool] else None,
                             apns=CREDS["APNS"] if "APNS" in creds[pool] else None)
    ids: list[str] = []  # every device id handed out, in order (ops refer to them by index)

    def pick(i):
        return ids[i % len(ids)] if ids else None

    # the start, through `device import`'s path: one transaction, each row registered and
    # subscribed as if alone, in order
    rows = [(POOLS[p], IDENTITIES[i], platform, token, list(datasets))
            for (_, p, i, platform, token), datasets in data["setup"]]
    with session_scope(engine) as s:
        dev_ids = repo.import_devices(s, rows)
    for (pool, identity, platform, token, datasets), dev_id in zip(rows, dev_ids, strict=True):
        model.register(pool, identity, platform, token, dev_id)
        model.by_id[dev_id]["subs"].update(datasets)
        if dev_id not in ids:
            ids.append(dev_id)
    for o in [*data["ops"], *data["finale"]]:
        kind = o[0]
        if kind == "register":
            _, p, i, platform, token = o
            with session_scope(engine) as s:
                dev_id = repo.register_device(s, POOLS[p], IDENTITIES[i], platform, token)
            model.register(POOLS[p], IDENTITIES[i], platform, token, dev_id)
            if dev_id not in ids:
                ids.append(dev_id)
        elif kind == "move" and ids:
            dev = model.by_id.get(pick(o[1]))
            if dev is None:
                continue
            other = IDENTITIES[1 - IDENTITIES.index(dev["identity"])]
            datasets = sorted(dev["subs"])
            with session_scope(engine) as s:
                dev_id = repo.register_device(s, dev["pool"], other, dev["platform"], dev["token"])
            model.register(dev["pool"], other, dev["platform"], dev["token"], dev_id)
            if o[2] and datasets:
                with session_scope(engine) as s:
                    repo.subscribe(s, dev["pool"], other, datasets, dev_id)
                dev["subs"].update(datasets)
        elif kind in ("subscribe", "unsubscribe", "unregister") and ids:
            dev_id = pick(o[1])
            dev = model.by_id.get(dev_id)
            if dev is None:
                continue  # unregistered already: the CLI would answer "unknown device"
            if kind == "unregister":
                with session_scope(engine) as s:
                    repo.unregister_device(s, dev_id)
                model.unregister(dev_id)
                continue
            # the caller names an identity: only the device's own may change its subscriptions
            identity = IDENTITIES[o[2]] if kind == "subscribe" and o[2] is not None else dev["identity"]
            dataset = o[3] if kind == "subscribe" else o[2]
            try:
                with session_scope(engine) as s:
                    if kind == "subscribe":
                        repo.subscribe(s, dev["pool"], identity, [dataset], dev_id)
                    else:
                        repo.unsubscribe(s, dev["pool"], identity, dataset, dev_id)
            except repo.NotFound:
                assert identity != dev["identity"], "refused a subscription change by the device's own identity"
                continue
            assert identity == dev["identity"], "another identity changed the device's subscriptions"
            (dev["subs"].add if kind == "subscribe" else dev["subs"].discard)(dataset)
        elif kind == "message":
            _, events, inline = o
            raw = []
            for p, i, d, n, org, ref in events:
                if ref is not None:
                    (_, p, i, _pl, _t), subscribed = data["setup"][ref % len(data["setup"])]
                    d = subscribed[n % len(subscribed)] if subscribed else d
                raw.append({"identityPoolId": POOLS[p], "identityId": IDENTITIES[i], "datasetName": d,
                            "syncCount": n, **({"originDeviceId": pick(org)} if org is not None and ids else {})})
            model.message([(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"],
                            e.get("originDeviceId")) for e in raw])
            os.environ["PUSHSYNC_INLINE_DELIVERY_MAX"] = "2000" if inline else "0"
            harness.get_settings.cache_clear()
            run.ingest(raw)
            while run.queued:  # a push worker takes them now; retries wait for a "retries" step
                run.deliver(run.queued.pop(0))
        elif kind == "retries":
            model.retries()
            while run.retries:
                run.deliver(run.retries.pop(0))
    model.retries()
    run.drain()
    got = {(p.pool, p.platform, p.token, p.data["identityId"], p.data["datasetName"], int(p.data["syncCount"]))
           for p in run.delivered}
    assert got == model.pushed, f"delivered but not expected: {got - model.pushed}; expected but not delivered: " \
                                f"{model.pushed - got}"
    assert len(run.delivered) == len(got), "a push was delivered twice"
    return model
    for p in run.sent:
        # a push carries its own pool, identity and the device's platform credentials, nothing else's
        assert p.data["identityPoolId"] == p.pool and p.data["source"] == "cognito-sync"
        dev = model.by_id.get(p.device_id)
        assert dev is None or dev["pool"] == p.pool


def _child(seed_value: int, examples: int) -> dict:
    """One process's share of the examples (spawned: a fresh interpreter, no forked threads)."""
    import tempfile
    import traceback
    from pathlib import Path

    from tests.conftest import TEST_SECRET_KEY

    os.environ["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY
    logging.getLogger("pushsync").setLevel(logging.ERROR)  # thousands of expected warnings
    mp = pytest.MonkeyPatch()
    run = harness.start(Path(tempfile.mkdtemp(prefix="pushsync-prop-")), mp, PUSHSYNC_INLINE_DELIVERY_MAX="2000")
    counts = {"examples": 0, "pushed": 0, "sent_any": 0, "error": None}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @seed(seed_value)
    @given(data=scenario)
    def prop(data):
        run.reset()
        _play(run, data)
        counts["examples"] += 1
        counts["pushed"] += len(run.delivered)
        counts["sent_any"] += bool(run.sent)

    try:
        prop()
    except BaseException:  # the falsifying example is in the notes of the exception
        counts["error"] = traceback.format_exc()
    finally:
        harness.stop(run)
        mp.undo()
    return counts


def run_in_processes(child, total: int, processes: int = 2) -> list[dict]:
    """``total`` examples over ``processes`` spawned processes (this machine's cores), each with
    its own store and seed; the seeds are printed so that a failure can be replayed."""
    import multiprocessing
    import random
    from concurrent.futures import ProcessPoolExecutor

    seeds = [random.getrandbits(32) for _ in range(processes)]
    print(f"seeds {seeds}, {total} examples")
    share = -(-total // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(child, seeds, [share] * processes))
    errors = [f"seed {sd}:\n{r['error']}" for sd, r in zip(seeds, results, strict=True) if r["error"]]
    assert not errors, "\n".join(errors)
    return results


def test_what_reaches_devices_is_exactly_what_the_model_says():
    results = run_in_processes(_child, EXAMPLES)
    examples = sum(r["examples"] for r in results)
    sent_any = sum(r["sent_any"] for r in results)
    print(f"{examples} examples, {sent_any} of them sent pushes, {sum(r['pushed'] for r in results)} delivered")
    assert examples >= EXAMPLES
    # not a vacuous pass: a good share of the examples pushed something
    assert sent_any >= examples // 5
