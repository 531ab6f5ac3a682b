"""`pushsync trace` and the API's trail path against a real worker process and the emulators: one
push sent, one refused by the FCM emulator as unregistered; the admin key reads the trail, every
other credential is refused; the command prints it for people and as JSON; an unknown pool is one
line and exit 1."""

from __future__ import annotations

import json

import pytest

from tests.conftest import POOL
from tests.e2e.harness import new_identity, wait_for

from .conftest import identity_token
from .harness import error_type

UNKNOWN_POOL = "eu-west-1:00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def traced(pipe, emulator):
    """An identity with two devices, one whose token the emulator answers as unregistered, and an
    event pushed to both by a real worker; returns (identity, good device, dead device)."""
    pipe.start_worker("-c", "1")
    ident = new_identity()
    dead_token = f"fcm-trace-dead-{ident[-8:]}"
    emulator._call("POST", "/tokens/dead", {"token": dead_token})
    good = pipe.device(POOL, ident, "GCM", f"fcm-trace-good-{ident[-8:]}")
    dead = pipe.device(POOL, ident, "GCM", dead_token)
    pipe.cli("publish", POOL, ident, "notes", "3")
    wait_for(lambda: len(emulator.pushes_for(ident)) >= 2, 60, what="both pushes")
    yield ident, good, dead
    pipe.stop_workers()


def _path(ident: str, dataset: str | None = None) -> str:
    return f"/identitypools/{POOL}/identities/{ident}" + (f"/datasets/{dataset}" if dataset else "") + "/trail"


def _settled(api, keys, ident) -> dict:
    """The trail once both pushes' outcomes are on it (written when the task ends)."""
    def both():
        body = api.call("GET", _path(ident), cred=keys["admin"]).json()
        return body if body["events"] and len(body["events"][0]["devices"]) == 2 else None
    return wait_for(both, 30, what="the pushes' outcomes on the trail")


def test_the_admin_key_reads_the_trail(api, keys, traced):
    ident, good, dead = traced
    body = _settled(api, keys, ident)
    assert (body["pool"], body["identity"], body["dataset"], body["skipped"]) == (POOL, ident, None, 0)
    event = body["events"][0]
    assert (event["dataset"], event["count"], event["fate"], event["detail"]) == ("notes", 3, "pushed", "2")
    pushes = {d["device"]: d for d in event["devices"]}
    assert pushes[good]["outcome"] == "sent" and pushes[good]["token"] == "fcm-trac…"
    assert pushes[dead]["outcome"] == "invalid"
    assert 6 * 86400 < body["expires_in"] <= 7 * 86400
    only = api.call("GET", _path(ident, "notes"), cred=keys["admin"])
    assert only.status_code == 200 and only.json()["dataset"] == "notes" and only.json()["events"] == body["events"]
    other = api.call("GET", _path(ident, "photos"), cred=keys["admin"]).json()
    assert other["events"] == [] and other["dataset"] == "photos"


def test_other_credentials_are_refused(api, keys, secrets, traced):
    ident, _good, _dead = traced
    for cred in (keys["device"], keys["producer"], identity_token(secrets, identity=ident), keys["other_pool"]):
        for path in (_path(ident), _path(ident, "notes")):
            r = api.call("GET", path, cred=cred)
            assert r.status_code == 403 and error_type(r) == "NotAuthorizedException", (path, r.text)
    assert "admin scope" in api.call("GET", _path(ident), cred=keys["producer"]).json()["message"]
    assert api.call("GET", _path(ident)).status_code == 403


def test_the_command_prints_the_trail_and_its_json(pipe, api, keys, traced):
    ident, good, dead = traced
    body = _settled(api, keys, ident)
    out = pipe.cli("trace", POOL, ident.upper()).stdout.splitlines()
    assert out[0].startswith(f"trail of {ident} in {POOL}: 1 event, kept ")
    assert out[1].endswith("  notes  count 3  pushed to 2 devices")
    devices = {line.split()[2]: line for line in out[2:]}
    assert set(devices) == {good, dead} and all(line.startswith("    ") for line in out[2:])
    assert devices[good].endswith("fcm-trac…  sent") and "token invalid (" in devices[dead]
    as_json = json.loads(pipe.cli("trace", POOL, ident, "--json", "--dataset", "notes").stdout)
    assert as_json["events"] == body["events"] and as_json["dataset"] == "notes"


def test_the_command_refuses_an_unknown_pool_and_bad_input(pipe, traced):
    ident, _good, _dead = traced
    r = pipe.cli("trace", UNKNOWN_POOL, ident, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"pushsync: unknown pool {UNKNOWN_POOL}"]
    r = pipe.cli("trace", POOL, "not-an-identity", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
