import pytest

from pushsync import contract
from pushsync.contract import ValidationError

from ..conftest import IDENT, POOL

UUID = "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"


def _event(**over):
    e = {"identityPoolId": POOL, "identityId": IDENT, "datasetName": "myDataset", "syncCount": 42}
    e.update(over)
    return e


def test_valid_event_is_normalised():
    e = contract.event(_event(originDeviceId=UUID.upper(), eventId="e-1"))
    assert e.origin == UUID and e.event_id == "e-1" and e.sync_count == 42
    assert e.key == contract.Key(POOL, IDENT, "myDataset")
    assert e.to_json() == _event(originDeviceId=UUID, eventId="e-1")
    assert contract.event(e) is e  # a typed event is not checked again
    assert contract.Key.from_text(e.key.text()) == e.key


@pytest.mark.parametrize("text", [b"\xff a b", "a b", "a b c d", "us-east-1:ab us-east-1:cd bad/name", 5, None])
def test_a_key_read_back_from_redis_is_checked_like_any_input(text):
    with pytest.raises(ValueError):
        contract.Key.from_text(text)


@pytest.mark.parametrize("over,field", [
    ({"identityPoolId": "nocolon"}, "identityPoolId"),
    ({"identityPoolId": "us-east-1:" + "a" * 50}, "identityPoolId"),
    ({"identityId": "us-east-1:xyz"}, "identityId"),
    ({"datasetName": ""}, "datasetName"),
    ({"datasetName": "a" * 129}, "datasetName"),
    ({"datasetName": "bad/name"}, "datasetName"),
    ({"syncCount": -1}, "syncCount"),
    ({"syncCount": 2**63}, "syncCount"),
    ({"syncCount": 1.5}, "syncCount"),
    ({"syncCount": True}, "syncCount"),
    ({"originDeviceId": "not-a-uuid"}, "originDeviceId"),
    ({"eventId": ""}, "eventId"),
    ({"extra": 1}, "event"),
])
def test_invalid_event_names_the_field(over, field):
    with pytest.raises(ValidationError) as err:
        contract.event(_event(**over))
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_missing_key_is_named():
    e = _event()
    del e["syncCount"]
    with pytest.raises(ValidationError, match="^syncCount: is required"):
        contract.event(e)


def test_largest_sync_count_is_accepted():
    assert contract.sync_count(2**63 - 1) == 2**63 - 1


@pytest.mark.parametrize("given,normal", [("GCM", "GCM"), ("fcm", "GCM"), ("APNS", "APNS"),
                                          ("apns_sandbox", "APNS_SANDBOX")])
def test_fcm_is_an_alias_of_gcm_and_case_does_not_matter(given, normal):
    assert contract.platform(given) == normal


def test_adm_is_refused_as_not_supported():
    with pytest.raises(ValidationError, match="not supported"):
        contract.platform("ADM")


def test_apns_token_must_be_hex_and_is_lowercased():
    assert contract.device_token("ABCDEF01", "APNS") == "abcdef01"
    with pytest.raises(ValidationError, match="hexadecimal"):
        contract.device_token("xyz", "APNS_SANDBOX")
    assert contract.device_token("fcm:Token-xyz", "GCM") == "fcm:Token-xyz"
    for bad in ("", "a" * 4097, "tab\there", " lead"):
        with pytest.raises(ValidationError):
            contract.device_token(bad, "GCM")


def test_push_data_has_the_five_string_keys():
    data = contract.push_data(POOL, IDENT, "ds", 7)
    assert data == {"source": "cognito-sync", "identityPoolId": POOL, "identityId": IDENT,
                    "datasetName": "ds", "syncCount": "7"}


def test_ids_are_accepted_in_any_case_and_kept_lower_case():
    from pushsync import contract

    assert contract.pool_id("US-EAST-1:ABCDEF12-0000") == "us-east-1:abcdef12-0000"
    event = contract.event({"identityPoolId": "US-EAST-1:AB", "identityId": "Us-East-1:Cd", "datasetName": "D",
                            "syncCount": 1})
    assert (event.pool, event.identity, event.dataset) == ("us-east-1:ab", "us-east-1:cd", "D")


@pytest.mark.parametrize("event_id", ["a\x00b", "\x1b[31m", "line\nbreak", "", "x" * 129, 5])
def test_event_id_must_be_1_to_128_printable_characters(event_id):
    from pushsync import contract

    with pytest.raises(contract.ValidationError, match="eventId"):
        contract.event({"identityPoolId": "us-east-1:ab", "identityId": "us-east-1:cd", "datasetName": "d",
                        "syncCount": 1, "eventId": event_id})


def test_printable_escapes_control_characters_and_bounds_length():
    from pushsync.contract import printable

    assert printable("ok \x1b[2J\x00") == "ok \\x1b[2J\\x00"
    assert len(printable("y" * 1000, limit=50)) == 50
