"""Isolation, as a property: over random pools, credentials, identities, devices on every
platform, subscriptions, tokens that move between identities, unsubscribes, unregisters,
answers that ask for a retry or end a token, and sequences of change events, the set of
(pool, platform, token, identity, dataset, sync count) that reached the sender equals what an
independent model of the service computes; and every push went out with its own pool's
credentials.

The service runs as a worker runs it (``tests/worker/harness.py``): messages published onto the
real ``events`` list, the ingest run that takes them, the transaction, inline delivery or a
queued batch through the deliver task's body, retries later, a real SQLite store, a real Redis.
Coalescing is off here, so that every change is pushed at once and the model can name each push;
tests/worker/test_coalescing_property.py holds the default window to its promise. Registrations go
through the repository functions the CLI calls.
The model below shares no code with the service."""

from __future__ import annotations

import os

from hypothesis import strategies as st

from store import repo
from store.db import engine_for, session_scope
from worker.senders.base import Kind

from . import harness
from .isolation_model import Model

POOLS = ("us-east-1:00000000-0000-4000-8000-00000000000a", "eu-west-1:00000000-0000-4000-8000-00000000000b")
CRED_SETS = (("GCM", "APNS"), ("GCM",), ("APNS",), ())
# a pool id per slot and credential set: each is created once per process and kept, so that an
# example costs no pool writes (a pool's credentials are the example's choice by its id)
POOL_IDS = {(slot, creds): f"{POOLS[slot][:-2]}{slot}{n}" for slot in range(len(POOLS))
            for n, creds in enumerate(CRED_SETS)}
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
    "creds": st.tuples(*[st.sampled_from([CRED_SETS[0], *CRED_SETS]) for _ in POOLS]),
    "answers": st.fixed_dictionaries({t: st.sampled_from(ANSWERS) for t in TOKENS}),
    "setup": setup,
    "ops": st.lists(op, max_size=6),
    "finale": st.lists(message, min_size=1, max_size=1),
})


class Player:
    """Plays one example's steps on the service and on the model side by side."""

    def __init__(self, run: harness.Run, data: dict):
        self.run, self.data = run, data
        self.pools = [POOL_IDS[(slot, c)] for slot, c in enumerate(data["creds"])]
        self.creds = {pool: set(c) for pool, c in zip(self.pools, data["creds"], strict=True)}
        self.model = Model(self.creds, data["answers"])
        self.engine = engine_for(run.url)
        self.ids: list[str] = []  # every device id handed out, in order (steps name them by index)
        self.seen_retry: set = set()
        run.answer = self.answer

    def answer(self, push: harness.Push) -> Kind:
        a = self.data["answers"][push.token]
        if a == "retry_once":
            key = (push.device_id, push.data["identityId"], push.data["datasetName"], int(push.data["syncCount"]))
            if key in self.seen_retry:
                return Kind.OK
            self.seen_retry.add(key)
            return Kind.RETRY
        return {"ok": Kind.OK, "invalid": Kind.TOKEN_INVALID, "permanent": Kind.PERMANENT}[a]

    def pick(self, i):
        return self.ids[i % len(self.ids)] if self.ids else None

    def _registered(self, pool, identity, platform, token, dev_id):
        self.model.register(pool, identity, platform, token, dev_id)
        if dev_id not in self.ids:
            self.ids.append(dev_id)

    def setup(self):
        for pool in set(self.pools) - self.run.pools:
            with session_scope(self.engine) as s:
                repo.upsert_pool(s, pool, fcm_service_account=CREDS["GCM"] if "GCM" in self.creds[pool] else None,
                                 apns=CREDS["APNS"] if "APNS" in self.creds[pool] else None)
            self.run.pools.add(pool)
        # the start, through `device import`'s path: one transaction, each row registered and
        # subscribed as if alone, in order
        rows = [(self.pools[p], IDENTITIES[i], platform, token, list(datasets))
                for (_, p, i, platform, token), datasets in self.data["setup"]]
        with session_scope(self.engine) as s:
            dev_ids = repo.import_devices(s, rows)
        for (pool, identity, platform, token, datasets), dev_id in zip(rows, dev_ids, strict=True):
            self._registered(pool, identity, platform, token, dev_id)
            self.model.by_id[dev_id]["subs"].update(datasets)

    def register(self, _kind, p, i, platform, token):
        with session_scope(self.engine) as s:
            dev_id = repo.register_device(s, self.pools[p], IDENTITIES[i], platform, token)
        self._registered(self.pools[p], IDENTITIES[i], platform, token, dev_id)

    def move(self, _kind, n, resubscribe):
        dev = self.model.by_id.get(self.pick(n))
        if dev is None:
            return
        other = IDENTITIES[1 - IDENTITIES.index(dev["identity"])]
        datasets = sorted(dev["subs"])
        with session_scope(self.engine) as s:
            dev_id = repo.register_device(s, dev["pool"], other, dev["platform"], dev["token"])
        self._registered(dev["pool"], other, dev["platform"], dev["token"], dev_id)
        if resubscribe and datasets:
            with session_scope(self.engine) as s:
                repo.subscribe(s, dev["pool"], other, datasets, dev_id)
            dev["subs"].update(datasets)

    def unregister(self, _kind, n):
        dev_id = self.pick(n)
        if dev_id in self.model.by_id:
            with session_scope(self.engine) as s:
                repo.unregister_device(s, dev_id)
            self.model.unregister(dev_id)

    def subscribe(self, kind, n, who, dataset=None):
        if kind == "unsubscribe":
            who, dataset = None, who
        dev_id = self.pick(n)
        dev = self.model.by_id.get(dev_id)
        if dev is None:
            return  # unregistered already: the CLI would answer "unknown device"
        # the caller names an identity: only the device's own may change its subscriptions
        identity = IDENTITIES[who] if who is not None else dev["identity"]
        try:
            with session_scope(self.engine) as s:
                change = repo.subscribe if kind == "subscribe" else repo.unsubscribe
                change(s, dev["pool"], identity, [dataset] if kind == "subscribe" else dataset, dev_id)
        except repo.NotFound:
            assert identity != dev["identity"], "refused a subscription change by the device's own identity"
            return
        assert identity == dev["identity"], "another identity changed the device's subscriptions"
        (dev["subs"].add if kind == "subscribe" else dev["subs"].discard)(dataset)

    unsubscribe = subscribe

    def message(self, _kind, events, inline):
        raw = []
        for p, i, d, n, org, ref in events:
            if ref is not None:
                (_, p, i, _pl, _t), subscribed = self.data["setup"][ref % len(self.data["setup"])]
                d = subscribed[n % len(subscribed)] if subscribed else d
            raw.append({"identityPoolId": self.pools[p], "identityId": IDENTITIES[i], "datasetName": d, "syncCount": n,
                        **({"originDeviceId": self.pick(org)} if org is not None and self.ids else {})})
        self.model.message([(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"],
                             e.get("originDeviceId")) for e in raw])
        self.run.set(inline_delivery_max=2000 if inline else 0)
        self.run.ingest(raw)
        while self.run.queued:  # a push worker takes them now; retries wait for a "retries" step
            self.run.deliver(self.run.queued.pop(0))

    def retries(self, _kind="retries"):
        self.model.retries()
        while self.run.retries:
            self.run.deliver(self.run.retries.pop(0))

    def check(self):
        self.retries()
        self.run.drain()
        run, model = self.run, self.model
        got = {(p.pool, p.platform, p.token, p.data["identityId"], p.data["datasetName"], int(p.data["syncCount"]))
               for p in run.delivered}
        assert got == model.pushed, f"delivered but not expected: {got - model.pushed}; expected but not " \
                                    f"delivered: {model.pushed - got}"
        assert len(run.delivered) == len(got), "a push was delivered twice"
        for p in run.sent:
            # a push carries its own pool, identity and the device's platform credentials, nothing else's
            assert p.data["identityPoolId"] == p.pool and p.data["source"] == "cognito-sync"
            dev = model.by_id.get(p.device_id)
            assert dev is None or dev["pool"] == p.pool


def _example(run: harness.Run, counts: dict, data: dict) -> None:
    run.reset(keep_pools=True)
    player = Player(run, data)
    player.setup()
    for step in [*data["ops"], *data["finale"]]:
        getattr(player, step[0])(*step)
    player.check()
    counts["pushed"] = counts.get("pushed", 0) + len(run.delivered)
    counts["sent_any"] = counts.get("sent_any", 0) + bool(run.sent)


def _child(seed_value: int, examples: int, redis_db: int) -> dict:
    return harness.run_examples(seed_value, examples, {"data": scenario}, _example, redis_db=redis_db,
                                PUSHSYNC_INLINE_DELIVERY_MAX="2000")


def test_what_reaches_devices_is_exactly_what_the_model_says():
    results = harness.run_in_processes(_child, EXAMPLES)
    examples = sum(r["examples"] for r in results)
    sent_any = sum(r["sent_any"] for r in results)
    print(f"{examples} examples, {sent_any} of them sent pushes, {sum(r['pushed'] for r in results)} delivered")
    assert examples >= EXAMPLES
    # not a vacuous pass: a good share of the examples pushed something
    assert sent_any >= examples // 5
