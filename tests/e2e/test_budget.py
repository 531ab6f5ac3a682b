"""The FCM rate budget with a real worker, the scheduler and an emulator that enforces a
per-project quota (429 QUOTA_EXCEEDED with Retry-After, refused requests counted too)."""

from __future__ import annotations

from emulators.state import State

from ..conftest import POOL
from .harness import Pipeline, new_identity, publish_counts, wait_for

QUOTA, WINDOW = 50, 5.0  # 600 a minute, counted in 5 s windows


def test_the_emulators_quota_refuses_past_it_counts_refusals_and_says_when_the_window_ends():
    state = State(fcm_quota=3, fcm_quota_window=10.0)
    assert [state.over_quota("p", now=100.0 + k) for k in range(3)] == [None, None, None]
    assert state.over_quota("p", now=104.0) == 6.0  # the window opened at 100
    assert state.over_quota("q", now=104.0) is None  # another project's quota is its own
    assert state.over_quota("p", now=111.0) is None  # a new window
    assert state.quota_refused == {"p": 1}
    assert State().over_quota("p") is None  # no quota unless one is set


def _with_quota(emulator) -> None:
    assert emulator._call("POST", "/fcm/quota", {"quota": QUOTA, "window": WINDOW}) == {"quota": QUOTA,
                                                                                         "window": WINDOW}


def test_a_fan_out_past_the_quota_within_its_budget_is_delivered_whole_and_almost_never_refused(
        tmp_path, own_emulator):
    _with_quota(own_emulator)
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=11)
    try:
        pipe.create_pool(POOL, apns=False)
        # 480 a minute: in any 5 s window at most 1 + 480 x 6 / 61 = 48 pushes, under the quota's 50
        r = pipe.cli("pool", "create", POOL, "--fcm-rate", "480/min")
        assert "FCM budget 480 pushes a minute" in r.stdout
        identities = [new_identity() for _ in range(40)]
        tokens = {}
        for n, ident in enumerate(identities):
            for k in range(3):
                tokens[f"fcm-budget-{n}-{k}"] = ident
                pipe.device(POOL, ident, "GCM", f"fcm-budget-{n}-{k}")
        pipe.start_worker()
        pipe.start_scheduler()
        publish_counts(pipe, POOL, identities, "notes", 7)

        def delivered():
            return {r["token"] for r in own_emulator.requests() if r["status"] == 200 and r["token"] in tokens}
        wait_for(lambda: len(delivered()) == len(tokens), timeout=90, what="all 120 pushes")
        answers = [r for r in own_emulator.requests() if r.get("token") in tokens]
        refused = [r for r in answers if r["status"] == 429]
        assert len(refused) <= len(tokens) // 100, f"{len(refused)} refused for quota"
        assert not pipe.dead_letters()
        stats = pipe.stats()
        assert stats["held"].get("fcm_budget", 0) >= 60  # most of it waited for its slots
        # it took the budget's time, not the fan-out's: 120 pushes at 8 a second
        times = sorted(r["time"] for r in answers if r["status"] == 200)
        assert times[-1] - times[0] >= 10
    finally:
        pipe.stop_workers()
