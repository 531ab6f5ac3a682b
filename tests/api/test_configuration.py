"""The pool's push settings over HTTP (admin scope): key material goes in, sealed, and never
comes out; bad credentials change nothing."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from store.db import engine_for, session_scope
from store.models import Pool
from tests.conftest import POOL2

from .harness import ApiServer, error_type, paths

ODD_PEM = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VvBCIEIKCj3y6vJjM6W6Q2kNn8m2d8M3Q3c1r3hZqzZ0QyYgV6\n"
           "-----END PRIVATE KEY-----\n")


def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def material():
    account = {"type": "service_account", "project_id": "api-project", "private_key_id": "k9",
               "private_key": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
               "client_email": "sa@api-project.iam.gserviceaccount.com", "token_uri": "https://oauth2.example/token"}
    return {"account": account, "p8": _pem(ec.generate_private_key(ec.SECP256R1()))}


def _row(pipe, pool=POOL2):
    with session_scope(engine_for(pipe.db_url)) as s:
        p = s.get(Pool, pool)
        return p.fcm_service_account, p.apns_key, p.apns_key_id, p.updated_at


def test_get_shows_the_settings_and_no_key_material(api, keys, pipe):
    r = api.call("GET", paths(POOL2, "x:0")["configuration"], cred=keys["other_pool"])
    assert r.status_code == 200
    body = r.json()
    assert body["IdentityPoolId"] == POOL2 and body["Platforms"] == ["APNS", "GCM"]
    assert body["PushSync"]["FCM"]["ProjectId"] and body["PushSync"]["APNS"]["KeyId"]
    assert body["PushSync"]["FCM"]["Stored"] == "encrypted"
    assert "PRIVATE KEY" not in r.text and "private_key" not in r.text


def test_post_sets_credentials_sealed_and_returns_no_key_material(api, keys, pipe, material):
    body = {"PushSync": {"FCM": {"ServiceAccount": material["account"]},
                         "APNS": {"Key": material["p8"], "KeyId": "ABCDE12345", "TeamId": "TEAM123456",
                                  "Topic": "com.example.app"}}}
    r = api.call("POST", paths(POOL2, "x:0")["configuration"], body, keys["other_pool"])
    assert r.status_code == 200, r.text
    assert r.json()["PushSync"]["FCM"]["ProjectId"] == "api-project"
    assert r.json()["PushSync"]["APNS"]["Topic"] == "com.example.app"
    assert "PRIVATE KEY" not in r.text
    fcm, apns, key_id, _ = _row(pipe)
    assert fcm.startswith("fernet:") and apns.startswith("fernet:") and key_id == "ABCDE12345"
    assert "PRIVATE KEY" not in fcm + apns and "api-project" not in fcm


def test_bad_credentials_are_refused_and_change_nothing(api, keys, pipe, material):
    before = _row(pipe)
    conf = paths(POOL2, "x:0")["configuration"]
    bad = [
        ({"PushSync": {"FCM": {"ServiceAccount": {**material["account"], "type": "user"}}}}, "FCM.ServiceAccount"),
        ({"PushSync": {"FCM": {"ServiceAccount": {**material["account"], "private_key": "junk"}}}},
         "FCM.ServiceAccount"),
        ({"PushSync": {"APNS": {"Key": material["p8"], "KeyId": "short", "TeamId": "TEAM123456",
                                "Topic": "com.example.app"}}}, "APNS.KeyId"),
        ({"PushSync": {"APNS": {"Key": material["account"]["private_key"], "KeyId": "ABCDE12345",
                                "TeamId": "TEAM123456", "Topic": "com.example.app"}}}, "APNS.Key"),
        # a PEM whose algorithm cryptography knows but whose key it cannot load: it raised its own
        # InternalError, not ValueError, and the API answered 500
        ({"PushSync": {"APNS": {"Key": ODD_PEM, "KeyId": "ABCDE12345", "TeamId": "TEAM123456",
                                "Topic": "com.example.app"}}}, "APNS.Key"),
        ({"PushSync": {"FCM": {"ServiceAccount": {**material["account"], "private_key": ODD_PEM}}}},
         "FCM.ServiceAccount"),
        ({"PushSync": {"GCM": {}}}, "PushSync"),
        ({"Other": 1}, "PushSync"),
    ]
    for body, field in bad:
        r = api.call("POST", conf, body, keys["other_pool"])
        assert r.status_code == 400 and error_type(r) == "InvalidParameterException", r.text
        assert field in r.json()["message"], r.text
        assert "BEGIN" not in r.text  # the refused key is not echoed
    assert _row(pipe) == before


def test_without_a_secret_key_the_server_refuses_to_store_credentials_in_clear(pipe, keys, material, tmp_path):
    env = {k: v for k, v in pipe.env.items() if k != "PUSHSYNC_SECRET_KEY"}
    server = ApiServer(tmp_path, env)
    try:
        before = _row(pipe)
        body = {"PushSync": {"FCM": {"ServiceAccount": material["account"]}}}
        r = server.call("POST", paths(POOL2, "x:0")["configuration"], body, keys["other_pool"])
        assert r.status_code == 500 and error_type(r) == "InternalErrorException"
        assert "PUSHSYNC_SECRET_KEY" in r.json()["message"]
        assert _row(pipe) == before
    finally:
        server.stop()
    assert json.dumps(material["account"]["private_key"])[:40] not in server.log_path.read_text()
