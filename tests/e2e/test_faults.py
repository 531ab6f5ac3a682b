"""Fault scenarios against misbehaving emulators, with a real worker and the scheduler.

Every scenario ends by checking, for every device, that the newest sync count it should have
received arrived at least once, and that no push went to a device it should not have. The
figures (events, pushes expected, delivered, duplicates, dead-lettered) are printed.
"""

from __future__ import annotations

import time
import uuid

import pytest

from ..conftest import POOL
from .harness import Pipeline, publish_counts, seed, tally, wait_for

ENV = {
    "PUSHSYNC_RETRY_BASE": "0.5",
    "PUSHSYNC_RETRY_CAP": "4",
    "PUSHSYNC_MAX_ATTEMPTS": "6",
    # waits over 1 s go to the retry set, so the scheduler's pump is part of every scenario
    "PUSHSYNC_COUNTDOWN_MAX": "1",
    "PUSHSYNC_SEND_TIMEOUT": "5",
}


pytestmark = pytest.mark.usefixtures("well_behaved")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, emulator):
    directory = tmp_path_factory.mktemp("faults")
    p = Pipeline(directory, emulator, f"sqlite:///{directory}/store.db", broker_db=12, extra_env=ENV)
    p.create_pool(POOL)
    p.start_worker("-c", "2")
    p.start_scheduler()
    yield p
    p.stop_workers()


def _seed(pipe, n_identities=20, per_identity=3):
    """Devices of a dataset of the scenario's own: (dataset, token -> identity)."""
    dataset = f"ds-{uuid.uuid4().hex[:6]}"
    tokens = seed(pipe, POOL, n_identities, per_identity, dataset=dataset)
    return dataset, tokens


def _finish(name, pipe, emulator, tokens, dataset, count, events, timeout=90):
    wait_for(lambda: tally(emulator.requests(), tokens, dataset, count)["delivered"] == len(tokens),
             timeout=timeout, interval=0.5, what=f"{name}: every device to get count {count}")
    time.sleep(1.0)
    t = tally(emulator.requests(), tokens, dataset, count)
    dead = [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset]
    print(f"\n[{name}] events {events}, pushes expected {t['expected']}, delivered {t['delivered']}, "
          f"duplicates {t['duplicates']}, dead-lettered {len(dead)}")
    assert t["strays"] == 0 and t["missing"] == []
    return t


def test_a_503_storm_delivers_everything_after_retry_after(pipe, emulator):
    dataset, tokens = _seed(pipe)
    emulator.fault(service="any", status=503, retry_after=2, count=200)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    _finish("503 x200, Retry-After 2", pipe, emulator, tokens, dataset, 1, events)
    # no device was tried again before its Retry-After had passed
    by_token: dict[str, list[dict]] = {}
    for r in emulator.requests():
        if r.get("token") in tokens:
            by_token.setdefault(r["token"], []).append(r)
    refused = 0
    for reqs in by_token.values():
        reqs.sort(key=lambda r: r["time"])
        for prev, nxt in zip(reqs, reqs[1:], strict=False):
            if prev["status"] == 503:
                refused += 1
                assert nxt["time"] - prev["time"] >= 2.0 - 0.05, (prev, nxt)
    assert refused >= len(tokens)  # every device met at least one 503


def test_429_on_one_token_backs_off_while_the_others_flow(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=10)
    slow = next(t for t in tokens if t.startswith("fcm-"))
    emulator.fault(service="fcm", token=slow, status=429, reason="UNAVAILABLE", retry_after=2, count=2)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    _finish("429 on one token", pipe, emulator, tokens, dataset, 1, events)
    reqs = [r for r in emulator.requests() if r.get("token") in tokens]
    slow_reqs = sorted((r for r in reqs if r["token"] == slow), key=lambda r: r["time"])
    assert [r["status"] for r in slow_reqs] == [429, 429, 200]
    assert slow_reqs[1]["time"] - slow_reqs[0]["time"] >= 1.95
    others_done = max(r["time"] for r in reqs if r["token"] != slow and r["status"] == 200)
    assert others_done < slow_reqs[-1]["time"], "the other devices waited for the slow one"


def test_auth_expiry_refreshes_the_token_once_and_sending_resumes(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=6)
    issued_before = emulator.stats()["oauth_tokens_issued"]
    emulator.fault(service="fcm", status=401, count=1)
    emulator.fault(service="apns", status=403, reason="ExpiredProviderToken", count=1)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    _finish("401/403 auth expiry", pipe, emulator, tokens, dataset, 1, events)
    reqs = [r for r in emulator.requests() if r.get("token") in tokens]
    assert sum(r["status"] == 401 for r in reqs) == 1 and sum(r["status"] == 403 for r in reqs) == 1
    # FCM: one new OAuth token per worker process that met the 401, no more
    assert emulator.stats()["oauth_tokens_issued"] - issued_before == 1
    refused = next(r for r in reqs if r["status"] == 403)
    after = next(r for r in sorted(reqs, key=lambda r: r["time"])
                 if r["token"] == refused["token"] and r["time"] > refused["time"])
    assert after["status"] == 200 and after["auth_id"] != refused["auth_id"], "the JWT was not renewed"


def test_connections_dropped_mid_batch_lose_no_push(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=20)
    emulator.fault(service="any", drop=True, count=4)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    _finish("dropped connections", pipe, emulator, tokens, dataset, 1, events)
    assert sum(r["status"] == 0 for r in emulator.requests() if r.get("token") in tokens) == 4


def test_two_seconds_of_latency_slow_but_lose_no_push(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=10)
    emulator.fault(service="any", latency=2.0)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    _finish("2 s latency", pipe, emulator, tokens, dataset, 1, events)


def test_permanent_and_exhausted_end_in_dlq_and_replay_delivers_them(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=6)
    bad_payload = next(t for t in tokens if t.startswith("fcm-"))
    flaky = next(t for t in tokens if not t.startswith("fcm-"))
    emulator.fault(service="fcm", token=bad_payload, status=400, reason="INVALID_ARGUMENT")
    emulator.fault(service="apns", token=flaky, status=503)
    events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    letters = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(
        [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset]),
        timeout=90, interval=0.5, what="two dead letters")
    reasons = sorted(d["reason"] for d in letters)
    assert reasons == ["permanent error: INVALID_ARGUMENT", "retries exhausted: ServiceUnavailable"]
    exhausted = next(d for d in letters if d["reason"].startswith("retries"))
    assert exhausted["attempts"] == 6 and exhausted["last_error"] == "HTTP 503"
    listing = pipe.cli("dlq", "list").stdout
    assert "permanent error: INVALID_ARGUMENT" in listing
    emulator.clear_faults()
    r = pipe.cli("dlq", "replay", *[str(d["id"]) for d in letters])
    assert "2 deliveries" in r.stdout
    _finish("permanent + exhausted, then replay", pipe, emulator, tokens, dataset, 1, events)
    assert [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset] == []


def test_replay_drops_a_delivery_whose_count_is_stale(pipe, emulator):
    dataset, tokens = _seed(pipe, n_identities=1, per_identity=1)
    [tok] = tokens
    assert tok.startswith("fcm-")
    emulator.fault(service="fcm", token=tok, status=400, reason="INVALID_ARGUMENT")
    publish_counts(pipe, POOL, set(tokens.values()), dataset, 1)
    [letter] = wait_for(lambda: [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset],
                        what="dead letter")
    emulator.clear_faults()
    publish_counts(pipe, POOL, set(tokens.values()), dataset, 2)
    wait_for(lambda: tally(emulator.requests(), tokens, dataset, 2)["delivered"] == 1, what="count 2")
    r = pipe.cli("dlq", "replay", "--all")
    assert "1 delivery dropped as stale" in r.stdout
    time.sleep(1.0)
    assert tally(emulator.requests(), tokens, dataset, 1)["delivered"] == 0


def test_dlq_replay_refuses_bad_ids_with_one_line(pipe):
    r = pipe.cli("dlq", "replay", check=False)
    assert r.returncode == 2 and "ID" in r.stderr
    r = pipe.cli("dlq", "replay", "abc", check=False)
    assert r.returncode == 2
    r = pipe.cli("dlq", "replay", "999999", check=False)
    assert r.returncode == 1 and "not in the dead-letter store" in r.stderr
