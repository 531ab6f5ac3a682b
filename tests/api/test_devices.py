"""Registration and subscriptions over HTTP: Cognito Sync's paths, bodies and answers, and the
store state they leave."""

from __future__ import annotations

from sqlalchemy import select

from store.db import engine_for, session_scope
from store.models import Device, Subscription
from tests.conftest import IDENT, IDENT2, POOL
from tests.e2e.harness import new_identity

from .conftest import identity_token
from .harness import error_type, paths

NOCREDS = "ap-south-1:88888888-0000-4000-8000-000000000000"


def _subscriptions(pipe, device_id: str) -> list[str]:
    with session_scope(engine_for(pipe.db_url)) as s:
        return sorted(s.execute(select(Subscription.dataset_name).where(Subscription.device_id == device_id))
                      .scalars())


def _register(api, cred, identity=IDENT, platform="GCM", token="fcm-token-1"):
    return api.call("POST", paths(POOL, identity)["register"], {"Platform": platform, "Token": token}, cred)


def test_register_returns_a_device_id_and_the_same_token_gives_the_same_id(api, keys, pipe):
    first = _register(api, keys["device"], token="fcm-same")
    assert first.status_code == 200, first.text
    device_id = first.json()["DeviceId"]
    again = _register(api, keys["device"], token="fcm-same")
    assert again.json() == {"DeviceId": device_id}
    with session_scope(engine_for(pipe.db_url)) as s:
        dev = s.get(Device, device_id)
        assert (dev.pool_id, dev.identity_id, dev.platform, dev.token) == (POOL, IDENT, "GCM", "fcm-same")


def test_apns_tokens_are_stored_lower_case_and_fcm_alias_is_gcm(api, keys, pipe):
    ident = new_identity()
    apns = _register(api, keys["device"], ident, "APNS_SANDBOX", "ABCDEF0123").json()["DeviceId"]
    fcm = _register(api, keys["device"], ident, "FCM", "fcm-alias").json()["DeviceId"]
    with session_scope(engine_for(pipe.db_url)) as s:
        assert s.get(Device, apns).token == "abcdef0123"
        assert s.get(Device, fcm).platform == "GCM"


def test_subscribe_unsubscribe_and_subscribe_all_change_the_store(api, keys, pipe):
    ident = new_identity()
    dev = _register(api, keys["device"], ident, token=f"fcm-{ident[-6:]}").json()["DeviceId"]
    p = paths(POOL, ident, dev, "notes")
    assert api.call("POST", p["subscribe"], cred=keys["device"]).json() == {}
    assert _subscriptions(pipe, dev) == ["notes"]
    assert api.call("DELETE", p["subscribe"], cred=keys["device"]).json() == {}
    assert _subscriptions(pipe, dev) == []
    # unsubscribing what is not subscribed is not an error (as in Cognito)
    assert api.call("DELETE", p["subscribe"], cred=keys["device"]).status_code == 200
    named = api.call("POST", p["subscribe_all"], {"DatasetNames": ["b", "a"]}, keys["device"])
    assert named.status_code == 200 and _subscriptions(pipe, dev) == ["a", "b"]
    # without a body: every dataset the store knows for the identity (here a, b and notes)
    dev2 = _register(api, keys["device"], ident, token=f"fcm2-{ident[-6:]}").json()["DeviceId"]
    assert api.call("POST", paths(POOL, ident, dev2)["subscribe_all"], cred=keys["device"]).status_code == 200
    assert _subscriptions(pipe, dev2) == ["a", "b", "notes"]


def test_a_device_of_another_identity_is_not_found(api, keys):
    theirs = _register(api, keys["device"], IDENT2, token="fcm-ident2").json()["DeviceId"]
    r = api.call("POST", paths(POOL, IDENT, theirs)["subscribe"], cred=keys["device"])
    assert r.status_code == 404 and error_type(r) == "ResourceNotFoundException"
    unknown = api.call("POST", paths(POOL, IDENT, "00000000-0000-4000-8000-000000000000")["subscribe_all"],
                       cred=keys["device"])
    assert unknown.status_code == 404 and error_type(unknown) == "ResourceNotFoundException"


def test_bad_input_is_invalid_parameter_naming_the_field(api, keys):
    cases = [
        ({"Platform": "ADM", "Token": "x"}, "platform"),
        ({"Platform": "APNS", "Token": "not-hex"}, "token"),
        ({"Platform": "GCM"}, "Token"),
        ({"Platform": "GCM", "Token": "x" * 5000}, "token"),
        (["not", "an", "object"], "object"),
    ]
    for body, field in cases:
        r = api.call("POST", paths(POOL, IDENT)["register"], body, keys["device"])
        assert r.status_code == 400 and error_type(r) == "InvalidParameterException", (body, r.text)
        assert field in r.json()["message"], r.text
    bad_path = api.call("POST", paths(POOL, "not-an-identity")["register"], {"Platform": "GCM", "Token": "x"},
                        keys["device"])
    assert bad_path.status_code == 400 and "identityId" in bad_path.json()["message"]
    bad_json = api.call("POST", paths(POOL, IDENT)["register"], cred=keys["device"], raw=b'{"Platform": ')
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["message"]
    nan = api.call("POST", paths(POOL, IDENT)["register"], cred=keys["device"], raw=b'{"Platform": NaN}')
    assert nan.status_code == 400
    huge = api.call("POST", paths(POOL, IDENT)["register"], cred=keys["device"], raw=b"[" + b"1," * 600_000 + b"1]")
    assert huge.status_code == 400 and "larger than" in huge.json()["message"]
    bad_dataset = api.call("POST", paths(POOL, IDENT, "00000000-0000-4000-8000-000000000000", "bad dataset!")
                           ["subscribe"], cred=keys["device"])
    assert bad_dataset.status_code == 400 and "datasetName" in bad_dataset.json()["message"]


def test_a_pool_without_credentials_for_the_platform_is_invalid_configuration(api, pipe):
    pipe.cli("pool", "create", NOCREDS)
    key = pipe.cli("apikey", "create", NOCREDS, "--scope", "device").stdout.strip()
    r = api.call("POST", paths(NOCREDS, IDENT)["register"], {"Platform": "GCM", "Token": "t"}, key)
    assert r.status_code == 400 and error_type(r) == "InvalidConfigurationException"
    with session_scope(engine_for(pipe.db_url)) as s:
        assert s.execute(select(Device).where(Device.pool_id == NOCREDS)).first() is None


def test_limits_are_limit_exceeded_and_leave_nothing_half_written(api, keys, pipe):
    ident = new_identity()
    dev = _register(api, keys["device"], ident, token=f"fcm-lim-{ident[-6:]}").json()["DeviceId"]
    names = [f"ds{i}" for i in range(21)]  # one more than the 20 datasets an identity may have
    r = api.call("POST", paths(POOL, ident, dev)["subscribe_all"], {"DatasetNames": names}, keys["device"])
    assert r.status_code == 400 and error_type(r) == "LimitExceededException"
    assert _subscriptions(pipe, dev) == []
    twenty = api.call("POST", paths(POOL, ident, dev)["subscribe_all"], {"DatasetNames": names[:20]}, keys["device"])
    assert twenty.status_code == 200
    one_more = api.call("POST", paths(POOL, ident, dev, "extra")["subscribe"], cred=keys["device"])
    assert one_more.status_code == 400 and error_type(one_more) == "LimitExceededException"
    assert "extra" not in _subscriptions(pipe, dev)


def test_an_identity_token_registers_and_subscribes_its_own_identity(api, secrets, pipe):
    ident = new_identity()
    tok = identity_token(secrets, identity=ident)
    r = _register(api, tok, ident, token=f"fcm-app-{ident[-6:]}")
    assert r.status_code == 200, r.text
    dev = r.json()["DeviceId"]
    assert api.call("POST", paths(POOL, ident, dev, "todo")["subscribe"], cred=tok).status_code == 200
    assert _subscriptions(pipe, dev) == ["todo"]
