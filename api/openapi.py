"""The OpenAPI 3.1 document served at /openapi.json. Written by hand beside the handlers so that
it says exactly what they accept and answer: its schemas are never stricter than the checks
in ``pushsync.contract`` (a request the document allows may still be refused, with a 400 that
names the rule)."""

from __future__ import annotations

from api.errors import ALL
from pushsync.trail import FATES, OUTCOMES

ID = {"type": "string", "minLength": 1, "maxLength": 55, "pattern": "^[A-Za-z0-9_-]+:[0-9a-fA-F-]+$"}
DATASET = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[a-zA-Z0-9_.:-]+$"}
DEVICE = {"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
SYNC_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
PARAM_SCHEMAS = {"pool": ID, "identity": ID, "dataset": DATASET, "device": DEVICE}

EVENT = {
    "type": "object",
    "required": ["identityId", "datasetName", "syncCount"],
    "additionalProperties": False,
    "properties": {
        "identityPoolId": {**ID, "description": "the path's pool; may be left out"},
        "identityId": ID, "datasetName": DATASET, "syncCount": SYNC_COUNT,
        "originDeviceId": {**DEVICE, "description": "the device that made the change; it is not notified"},
        "eventId": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}
ERROR = {
    "type": "object", "required": ["__type", "message"],
    "properties": {"__type": {"type": "string", "enum": sorted({e.type for e in ALL})}, "message": {"type": "string"}},
}
EMPTY = {"type": "object", "maxProperties": 0}
CONFIG_OUT = {
    "type": "object", "required": ["IdentityPoolId", "PushSync", "Platforms"],
    "properties": {
        "IdentityPoolId": {"type": "string"},
        "Platforms": {"type": "array", "items": {"type": "string", "enum": ["GCM", "APNS"]}},
        "PushSync": {"type": "object", "properties": {
            "FCM": {"type": "object", "properties": {"ProjectId": {"type": ["string", "null"]},
                                                     "ClientEmail": {"type": ["string", "null"]},
                                                     "Stored": {"type": "string"}}},
            "APNS": {"type": "object", "properties": {"KeyId": {"type": ["string", "null"]},
                                                      "TeamId": {"type": ["string", "null"]},
                                                      "Topic": {"type": ["string", "null"]},
                                                      "Stored": {"type": "string"}}}}},
    },
}
CONFIG_IN = {
    "type": "object", "required": ["PushSync"],
    "properties": {"PushSync": {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
        "FCM": {"type": "object", "required": ["ServiceAccount"],
                "properties": {"ServiceAccount": {"type": "object", "description": "the service account JSON"}}},
        "APNS": {"type": "object", "required": ["Key", "KeyId", "TeamId", "Topic"], "properties": {
            "Key": {"type": "string", "description": "the .p8 key (PEM)"}, "KeyId": {"type": "string"},
            "TeamId": {"type": "string"}, "Topic": {"type": "string", "description": "the app's bundle id"}}},
    }}},
}

_S, _N = {"type": "string"}, {"type": ["string", "null"]}
TRAIL_DEVICE = {"type": "object", "required": ["time", "dataset", "count", "device", "token", "outcome", "text"],
                "properties": {"time": _S, "dataset": _S, "count": {"type": "integer"}, "device": _S, "token": _N,
                               "outcome": {"type": "string", "enum": list(OUTCOMES)}, "detail": _S, "text": _S}}
TRAIL_EVENT = {"type": "object", "required": ["time", "dataset", "count", "fate", "text", "flushed", "devices"],
               "properties": {"time": _S, "dataset": _S, "count": {"type": ["integer", "string"]},
                              "fate": {"type": "string", "enum": [*FATES, "flushed", "unknown"]}, "detail": _S,
                              "text": _S, "flushed": {"type": ["object", "null"]},
                              "devices": {"type": "array", "items": TRAIL_DEVICE}}}
TRAIL = {"type": "object", "required": ["pool", "identity", "dataset", "entries", "skipped", "expires_in", "events"],
         "properties": {"pool": _S, "identity": _S, "dataset": _N, "entries": {"type": "integer", "minimum": 0},
                        "skipped": {"type": "integer", "minimum": 0}, "omitted": {"type": "integer", "minimum": 0},
                        "expires_in": {"type": ["integer", "null"]},
                        "events": {"type": "array", "items": TRAIL_EVENT}}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(with_auth: bool = True) -> dict:
    retry = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}
    out = {str(status): _json({"$ref": "#/components/schemas/Error"}, text) for status, text in (
        (400, "InvalidParameterException, InvalidConfigurationException or LimitExceededException"),
        (404, "ResourceNotFoundException"), (405, "MethodNotAllowedException"), (500, "InternalErrorException"))}
    out["503"] = {**_json({"$ref": "#/components/schemas/Error"}, "ServiceUnavailableException"), "headers": retry}
    if with_auth:
        out["403"] = _json({"$ref": "#/components/schemas/Error"}, "NotAuthorizedException")
        out["429"] = {**_json({"$ref": "#/components/schemas/Error"}, "TooManyRequestsException"), "headers": retry}
    return out


def _op(op_id: str, summary: str, params: tuple[str, ...], ok: dict, body: dict | None = None,
        ok_status: str = "200") -> dict:
    out = {
        "operationId": op_id, "summary": summary, "security": [{"bearer": []}],
        "parameters": [{"name": n, "in": "path", "required": True, "schema": PARAM_SCHEMAS[n]} for n in params],
        "responses": {ok_status: ok, **_errors()},
    }
    if body is not None:
        out["requestBody"] = {"required": body.pop("required", True), "content": {"application/json": body}}
    return out


def _paths() -> dict:
    sub = "/identitypools/{pool}/identities/{identity}/datasets/{dataset}/subscriptions/{device}"
    register_in = {"schema": {"type": "object", "required": ["Platform", "Token"], "properties": {
        "Platform": {"type": "string", "enum": ["GCM", "FCM", "APNS", "APNS_SANDBOX"]},
        "Token": {"type": "string", "minLength": 1, "maxLength": 4096}}}}
    events_in = {"schema": {"oneOf": [EVENT, {"type": "array", "maxItems": 500, "items": {}}]}}
    accepted = {"type": "object", "required": ["accepted", "rejected"], "properties": {
        "accepted": {"type": "integer", "minimum": 0}, "rejected": {"type": "array", "items": {
            "type": "object", "required": ["index", "message"],
            "properties": {"index": {"type": "integer"}, "message": {"type": "string"}}}}}}
    subscribe_all_in = {"required": False, "schema": {"type": "object", "properties": {
        "DatasetNames": {"type": "array", "items": DATASET}}}}
    return {
        "/identitypools/{pool}/identity/{identity}/device": {"post": _op(
            "RegisterDevice", "register a device of the identity; the same token again gives the same id",
            ("pool", "identity"), _json({"type": "object", "required": ["DeviceId"],
                                         "properties": {"DeviceId": {"type": "string"}}}, "the device id"),
            register_in)},
        sub: {"post": _op("SubscribeToDataset", "subscribe the device to the dataset",
                          ("pool", "identity", "dataset", "device"), _json(EMPTY, "subscribed")),
              "delete": _op("UnsubscribeFromDataset", "unsubscribe the device from the dataset",
                            ("pool", "identity", "dataset", "device"), _json(EMPTY, "unsubscribed"))},
        "/identitypools/{pool}/identities/{identity}/subscriptions/{device}": {"post": _op(
            "SubscribeToAllDatasets", "subscribe the device to every dataset the store knows for the identity "
            "(or to DatasetNames)", ("pool", "identity", "device"), _json(EMPTY, "subscribed"), subscribe_all_in)},
        "/identitypools/{pool}/configuration": {
            "get": _op("GetIdentityPoolConfiguration", "the pool's push settings (admin scope)", ("pool",),
                       _json(CONFIG_OUT, "the settings, key material left out")),
            "post": _op("SetIdentityPoolConfiguration", "set the pool's push credentials (admin scope)", ("pool",),
                        _json(CONFIG_OUT, "the settings now"), {"schema": CONFIG_IN})},
        "/identitypools/{pool}/events": {"post": _op(
            "PublishEvents", "enqueue one change event or a list of up to 500 (producer scope)", ("pool",),
            _json(accepted, "how many were enqueued; the others by index with the reason"), events_in, "202")},
        "/identitypools/{pool}/identities/{identity}/trail": {"get": _op(
            "GetIdentityTrail", "what became of the identity's last events and their pushes, newest first "
            "(admin scope; `pushsync trace --json`)", ("pool", "identity"), _json(TRAIL, "the trail"))},
        "/identitypools/{pool}/identities/{identity}/datasets/{dataset}/trail": {"get": _op(
            "GetDatasetTrail", "the identity's trail, this dataset's events only (admin scope)",
            ("pool", "identity", "dataset"), _json(TRAIL, "the trail"))},
        "/healthz": {"get": {"operationId": "Health", "summary": "the process is up", "security": [],
                             "responses": {"200": _json({"type": "object"}, "up")}}},
        "/readyz": {"get": {"operationId": "Ready", "summary": "the store and Redis answer", "security": [],
                            "responses": {"200": _json({"type": "object"}, "ready"),
                                          "503": _errors(False)["503"]}}},
    }


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "pushsync", "version": "1",
                 "description": "Cognito Sync's push sync operations, self-hosted. Authenticate with "
                                "Authorization: Bearer <API key or identity token>."},
        "paths": _paths(),
        "components": {"schemas": {"Error": ERROR, "Event": EVENT, "Trail": TRAIL},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
