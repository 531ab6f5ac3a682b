"""The senders' error tables and helpers (pure logic)."""

from __future__ import annotations

import pytest

from worker.senders import apns, fcm
from worker.senders.base import Kind, collapse_id, parse_retry_after


def _fcm_body(code=None, status="X", message="m", token_field=False):
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}] if code else []
    if token_field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.token", "description": "bad"}]})
    return {"error": {"code": 0, "status": status, "message": message, "details": details}}


@pytest.mark.parametrize("status,code,token_field,kind", [
    (200, None, False, Kind.OK),
    (404, "UNREGISTERED", False, Kind.TOKEN_INVALID),
    (400, "INVALID_ARGUMENT", True, Kind.TOKEN_INVALID),
    (400, "INVALID_ARGUMENT", False, Kind.PERMANENT),
    (403, "SENDER_ID_MISMATCH", False, Kind.PERMANENT),
    (401, "THIRD_PARTY_AUTH_ERROR", False, Kind.PERMANENT),
    (503, "UNAVAILABLE", False, Kind.RETRY),
    (500, "INTERNAL", False, Kind.RETRY),
    (429, "QUOTA_EXCEEDED", False, Kind.RETRY),
    (502, None, False, Kind.RETRY),
    (418, None, False, Kind.PERMANENT),
])
def test_fcm_answers_map_to_outcomes_by_the_error_table(status, code, token_field, kind):
    assert fcm.classify("d", status, _fcm_body(code, token_field=token_field), None).kind is kind


def test_fcm_invalid_token_is_recognised_by_message_too():
    body = _fcm_body("INVALID_ARGUMENT", message="The registration token is not a valid FCM registration token")
    assert fcm.classify("d", 400, body, None).kind is Kind.TOKEN_INVALID


def test_fcm_retry_after_and_quota_minimum():
    assert fcm.classify("d", 503, _fcm_body("UNAVAILABLE"), "7").retry_after == 7
    assert fcm.classify("d", 429, _fcm_body("QUOTA_EXCEEDED"), "5").retry_after == fcm.QUOTA_MIN_BACKOFF
    assert fcm.classify("d", 404, _fcm_body("UNREGISTERED"), "5").retry_after is None


@pytest.mark.parametrize("status,reason,kind", [
    (200, "", Kind.OK),
    (400, "BadDeviceToken", Kind.TOKEN_INVALID),
    (400, "DeviceTokenNotForTopic", Kind.PERMANENT),  # the pool's topic is wrong, not the token
    (400, "TopicDisallowed", Kind.PERMANENT),
    (410, "Unregistered", Kind.TOKEN_INVALID),
    (400, "BadCollapseId", Kind.PERMANENT),
    (413, "PayloadTooLarge", Kind.PERMANENT),
    (403, "ExpiredProviderToken", Kind.RETRY),
    (429, "TooManyRequests", Kind.RETRY),
    (500, "InternalServerError", Kind.RETRY),
    (503, "ServiceUnavailable", Kind.RETRY),
    (403, "BadCertificate", Kind.PERMANENT),
])
def test_apns_answers_map_to_outcomes_by_the_error_table(status, reason, kind):
    assert apns.classify("d", status, reason).kind is kind


def test_apns_410_carries_the_moment_the_token_ended():
    out = apns.classify("d", 410, "Unregistered", 1_700_000_000_000)
    assert out.invalid_since is not None and out.invalid_since.timestamp() == 1_700_000_000


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == pytest.approx(10)


def test_collapse_id_is_at_most_64_bytes_and_stable():
    assert collapse_id("notes") == "notes"
    long = "d" * 128
    assert len(collapse_id(long).encode()) == 64 and collapse_id(long) == collapse_id(long)


def test_apns_protocol_takes_host_and_port_from_the_url():
    proto = apns.protocol_for("https://127.0.0.1:8443")
    assert (proto.APNS_SERVER, proto.APNS_PORT) == ("127.0.0.1", 8443)
    assert apns.protocol_for("https://api.push.apple.com").APNS_PORT == 443


def test_the_provider_token_is_a_verifiable_es256_jwt_renewed_once_per_refusal():
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    token = apns.ProviderToken(pem, "KEYID12345", "TEAMID1234")
    first = token.get_header()
    assert first == token.get_header()  # reused, not signed per request
    raw = first.split(" ", 1)[1]
    assert jwt.get_unverified_header(raw)["kid"] == "KEYID12345"
    assert jwt.decode(raw, key.public_key(), algorithms=["ES256"])["iss"] == "TEAMID1234"
    sent_before_renewal = time.time()
    token.renew(refused_at=sent_before_renewal)
    second = token.get_header()
    assert second != first
    # a second refusal of a request sent with the old token does not renew again
    token.renew(refused_at=sent_before_renewal - 1)
    assert token.get_header() == second


@pytest.mark.parametrize("dataset,data", [
    ("notes", {"source": "cognito-sync", "syncCount": "7"}),
    ("ünïcode ✓", {"identityId": "us-east-1:é", "datasetName": "ünïcode ✓", "syncCount": "9223372036854775807"}),
])
def test_the_fcm_message_is_the_one_pyfcm_makes(dataset, data):
    """The sender builds its message itself (pyfcm's encoder cost 15 % of the sending thread); pyfcm's
    ``parse_payload``, the library the message was first made with, stays the reference."""
    import json

    from pyfcm.baseapi import BaseAPI

    from worker.senders.base import PushRequest

    req = PushRequest(device_id="d", token="tok-1", data=data, dataset=dataset, identity_id="i")
    ours = fcm.FCMSender.message(None, req)
    pyfcm = BaseAPI.__new__(BaseAPI)  # parse_payload needs no credentials: only the encoder setting
    pyfcm.json_encoder = None
    ref = pyfcm.parse_payload(fcm_token=req.token, data_payload=req.data,
                              android_config={"collapse_key": dataset, "priority": "normal"})
    assert json.loads(ours) == json.loads(ref)
    assert "notification" not in json.loads(ours)["message"]
