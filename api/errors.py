"""Errors as Cognito Sync answers them: ``{"__type": "<exception name>", "message": "..."}`` with
its status codes. Every failure the API answers is one of these; nothing else leaves a handler."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class Answer(JSONResponse):
    """Every JSON answer of the API, ending in a newline as a terminal (and `curl`) expects."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


class ApiError(Exception):
    status = 500
    type = "InternalErrorException"

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return Answer({"__type": self.type, "message": self.message}, status_code=self.status,
                            headers=headers)


class InvalidParameter(ApiError):
    status, type = 400, "InvalidParameterException"


class InvalidConfiguration(ApiError):
    status, type = 400, "InvalidConfigurationException"


class LimitExceeded(ApiError):
    status, type = 400, "LimitExceededException"


class NotAuthorized(ApiError):
    status, type = 403, "NotAuthorizedException"


class NotFound(ApiError):
    status, type = 404, "ResourceNotFoundException"


class MethodNotAllowed(ApiError):
    status, type = 405, "MethodNotAllowedException"


class TooManyRequests(ApiError):
    status, type = 429, "TooManyRequestsException"


class InternalError(ApiError):
    status, type = 500, "InternalErrorException"


class Unavailable(ApiError):
    """Redis or the store out of reach past the wait the API allows itself: try again later."""

    status, type = 503, "ServiceUnavailableException"


# every error answer of the API, for the OpenAPI document
ALL = (InvalidParameter, InvalidConfiguration, LimitExceeded, NotAuthorized, NotFound, MethodNotAllowed,
       TooManyRequests, InternalError, Unavailable)
