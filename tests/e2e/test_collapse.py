"""FCM's four collapse keys: what an Android device that was offline receives when it is back.

pushsync sends every push with the dataset as its collapse key. FCM keeps, for a device that is
offline, the newest message of each collapse key, at most four keys (the emulator models it:
``/fcm/offline``, ``/fcm/online``, ``State.keep_offline``). So a device back online gets one push
per changed dataset, each with that dataset's newest count, as long as four or fewer changed; past
four it gets four of them, no older count and no dataset twice, and the app syncs all its
datasets on any push after being offline (docs/concepts.md, "What devices receive"). A real
worker, the emulator's FCM, the store in SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from emulators.state import OFFLINE_KEYS, OFFLINE_PLAIN, State

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for


def test_the_emulator_keeps_the_newest_message_of_at_most_four_collapse_keys():
    state = State()
    assert state.keep_offline("t", "a", {"n": 1}) is False  # online: delivered at once, nothing kept
    state.offline["t"] = {}
    for n, key in enumerate(["a", "b", "a", "c", "d", "e", None, None], start=1):
        assert state.keep_offline("t", key, {"n": n}) is True
    keyed = state.offline["t"]["keyed"]
    assert list(keyed) == ["a", "c", "d", "e"] and keyed["a"] == {"n": 3}  # "b" went: five keys, four kept
    assert list(state.offline["t"]["plain"].values()) == [{"n": 7}, {"n": 8}]  # not collapsible: each kept
    for n in range(OFFLINE_PLAIN - 2):  # past 100 not collapsible, FCM discards all it kept
        state.keep_offline("t", None, {"n": n})
    assert len(state.offline["t"]["plain"]) == OFFLINE_PLAIN
    state.keep_offline("t", None, {"n": 101})
    assert state.offline["t"] == {"deleted": True}


PUBLISH = ("import json, sys\nfrom pushsync.client import publish\n"
           "for e in json.loads(sys.stdin.read()):\n"
           "    publish(e['identityPoolId'], e['identityId'], e['datasetName'], e['syncCount'])\n")


def _publish(pipe: Pipeline, ident: str, changes: list[tuple[str, int]]) -> None:
    """One publish per change, from a producer process that does nothing special."""
    events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n} for ds, n in changes]
    subprocess.run([sys.executable, "-c", PUBLISH], input=json.dumps(events), env=pipe.env, check=True, text=True,
                   timeout=60)


def _back_online_after_changes(tmp_path, emulator, datasets: int) -> list[dict]:
    """The device goes offline, each of its ``datasets`` changes twice (counts 1 then 2, both sent
    and accepted by FCM), and it comes back: what it receives."""
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=11)
    try:
        pipe.create_pool(POOL, apns=False)
        ident, token = new_identity(), f"fcm-offline-{uuid.uuid4().hex[:12]}"
        names = [f"ds{k}" for k in range(datasets)]
        pipe.device(POOL, ident, "GCM", token, datasets=names)
        pipe.start_worker()
        emulator._call("POST", "/fcm/offline", {"token": token})

        def sent(count: str) -> set[str]:
            return {r["data"]["datasetName"] for r in emulator.requests() if r.get("token") == token
                    and r["status"] == 200 and r.get("kept_offline") and r["data"]["syncCount"] == count}
        for count in ("1", "2"):
            _publish(pipe, ident, [(ds, int(count)) for ds in names])
            wait_for(lambda c=count: sent(c) == set(names), 30, what=f"count {count} of every dataset sent")
        assert not pipe.dead_letters()
        return emulator._call("POST", "/fcm/online", {"token": token})["delivered"]
    finally:
        pipe.stop_workers()


def test_an_offline_device_with_four_changed_datasets_gets_each_ones_newest_count(tmp_path, emulator):
    delivered = _back_online_after_changes(tmp_path, emulator, OFFLINE_KEYS)
    assert sorted((m["collapse_key"], m["data"]["datasetName"], m["data"]["syncCount"]) for m in delivered) == [
        (f"ds{k}", f"ds{k}", "2") for k in range(OFFLINE_KEYS)]


def test_past_four_changed_datasets_it_gets_four_each_the_newest_of_its_dataset(tmp_path, emulator):
    delivered = _back_online_after_changes(tmp_path, emulator, 6)
    datasets = [m["data"]["datasetName"] for m in delivered]
    assert len(datasets) == OFFLINE_KEYS and len(set(datasets)) == OFFLINE_KEYS  # four datasets, none twice
    assert all(m["collapse_key"] == m["data"]["datasetName"] and m["data"]["syncCount"] == "2" for m in delivered)


def test_the_control_api_refuses_a_device_it_cannot_take_offline_or_bring_back(emulator):
    import urllib.error
    import urllib.request

    import pytest

    for path, body in (("/fcm/offline", {}), ("/fcm/offline", {"token": ""}), ("/fcm/offline", ["t"]),
                       ("/fcm/online", {"token": "never-offline"})):
        with pytest.raises(urllib.error.HTTPError) as err:
            emulator._call("POST", path, body)
        assert err.value.code == 400 and b"token" in err.value.read()
    request = urllib.request.Request(emulator.info["control_url"] + "/fcm/offline", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400
